/* Napalm Sky test client: a small, dependency-free (apart from socket.io-client) browser client for
 * people and for tests. It speaks the protocol in PROTOCOL.md §2-§4 plus the additive extensions
 * (§7 E1 deadline, E3 resume, E4 buffered signalling, E11 call:connected).
 *
 * WebRTC: iceServers from GET /turn/credentials are passed unchanged to RTCPeerConnection. Each side
 * sends its description once ICE gathering is complete (or after GATHER_MS), so the SDP carries the
 * candidates (aiortc bots prefer that); candidates found later are trickled with rtc:ice, and trickled
 * candidates from the partner are applied too.
 *
 * URL options: ?relay=1 forces iceTransportPolicy "relay" (TURN only, like the original on iOS).
 * ?trickle=1 sends each description at once and trickles every candidate (rtc:ice) instead.
 * ?pool=N sets iceCandidatePoolSize (default 0). The original client uses 10, which pre-allocates up
 * to 10 x (TURN URLs) relay allocations per call and can hit coturn's per-user quota (486).
 *
 * For tests: window.__napalm (state and timeline) and window.__stats() (getStats summary).
 */
(() => {
  "use strict";

  const SESSION_KEY = "napalmsky_session";
  const GATHER_MS = 3000;
  const QUEUE_POLL_MS = 5000;
  const CAPABILITIES = ["deadline", "resume", "typed-errors", "busy"];
  const PAYMENT_HINT = "This server requires payment before you can go online: reload the page to pay or enter an invite code. " +
    "An operator can also grant access (python -m server user grant-access <userId>), or run the server with REQUIRE_PAYMENT=false.";
  const params = new URLSearchParams(location.search);
  const RELAY_ONLY = params.get("relay") === "1";
  const TRICKLE = params.get("trickle") === "1";
  const POOL_SIZE = Math.min(10, Math.max(0, Number(params.get("pool")) || 0));

  const $ = (id) => document.getElementById(id);
  const state = {
    view: null,
    session: null,      // {sessionToken, userId, accountType}
    me: null,           // GET /user/me
    socket: null,
    authed: false,
    clockOffset: 0,     // server clock minus ours (ms)
    outgoing: null,     // {toUserId, name, inviteId, expiresAt}
    incoming: null,     // {inviteId, fromUser, requestedSeconds, deadline}
    call: null,         // see newCall()
    lastEnded: null,
    queuePoll: null,
  };
  window.__napalm = state;
  // Hooks for the screen modules (intro.js, account.js): they add to this page without reaching into it.
  window.__napalmStub = { api: (...a) => api(...a), toast: (...a) => toast(...a), invite: (u) => invite(u), signOut: (m) => clearSession(m),
                          show: (v) => show(v), signedIn: (me) => signedIn(me) };
  const hook = (name, detail) => window.dispatchEvent(new CustomEvent(`napalm:${name}`, { detail }));

  // ---------------------------------------------------------------- helpers
  function show(view) {
    for (const v of ["signup", "paywall", "lobby", "call", "ended"]) $(`view-${v}`).hidden = v !== view;
    state.view = view;
    const heading = $(`view-${view}`).querySelector("h2");
    if (heading) { heading.tabIndex = -1; heading.focus({ preventScroll: true }); }
  }

  // A short trace of the call's steps in the console (people debugging, and the tests' browser logs).
  function trace(...args) { console.info("[napalm]", ...args); }

  function toast(text, ms = 5000) {
    const p = document.createElement("p");
    p.textContent = text;
    $("toasts").append(p);
    setTimeout(() => p.remove(), ms);
  }

  function serverNow() { return Date.now() + state.clockOffset; }
  function syncClock(serverNowMs) { if (typeof serverNowMs === "number") state.clockOffset = serverNowMs - Date.now(); }

  function fmt(seconds) {
    const s = Math.max(0, Math.ceil(seconds));
    return `${String(Math.floor(s / 60)).padStart(2, "0")}:${String(s % 60).padStart(2, "0")}`;
  }

  function clampSeconds(input) {
    const n = Math.round(Number(input.value));
    return Number.isFinite(n) ? Math.min(1800, Math.max(60, n)) : 300;
  }

  async function api(path, { method = "GET", body, form } = {}) {
    const headers = {};
    if (state.session) headers.Authorization = `Bearer ${state.session.sessionToken}`;
    let payload;
    if (form) payload = form;
    else if (body !== undefined) { headers["Content-Type"] = "application/json"; payload = JSON.stringify(body); }
    const res = await fetch(path, { method, headers, body: payload });
    let data = null;
    try { data = await res.json(); } catch { /* empty or non-JSON body */ }
    return { ok: res.ok, status: res.status, data: data || {} };
  }

  const REASONS = {
    user_declined: "declined your invite", cooldown: "can't be called again yet (cooldown)",
    timeout: "didn't answer in time", offline: "is offline", busy: "is in another call",
    invalid_duration: "— invalid call length", user_not_found: "was not found", invalid_target: "can't be called",
  };

  // ---------------------------------------------------------------- session
  // Per tab (sessionStorage, which survives a reload), unlike the original's localStorage: two windows of
  // one browser are two users, so one person can try a call between them.
  const store = window.sessionStorage;
  function saveSession(s) { state.session = s; store.setItem(SESSION_KEY, JSON.stringify(s)); }

  function clearSession(message) {
    store.removeItem(SESSION_KEY);
    state.session = null; state.me = null; state.authed = false;
    if (state.socket) { state.socket.disconnect(); state.socket = null; }
    teardownCall();
    stopQueuePoll();
    $("whoami").hidden = true; $("logout").hidden = true;
    hook("signedout");
    show("signup");
    if (message) $("signup-error").textContent = message;
  }

  async function boot() {
    if (typeof io !== "function") {
      show("signup");
      $("signup-error").textContent =
        "socket.io-client is missing: run `npm ci` in frontend-stub (deploy/bootstrap.sh does).";
      $("signup-submit").disabled = true;
      return;
    }
    try { state.session = JSON.parse(store.getItem(SESSION_KEY) || "null"); } catch { state.session = null; }
    if (!state.session || !state.session.sessionToken) return show("signup");
    const me = await api("/user/me");
    if (!me.ok) return clearSession(me.status === 401 ? "" : `Could not load your account: ${me.data.error || me.status}`);
    signedIn(me.data);
  }

  $("signup-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    $("signup-error").textContent = "";
    $("signup-submit").disabled = true;
    try {
      const name = $("signup-name").value.trim();
      const gender = $("signup-gender").value;
      const extras = window.__napalmPaywall ? window.__napalmPaywall.signupExtras() : {};  // paywall.js: inviteCode
      const res = await api("/auth/guest", { method: "POST", body: { name, gender, referralCode: params.get("ref") || undefined, ...extras } });
      if (!res.ok) { $("signup-error").textContent = res.data.error || `Sign-up failed (${res.status})`; return; }
      saveSession({ sessionToken: res.data.sessionToken, userId: res.data.userId, accountType: res.data.accountType });
      const me = await api("/user/me");
      signedIn(me.ok ? me.data : { userId: res.data.userId, name, gender });
    } finally { $("signup-submit").disabled = false; }
  });

  $("logout").addEventListener("click", async () => {
    await api("/auth/logout", { method: "POST" }).catch(() => {});
    clearSession();
  });

  function signedIn(me) {
    state.me = me;
    $("whoami").textContent = `Signed in as ${me.name || "guest"}`;
    $("whoami").hidden = false; $("logout").hidden = false;
    $("profile-setup").hidden = Boolean(me.selfieUrl && me.videoUrl);
    if (window.__napalmPaywall && window.__napalmPaywall.gate(me)) return;  // paywall.js: no access yet
    connectSocket();
    enterLobby();
    hook("signedin", me);
  }

  // ---------------------------------------------------------------- socket
  function connectSocket() {
    if (state.socket) return;
    const socket = io({
      transports: ["websocket", "polling"], reconnection: true, reconnectionAttempts: 5,
      reconnectionDelay: 1000, timeout: 20000,
      auth: { token: state.session.sessionToken, capabilities: CAPABILITIES },
    });
    state.socket = socket;
    hook("socket", socket);
    socket.on("connect_error", (err) => {
      if (/suspended|banned/i.test(err && err.message)) clearSession("Your account is suspended.");
    });
    socket.on("disconnect", () => { state.authed = false; });
    socket.on("auth:success", (d) => {
      state.authed = true;
      if (d) syncClock(d.serverNow);
      if (state.view === "lobby") goAvailable();
    });
    socket.on("auth:failed", () => clearSession("Your session expired; please join again."));
    socket.on("auth:banned", (d) => clearSession((d && d.message) || "Your account is suspended."));
    socket.on("session:invalidated", (d) => clearSession((d && d.message) || "You signed in somewhere else."));
    socket.on("error", (d) => console.warn("server error:", d && d.message));
    socket.on("call:error", (d) => {
      console.warn("call:error", d);
      if (d && d.code === "BUSY" && state.call) return;  // our queue:join raced a call:resume after a reload
      if (d && d.code === "PAYMENT_REQUIRED") { state.paymentBlocked = true; $("queue-status").textContent = PAYMENT_HINT; }
      else if (d && d.message) toast(d.message);
    });

    // lobby
    const refetchSoon = debounce(loadQueue, 300);
    socket.on("queue:update", (d) => onPresence(d, refetchSoon));
    socket.on("presence:update", (d) => onPresence(d, refetchSoon));
    socket.on("queue:snapshot", (d) => renderQueue(d));

    // invites
    socket.on("call:invite-sent", (d) => {
      if (state.outgoing && d.toUserId === state.outgoing.toUserId) {
        state.outgoing.inviteId = d.inviteId; state.outgoing.expiresAt = d.expiresAt;
        renderOutgoing();
      }
    });
    socket.on("call:declined", (d) => {
      const out = state.outgoing;
      // Our server always names toUserId (E8); an older one only the inviteId.
      if (!out || (d.toUserId ? d.toUserId !== out.toUserId : out.inviteId && d.inviteId !== out.inviteId)) return;
      toast(`${out.name} ${REASONS[d.reason] || "declined"}`);
      state.outgoing = null; renderOutgoing(); loadQueue();
    });
    socket.on("call:notify", onNotify);
    socket.on("call:rescinded", (d) => {
      if (state.incoming && d.inviteId === state.incoming.inviteId) {
        toast(`${state.incoming.fromUser.name} ${d.reason === "expired" ? "'s invite expired" : "cancelled the invite"}`);
        closeIncoming();
      }
    });
    socket.on("call:wait-extended", (d) => {
      if (state.incoming) state.incoming.deadline += 1000 * ((d && d.extraSeconds) || 0);
    });

    // call
    socket.on("call:start", (d) => { syncClock(d.serverNow); startCall(d, "start"); });
    socket.on("call:resume", onResume);
    socket.on("call:deadline", (d) => {
      if (state.call && d.roomId === state.call.roomId) { syncClock(d.serverNow); state.call.endsAt = d.endsAt; tick(); }
    });
    socket.on("room:joined", (d) => { if (state.call && d.roomId === state.call.roomId) state.call.timeline.joined = Date.now(); });
    socket.on("rtc:offer", (d) => onOffer(d).catch((e) => fail("offer", e)));
    socket.on("rtc:answer", (d) => onAnswer(d).catch((e) => fail("answer", e)));
    socket.on("rtc:ice", (d) => onIce(d));
    socket.on("room:chat", (d) => addChat(d));
    socket.on("room:socialShared", (d) => addChat({ from: d.from, text: `shared socials: ${Object.entries(d.socials || {}).map(([k, v]) => `${k} ${v}`).join(", ")}` }));
    socket.on("room:partner-disconnected", (d) => callStatus(`Your partner's connection dropped; waiting up to ${(d && d.gracePeriodSeconds) || 15} s…`));
    socket.on("room:partner-reconnected", onPartnerBack);
    socket.on("peer:disconnected", () => { if (state.call) { callStatus("Your partner left the call."); toast("Your partner left the call."); } });
    socket.on("session:finalized", onFinalized);
  }

  function debounce(fn, ms) {
    let t = null;
    return () => { clearTimeout(t); t = setTimeout(fn, ms); };
  }

  // ---------------------------------------------------------------- lobby
  function enterLobby() {
    show("lobby");
    goAvailable();
    loadQueue();
    stopQueuePoll();
    state.queuePoll = setInterval(loadQueue, QUEUE_POLL_MS);
  }

  function goAvailable() {
    if (!state.socket || !state.authed) return;  // auth:success calls this again
    state.socket.emit("presence:join");
    state.socket.emit("queue:join");
  }

  function stopQueuePoll() { clearInterval(state.queuePoll); state.queuePoll = null; }

  function onPresence(d, refetchSoon) {
    if (state.view !== "lobby" || !d) return;
    if (d.online === false || d.available === false) {
      const li = document.querySelector(`#queue li[data-user-id="${CSS.escape(d.userId)}"]`);
      if (li) li.remove();
    } else refetchSoon();
  }

  let queueLoading = false, queueAgain = false;
  async function loadQueue() {
    if (state.view !== "lobby" || !state.session) return;
    if (queueLoading) { queueAgain = true; return; }  // the answer in flight may predate the change: ask again after it
    queueLoading = true;
    try {
      const res = await api("/room/queue");
      if (res.status === 402) {
        state.paymentBlocked = true;
        renderQueue({ users: [] });
        $("queue-status").textContent = `${PAYMENT_HINT} Your user id: ${state.session.userId}`;
        return;
      }
      if (res.status === 401) return clearSession("Your session expired; please join again.");
      if (!res.ok) { $("queue-status").textContent = "Failed to load users."; return; }
      if (state.paymentBlocked) { state.paymentBlocked = false; goAvailable(); }  // access was granted meanwhile
      renderQueue(res.data);
    } catch { $("queue-status").textContent = "Failed to load users (network)."; } finally {
      queueLoading = false;
      if (queueAgain) { queueAgain = false; loadQueue(); }
    }
  }

  function renderQueue(data) {
    const users = (data && data.users) || [];
    const list = $("queue");
    list.replaceChildren();
    for (const u of users) {
      const li = document.createElement("li");
      li.dataset.userId = u.userId;
      if (u.selfieUrl) {
        const img = document.createElement("img");
        img.src = u.selfieUrl; img.alt = `Selfie of ${u.name}`; img.loading = "lazy";
        li.append(img);
      }
      const name = document.createElement("strong");
      name.textContent = u.name;
      const meta = document.createElement("span");
      meta.className = "badge";
      meta.textContent = [u.gender, u.hasCooldown ? "on cooldown" : "", u.wasIntroducedToMe ? `introduced by ${u.introducedBy}` : ""].filter(Boolean).join(" · ");
      const btn = document.createElement("button");
      btn.type = "button";
      btn.textContent = `Invite ${u.name}`;
      btn.dataset.invite = u.userId;
      btn.disabled = Boolean(u.hasCooldown || state.outgoing);
      btn.addEventListener("click", () => invite(u));
      li.append(name, meta, btn);
      list.append(li);
      hook("card", { li, user: u });
    }
    const total = (data && data.totalAvailable) || users.length;
    $("queue-status").textContent = users.length ? `${users.length} available (of ${total})` : "Nobody else is available right now.";
  }

  $("refresh").addEventListener("click", () => { goAvailable(); loadQueue(); });

  function invite(u) {
    if (!state.socket || state.outgoing) return;
    const seconds = clampSeconds($("duration"));
    state.outgoing = { toUserId: u.userId, name: u.name, inviteId: null, expiresAt: serverNow() + 20000, seconds };
    state.socket.emit("call:invite", { toUserId: u.userId, requestedSeconds: seconds });
    renderOutgoing();
  }

  function renderOutgoing() {
    const out = state.outgoing;
    $("outgoing").hidden = !out;
    for (const b of document.querySelectorAll("#queue button[data-invite]")) b.disabled = Boolean(out);
    if (out) {
      const left = Math.max(0, (out.expiresAt - serverNow()) / 1000);
      $("outgoing-text").textContent = `Waiting for ${out.name} to answer (${Math.ceil(left)} s)…`;
    }
  }

  $("outgoing-cancel").addEventListener("click", () => {
    if (!state.outgoing) return;
    state.socket.emit("call:rescind", { toUserId: state.outgoing.toUserId });
    state.outgoing = null; renderOutgoing();
  });

  // ---------------------------------------------------------------- profile media (so others can list you)
  $("profile-record").addEventListener("click", async () => {
    const status = $("profile-status");
    $("profile-record").disabled = true;
    let stream;
    try {
      status.textContent = "Opening your camera…";
      stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: true });
      const v = document.createElement("video");
      v.muted = true; v.srcObject = stream; await v.play();
      const canvas = document.createElement("canvas");
      canvas.width = v.videoWidth || 640; canvas.height = v.videoHeight || 480;
      canvas.getContext("2d").drawImage(v, 0, 0, canvas.width, canvas.height);
      const jpeg = await new Promise((r) => canvas.toBlob(r, "image/jpeg", 0.9));
      const selfie = new FormData(); selfie.append("selfie", jpeg, "selfie.jpg");
      status.textContent = "Uploading selfie…";
      let res = await api("/media/selfie", { method: "POST", form: selfie });
      if (!res.ok) throw new Error(res.data.error || `selfie upload failed (${res.status})`);
      status.textContent = "Recording a 3-second intro…";
      const chunks = [];
      const rec = new MediaRecorder(stream, { mimeType: MediaRecorder.isTypeSupported("video/webm") ? "video/webm" : "" });
      rec.ondataavailable = (e) => { if (e.data.size) chunks.push(e.data); };
      const stopped = new Promise((r) => { rec.onstop = r; });
      rec.start(); await new Promise((r) => setTimeout(r, 3000)); rec.stop(); await stopped;
      const blob = new Blob(chunks, { type: rec.mimeType || "video/webm" });
      const video = new FormData(); video.append("video", blob, "intro.webm");
      status.textContent = "Uploading intro…";
      res = await api("/media/video", { method: "POST", form: video });
      if (!res.ok) throw new Error(res.data.error || `video upload failed (${res.status})`);
      status.textContent = "Done: others can now see you.";
      $("profile-record").hidden = true;
      goAvailable();
    } catch (e) {
      status.textContent = `Could not set up your profile: ${e.message || e}`;
    } finally {
      if (stream) stream.getTracks().forEach((t) => t.stop());
      $("profile-record").disabled = false;
    }
  });

  // ---------------------------------------------------------------- incoming invite
  function onNotify(d) {
    if (state.call) return;  // busy: the server would not normally notify us
    const ttl = typeof d.ttlMs === "number" ? d.ttlMs : 20000;
    const deadline = typeof d.expiresAt === "number" ? d.expiresAt - state.clockOffset : Date.now() + ttl;
    state.incoming = { inviteId: d.inviteId, fromUser: d.fromUser || { name: "Someone" }, requestedSeconds: d.requestedSeconds, deadline };
    const f = state.incoming.fromUser;
    $("incoming-text").textContent = `${f.name}${f.gender ? ` (${f.gender})` : ""} wants to talk for ${d.requestedSeconds} seconds.`;
    $("incoming-duration").value = d.requestedSeconds || 300;
    const dlg = $("incoming");
    if (!dlg.open) dlg.showModal();
    $("incoming-accept").focus();
    tick();
  }

  function closeIncoming() {
    state.incoming = null;
    if ($("incoming").open) $("incoming").close();
  }

  $("incoming-accept").addEventListener("click", () => {
    const inc = state.incoming;
    if (!inc) return;
    state.acceptClickedAt = Date.now();
    state.socket.emit("call:accept", { inviteId: inc.inviteId, requestedSeconds: clampSeconds($("incoming-duration")) });
    closeIncoming();
  });
  $("incoming-decline").addEventListener("click", () => {
    if (!state.incoming) return;
    state.socket.emit("call:decline", { inviteId: state.incoming.inviteId, reason: "user" });
    closeIncoming();
  });
  $("incoming").addEventListener("cancel", (ev) => ev.preventDefault());  // Esc must not drop the invite silently

  // ---------------------------------------------------------------- call
  function newCall(d, how) {
    return {
      roomId: d.roomId, sessionId: d.sessionId, isInitiator: Boolean(d.isInitiator),
      peer: d.peerUser || { name: "your partner" }, agreedSeconds: d.agreedSeconds, endsAt: d.endsAt,
      pc: null, localStream: null, remoteStream: null, iceServers: [], iceProvider: null,
      pendingIce: [], descriptionSent: false, remoteTrack: false, connectedReported: false, generation: 0, trickledOut: 0, trickledIn: 0,
      failures: 0, endSent: false, ready: null, how,
      timeline: { callStart: Date.now(), acceptClicked: state.acceptClickedAt || null },
    };
  }

  async function startCall(d, how) {
    if (state.call && state.call.roomId === d.roomId) return;
    teardownCall();
    closeIncoming();
    state.outgoing = null; renderOutgoing();
    stopQueuePoll();
    if (state.socket) state.socket.emit("queue:leave");
    const call = newCall(d, how);
    state.call = call;
    trace(`${how} room ${d.roomId} as ${call.isInitiator ? "initiator" : "responder"}, agreed ${d.agreedSeconds} s`);
    $("call-title").textContent = `Call with ${call.peer.name}`;
    $("remote-label").textContent = call.peer.name;
    $("chat-log").replaceChildren();
    show("call");
    callStatus("Starting your camera…");
    tick();
    let resolveReady;
    call.ready = new Promise((r) => { resolveReady = r; });
    try {
      try {
        call.localStream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: true });
        $("local-video").srcObject = call.localStream;
      } catch (e) {
        toast(`No camera or microphone (${e.name || e}); you will only receive.`);
      }
      if (state.call !== call) return;
      callStatus("Getting relay credentials…");
      const creds = await api("/turn/credentials");
      if (creds.ok && Array.isArray(creds.data.iceServers)) {
        call.iceServers = creds.data.iceServers; call.iceProvider = creds.data.provider;
        trace(`TURN credentials from ${creds.data.provider}: ${call.iceServers.map((s) => [].concat(s.urls).join(" ")).join(" | ")}`);
      } else {
        toast(`No TURN credentials (${creds.status}); trying without a relay.`);
      }
      if (state.call !== call) return;
      buildPeer(call);
      resolveReady();
      state.socket.emit("room:join", { roomId: call.roomId });
      // After a reload (call:resume without a call on this page) our side offers whatever its role:
      // the partner still holds the old connection and cannot know it is gone.
      const offering = call.isInitiator || how === "resume";
      callStatus(offering ? "Calling…" : "Waiting for your partner's offer…");
      if (offering) await sendOffer(call);
    } catch (e) {
      resolveReady();
      fail("setup", e);
    }
  }

  function buildPeer(call) {
    if (call.pc) { call.pc.onconnectionstatechange = null; call.pc.close(); }
    const pc = new RTCPeerConnection({
      iceServers: call.iceServers, iceCandidatePoolSize: POOL_SIZE, bundlePolicy: "max-bundle",
      rtcpMuxPolicy: "require", iceTransportPolicy: RELAY_ONLY ? "relay" : "all",
    });
    call.pc = pc;
    call.generation += 1;  // how many peer connections this call has had (restarts after reloads)
    if (call.generation > 1) { call.timeline.rebuilt = Date.now(); trace(`new peer connection #${call.generation}`); }
    call.pendingIce = []; call.descriptionSent = false; call.remoteTrack = false; call.remoteStream = null;
    if (call.localStream) for (const t of call.localStream.getTracks()) pc.addTrack(t, call.localStream);
    else { pc.addTransceiver("audio", { direction: "recvonly" }); pc.addTransceiver("video", { direction: "recvonly" }); }

    pc.onicecandidate = (e) => {
      // Candidates found before the description went out are inside its SDP; later ones are trickled.
      if (e.candidate && e.candidate.candidate && call.descriptionSent && state.call === call && call.pc === pc) {
        state.socket.emit("rtc:ice", { roomId: call.roomId, candidate: e.candidate.toJSON() });
        call.trickledOut += 1;
      }
    };
    pc.onicecandidateerror = (e) => trace(`ICE candidate error ${e.errorCode} ${e.errorText} (${e.url})`);
    pc.ontrack = (e) => {
      if (call.pc !== pc) return;
      if (!call.remoteStream) { call.remoteStream = new MediaStream(); $("remote-video").srcObject = call.remoteStream; }
      call.remoteStream.addTrack(e.track);
      call.remoteTrack = true;
      if (e.track.kind === "video") watchFirstFrame(call);
      playRemote();
      checkConnected(call);
    };
    pc.onconnectionstatechange = () => {
      if (call.pc !== pc || state.call !== call) return;
      const s = pc.connectionState;
      trace(`connection ${s} (ICE ${pc.iceConnectionState})`);
      if (s === "connected") { call.failures = 0; checkConnected(call); callStatus("Connected."); }
      else if (s === "disconnected") callStatus("Connection interrupted; reconnecting…");
      else if (s === "failed") onIceFailed(call);
    };
  }

  function waitGathering(pc, ms) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => { pc.removeEventListener("icegatheringstatechange", check); clearTimeout(t); resolve(); };
      const check = () => { if (pc.iceGatheringState === "complete") done(); };
      const t = setTimeout(done, ms);
      pc.addEventListener("icegatheringstatechange", check);
    });
  }

  function sendDescription(call, pc) {
    if (state.call !== call || call.pc !== pc) return;
    const d = pc.localDescription;
    call.descriptionSent = true;  // set together with the read of localDescription (single-threaded)
    const cands = (d.sdp.match(/^a=candidate:.*$/gm) || []);
    trace(`sending ${d.type} with ${cands.length} candidate(s) (gathering ${pc.iceGatheringState}): ${cands.map((c) => c.split(" ").slice(4, 8).join(" ")).join(", ")}`);
    if (!cands.length && !TRICKLE) callStatus("No ICE candidates: the relay (TURN) may have refused our credentials. Still trying…");
    state.socket.emit(`rtc:${d.type}`, { roomId: call.roomId, [d.type]: { type: d.type, sdp: d.sdp } });
    call.timeline[d.type === "offer" ? "offerSent" : "answerSent"] = Date.now();
  }

  async function sendOffer(call, opts) {
    const pc = call.pc;
    call.descriptionSent = false;
    await pc.setLocalDescription(await pc.createOffer(opts));
    if (!TRICKLE) await waitGathering(pc, GATHER_MS);
    sendDescription(call, pc);
  }

  function fingerprint(sdp) { const m = /a=fingerprint:\S+ (\S+)/.exec(sdp || ""); return m ? m[1] : null; }

  async function onOffer(d) {
    const call = state.call;
    if (!call || !d || !d.offer) return;
    await call.ready;
    if (state.call !== call) return;
    let pc = call.pc;
    // A partner who reloaded the page offers from a brand-new connection (new DTLS certificate):
    // start over with a fresh one instead of renegotiating the old.
    if (pc.remoteDescription && fingerprint(pc.remoteDescription.sdp) !== fingerprint(d.offer.sdp)) {
      buildPeer(call); pc = call.pc;
    }
    if (pc.signalingState === "have-local-offer") {
      // Both sides offered at once (e.g. a resume): the initiator keeps its own offer, the responder yields.
      if (call.isInitiator) { trace("ignoring a colliding offer (we are the initiator)"); return; }
      await pc.setLocalDescription({ type: "rollback" });
    }
    await pc.setRemoteDescription(d.offer);
    call.timeline.offerReceived = Date.now();
    trace("offer received");
    await flushIce(call);
    call.descriptionSent = false;
    await pc.setLocalDescription(await pc.createAnswer());
    if (!TRICKLE) await waitGathering(pc, GATHER_MS);
    sendDescription(call, pc);
    callStatus("Connecting…");
  }

  async function onAnswer(d) {
    const call = state.call;
    if (!call || !call.pc || !d || !d.answer || call.pc.signalingState !== "have-local-offer") return;
    await call.pc.setRemoteDescription(d.answer);
    call.timeline.answerReceived = Date.now();
    trace("answer applied");
    await flushIce(call);
    callStatus("Connecting…");
  }

  function onIce(d) {
    const call = state.call;
    if (!call || !d || !d.candidate || !d.candidate.candidate) return;
    call.trickledIn += 1;
    if (call.pc && call.pc.remoteDescription) call.pc.addIceCandidate(d.candidate).catch((e) => console.warn("addIceCandidate", e));
    else call.pendingIce.push(d.candidate);
  }

  async function flushIce(call) {
    const queued = call.pendingIce.splice(0);
    for (const c of queued) await call.pc.addIceCandidate(c).catch((e) => console.warn("addIceCandidate", e));
  }

  function checkConnected(call) {
    if (!call.pc || call.pc.connectionState !== "connected" || !call.remoteTrack || call.connectedGen === call.generation) return;
    call.connectedGen = call.generation;  // once per peer connection
    call.timeline.connected = Date.now();
    trace(`media connected ${call.timeline.connected - call.timeline.callStart} ms after call start (connection #${call.generation})`);
    if (!call.connectedReported) {
      call.connectedReported = true;
      state.socket.emit("call:connected", { roomId: call.roomId });
    }
  }

  function watchFirstFrame(call) {
    const v = $("remote-video");
    if (typeof v.requestVideoFrameCallback !== "function") return;
    v.requestVideoFrameCallback(() => { if (state.call === call && !call.timeline.firstFrame) call.timeline.firstFrame = Date.now(); });
  }

  function playRemote() {
    const v = $("remote-video");
    v.play().then(() => { $("play-remote").hidden = true; }).catch(() => { $("play-remote").hidden = false; });
  }
  $("play-remote").addEventListener("click", playRemote);

  async function onIceFailed(call) {
    call.failures += 1;
    if (call.failures >= 2) {
      callStatus("The connection failed.");
      endCall();
      return;
    }
    callStatus("The connection failed; retrying…");
    if (call.isInitiator) await sendOffer(call, { iceRestart: true }).catch((e) => fail("ice restart", e));
  }

  function onResume(d) {
    syncClock(d.serverNow);
    trace(`call:resume for room ${d.roomId}`);
    const call = state.call;
    if (call && call.roomId === d.roomId) {
      call.endsAt = d.endsAt;
      tick();
      // The socket blipped. Media is peer to peer and usually survived; if not, the initiator starts over.
      if (call.pc && call.pc.connectionState !== "connected" && call.isInitiator) restartAsInitiator(call);
      return;
    }
    startCall(d, "resume");  // e.g. the page was reloaded mid-call
  }

  function onPartnerBack() {
    const call = state.call;
    if (!call) return;
    callStatus(call.pc && call.pc.connectionState === "connected" ? "Connected." : "Your partner is back; reconnecting…");
    // A partner who reloaded has a new connection and waits for an offer from the initiator.
    if (call.isInitiator && call.pc && call.pc.connectionState !== "connected") restartAsInitiator(call);
  }

  async function restartAsInitiator(call) {
    await call.ready;
    if (state.call !== call) return;
    buildPeer(call);
    await sendOffer(call).catch((e) => fail("re-offer", e));
  }

  function callStatus(text) { $("call-status").textContent = text; }

  function fail(what, e) {
    console.error(what, e);
    callStatus(`Problem during ${what}: ${e && e.message ? e.message : e}`);
  }

  function endCall() {
    const call = state.call;
    if (!call || call.endSent) return;
    call.endSent = true;
    state.socket.emit("call:end", { roomId: call.roomId });
  }
  $("end-call").addEventListener("click", endCall);

  $("chat-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = $("chat-input").value.trim();
    if (!text || !state.call) return;
    state.socket.emit("room:chat", { roomId: state.call.roomId, text });
    $("chat-input").value = "";  // the message shows up when the server echoes it
  });

  function addChat(d) {
    if (!state.call || !d) return;
    const li = document.createElement("li");
    const mine = d.from === (state.session && state.session.userId);
    li.className = mine ? "mine" : "";
    li.textContent = `${mine ? "You" : state.call.peer.name}: ${d.text}`;
    $("chat-log").append(li);
    li.scrollIntoView({ block: "nearest" });
  }

  function onFinalized(d) {
    trace("session finalized", JSON.stringify(d));
    const call = state.call;
    // Repeats (our own late call:end, a replay after reconnecting) find no call here: nothing to end.
    if (!call || (call.sessionId && d && d.sessionId && d.sessionId !== call.sessionId)) return;
    const reason = (d && d.reason) || "ended";
    const seconds = call && call.timeline.connected ? Math.round((Date.now() - call.timeline.connected) / 1000) : null;
    state.lastEnded = { sessionId: d && d.sessionId, reason, roomId: call && call.roomId, seconds };
    teardownCall();
    const why = { deadline: "The time was up.", ended: "The call was ended.", disconnected: "Your partner left." }[reason] || `Reason: ${reason}.`;
    $("ended-text").textContent = `${why}${seconds !== null ? ` You talked for about ${seconds} s.` : ""}`;
    show("ended");
  }

  $("back-to-lobby").addEventListener("click", async () => {
    enterLobby();
    const me = await api("/user/me");
    if (me.ok) { state.me = me.data; $("profile-setup").hidden = Boolean(me.data.selfieUrl && me.data.videoUrl); }
  });

  function teardownCall() {
    const call = state.call;
    if (!call) return;
    state.call = null;
    if (call.pc) { call.pc.onconnectionstatechange = null; call.pc.close(); }
    if (call.localStream) call.localStream.getTracks().forEach((t) => t.stop());
    $("local-video").srcObject = null; $("remote-video").srcObject = null;
  }

  // ---------------------------------------------------------------- one clock for every countdown
  function tick() {
    const call = state.call;
    if (call && typeof call.endsAt === "number") {
      const left = (call.endsAt - serverNow()) / 1000;
      $("countdown").textContent = fmt(left);
      // The server ends the call at endsAt (E1); if nothing arrives shortly after, ask it to.
      if (left < -3) endCall();
    }
    const inc = state.incoming;
    if (inc) {
      const left = (inc.deadline - Date.now()) / 1000;
      $("incoming-countdown").textContent = String(Math.max(0, Math.ceil(left)));
      if (left <= 0) {
        state.socket.emit("call:decline", { inviteId: inc.inviteId, reason: "timeout" });
        closeIncoming();
      }
    }
    if (state.outgoing) renderOutgoing();
  }
  setInterval(tick, 250);

  // ---------------------------------------------------------------- stats for people and tests
  window.__stats = async () => {
    const call = state.call;
    const out = {
      roomId: call ? call.roomId : null, connectionState: call && call.pc ? call.pc.connectionState : null,
      iceConnectionState: call && call.pc ? call.pc.iceConnectionState : null,
      inbound: {}, outbound: {}, pair: null, timeline: call ? { ...call.timeline } : null,
      relayOnly: RELAY_ONLY, iceProvider: call ? call.iceProvider : null, generation: call ? call.generation : 0,
      trickle: TRICKLE, trickledOut: call ? call.trickledOut : 0, trickledIn: call ? call.trickledIn : 0,
      how: call ? call.how : null,
    };
    if (!call || !call.pc) return out;
    const report = await call.pc.getStats();
    const byId = new Map();
    report.forEach((s) => byId.set(s.id, s));
    let pairId = null;
    report.forEach((s) => {
      if (s.type === "inbound-rtp") {
        out.inbound[s.kind] = {
          packetsReceived: s.packetsReceived, bytesReceived: s.bytesReceived, packetsLost: s.packetsLost,
          framesDecoded: s.framesDecoded, framesReceived: s.framesReceived, framesDropped: s.framesDropped,
          framesPerSecond: s.framesPerSecond, frameWidth: s.frameWidth, frameHeight: s.frameHeight,
          totalSamplesReceived: s.totalSamplesReceived, audioLevel: s.audioLevel,
        };
      } else if (s.type === "outbound-rtp") {
        out.outbound[s.kind] = {
          packetsSent: s.packetsSent, bytesSent: s.bytesSent, framesSent: s.framesSent,
          framesEncoded: s.framesEncoded, frameWidth: s.frameWidth, frameHeight: s.frameHeight,
        };
      } else if (s.type === "transport" && s.selectedCandidatePairId) {
        pairId = s.selectedCandidatePairId;
      }
    });
    if (!pairId) report.forEach((s) => { if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") pairId = s.id; });
    const pair = pairId && byId.get(pairId);
    if (pair) {
      const cand = (id) => {
        const c = byId.get(id) || {};
        return { type: c.candidateType, protocol: c.protocol, address: c.address, port: c.port,
                 relayProtocol: c.relayProtocol, url: c.url };
      };
      out.pair = { state: pair.state, local: cand(pair.localCandidateId), remote: cand(pair.remoteCandidateId),
                   bytesSent: pair.bytesSent, bytesReceived: pair.bytesReceived,
                   currentRoundTripTime: pair.currentRoundTripTime };
    }
    return out;
  };

  // After the deferred ES modules (paywall.js must be able to gate the first signedIn).
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", boot); else boot();
})();
