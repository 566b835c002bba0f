/* Napalm Sky moderator page: sign-in with TOTP, the report queue with evidence, one-click decisions,
 * reviews of automatic bans, blacklist, stats, audit log and admin invite codes.
 *
 * Everything user-supplied (names, reasons, transcripts, notes) is put into the page with textContent
 * or attributes, never parsed as HTML; the server's Content-Security-Policy forbids inline script too.
 * The admin token from /admin/login lives in sessionStorage and goes out as X-Admin-Token.
 */

const TOKEN_KEY = "napalm_moderator_token";
const PAGE = 20;
const $ = (id) => document.getElementById(id);
const state = { me: null, offset: 0, total: 0, current: null, auditNext: null };

function token() { return sessionStorage.getItem(TOKEN_KEY); }

async function api(method, path, body) {
  const headers = { "X-Admin-Token": token() || "" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  let data = {};
  try { data = await res.json(); } catch { /* empty body */ }
  if (res.status === 401) { signedOut("Your moderator session has ended. Sign in again."); }
  if (!res.ok) throw Object.assign(new Error(data.error || `HTTP ${res.status}`), { status: res.status, data });
  return data;
}

function el(tag, text, attrs = {}) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  return node;
}

function when(ms) { return ms ? new Date(ms).toLocaleString() : "—"; }

function status(text) { $("mod-status").textContent = text; }

function fail(err) { status(`Failed: ${err.message}${err.data && err.data.message ? ` (${err.data.message})` : ""}`); }

/* ---- sign-in ---- */

function signedOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  state.me = null;
  $("mod-app").hidden = true;
  $("mod-login").hidden = false;
  $("mod-logout").hidden = true;
  $("mod-whoami").hidden = true;
  if (message) $("mod-login-error").textContent = message;
}

async function signedIn() {
  const me = await api("GET", "/mod/me");
  state.me = me;
  $("mod-login").hidden = true;
  $("mod-app").hidden = false;
  $("mod-logout").hidden = false;
  $("mod-whoami").hidden = false;
  $("mod-whoami").textContent = `${me.name || "moderator"} (${me.role})`;
  for (const node of document.querySelectorAll("[data-admin-only]")) node.hidden = me.role !== "admin";
  show("queue");
}

$("mod-login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("mod-login-error").textContent = "";
  $("mod-login-submit").disabled = true;
  try {
    const res = await fetch("/admin/login", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ username: $("mod-username").value, password: $("mod-password").value,
                             totp: $("mod-totp").value.trim() || null }),
    });
    const data = await res.json();
    if (!res.ok) {
      $("mod-login-error").textContent = data.message ? `${data.error}: ${data.message}` : data.error;
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, data.adminToken);
    $("mod-password").value = "";
    $("mod-totp").value = "";
    await signedIn();
  } catch (err) {
    $("mod-login-error").textContent = err.message;
  } finally {
    $("mod-login-submit").disabled = false;
  }
});

$("mod-logout").addEventListener("click", async () => {
  try { await api("POST", "/admin/logout"); } finally { signedOut(""); }
});

/* ---- tabs ---- */

const loaders = { queue: loadQueue, pending: loadPending, blacklist: loadBlacklist, stats: loadStats,
                  audit: () => loadAudit(true), codes: loadCodes };

function show(tab) {
  for (const b of document.querySelectorAll("[data-tab]")) b.setAttribute("aria-pressed", String(b.dataset.tab === tab));
  for (const s of document.querySelectorAll(".tab")) s.hidden = s.id !== `tab-${tab}`;
  status("");
  loaders[tab]().catch(fail);
}

for (const b of document.querySelectorAll("[data-tab]")) b.addEventListener("click", () => show(b.dataset.tab));

/* ---- queue ---- */

async function loadQueue() {
  const s = $("queue-state").value;
  const data = await api("GET", `/mod/reports?state=${encodeURIComponent(s)}&limit=${PAGE}&offset=${state.offset}`);
  state.total = data.total;
  const list = $("queue-list");
  list.replaceChildren();
  for (const r of data.reports) {
    const li = el("li", null, { "data-report-id": r.reportId });
    if (r.reportedUserSelfie) li.append(el("img", null, { src: r.reportedUserSelfie, alt: "" }));
    li.append(el("span", r.reportedUserName, { class: "name" }),
              el("span", `${r.reportedUserBanStatus !== "none" ? r.reportedUserBanStatus + " · " : ""}${r.state}`,
                 { class: "badge" }),
              el("span", r.reason, { class: "reason" }),
              el("span", `by ${r.reporterName}${r.sharedRoom ? " (met)" : " (never met)"}`, { class: "muted" }));
    const open = el("button", "Open", { type: "button" });
    open.addEventListener("click", () => openReport(r.reportId).catch(fail));
    li.append(open);
    list.append(li);
  }
  const last = Math.min(state.offset + PAGE, state.total);
  $("queue-count").textContent = state.total ? `${state.offset + 1}–${last} of ${state.total}` : "no reports";
  $("queue-prev").disabled = state.offset === 0;
  $("queue-next").disabled = last >= state.total;
}

$("queue-state").addEventListener("change", () => { state.offset = 0; loadQueue().catch(fail); });
$("queue-prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - PAGE); loadQueue().catch(fail); });
$("queue-next").addEventListener("click", () => { state.offset += PAGE; loadQueue().catch(fail); });

async function openReport(id) {
  const data = await api("GET", `/mod/reports/${encodeURIComponent(id)}`);
  const r = data.report;
  state.current = r;
  $("report-detail").hidden = false;
  $("report-detail").dataset.reportId = r.reportId;
  $("detail-name").textContent = r.reportedUserName;
  $("detail-ban").textContent = `ban: ${r.reportedUserBanStatus}`;
  const selfie = $("detail-selfie");
  if (r.reportedUserSelfie) selfie.src = r.reportedUserSelfie; else selfie.removeAttribute("src");
  const video = $("detail-video");
  if (r.reportedUserVideo) video.src = r.reportedUserVideo; else video.removeAttribute("src");
  $("detail-reporter").textContent = r.reporterName;
  $("detail-met").textContent = r.sharedRoom ? "yes (checked against call history)" : "no";
  $("detail-reason").textContent = r.reason;
  $("detail-when").textContent = when(r.timestamp);
  $("detail-room").textContent = r.roomId || "—";
  $("detail-state").textContent = r.state + (r.assignedName ? ` (${r.assignedName})` : "") +
    (r.resolution ? ` · ${r.resolution}` : "");
  $("detail-ip").textContent = r.reporterIp || "—";
  const transcript = $("detail-transcript");
  transcript.replaceChildren();
  for (const m of r.transcript || []) {
    const who = m.from === r.reportedUserId ? r.reportedUserName : m.from === r.reporterUserId ? r.reporterName : m.from;
    const text = m.type === "social" ? `shared socials: ${JSON.stringify(m.socials)}` : m.text;
    transcript.append(el("li", `${who}: ${text}`));
  }
  if (!transcript.children.length) transcript.append(el("li", "(no chat in this call, or no shared call)", { class: "muted" }));
  const others = $("detail-others");
  others.replaceChildren(...data.otherReports.map((o) =>
    el("li", `${when(o.timestamp)} · ${o.reporterName}${o.sharedRoom ? " (met)" : ""}: ${o.reason} [${o.state}]`)));
  if (!others.children.length) others.append(el("li", "none", { class: "muted" }));
  const notes = $("detail-notes");
  notes.replaceChildren(...data.notes.map((n) => el("li", `${when(n.createdAt)} · ${n.author}: ${n.body}`)));
  const resolved = r.state === "resolved";
  for (const id of ["act-claim", "act-dismiss", "act-warn", "act-temp", "act-permanent", "act-ipban"]) $(id).disabled = resolved;
  $("act-vindicate").disabled = !["temporary", "permanent"].includes(r.reportedUserBanStatus);
}

async function decide(label, call) {
  const r = state.current;
  if (!r) return;
  try {
    await call(r);
    await openReport(r.reportId);
    await loadQueue();
    status(`${label}: done`);
  } catch (err) { fail(err); }
}

const resolve = (action, extra = {}) => (r) => api("POST", `/mod/reports/${r.reportId}/resolve`, { action, ...extra });

$("act-claim").addEventListener("click", () => decide("Claimed", (r) => api("POST", `/mod/reports/${r.reportId}/claim`, {})));
$("act-dismiss").addEventListener("click", () => decide("Dismissed", resolve("dismiss")));
$("act-warn").addEventListener("click", () => decide("Warned", resolve("warn")));
$("act-temp").addEventListener("click", () =>
  decide("Temporarily banned", resolve("temporary_ban", { durationHours: Number($("act-hours").value) || 24 })));
$("act-permanent").addEventListener("click", () => decide("Banned permanently", resolve("permanent_ban")));
$("act-ipban").addEventListener("click", () => decide("IP banned", resolve("ip_ban")));
$("act-vindicate").addEventListener("click", () =>
  decide("Vindicated", (r) => api("POST", `/mod/users/${r.reportedUserId}/unban`, { reason: "Vindicated on review" })));

$("note-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const body = $("note-body").value.trim();
  if (!body) return;
  decide("Note added", async (r) => { await api("POST", `/mod/reports/${r.reportId}/notes`, { body }); $("note-body").value = ""; });
});

/* ---- automatic bans to review (the original admin page's panel) ---- */

async function loadPending() {
  const data = await api("GET", "/report/pending");
  const list = $("pending-list");
  list.replaceChildren();
  for (const b of data.pending) {
    const li = el("li", null, { "data-user-id": b.userId });
    if (b.userSelfie) li.append(el("img", null, { src: b.userSelfie, alt: "" }));
    li.append(el("span", b.userName, { class: "name" }),
              el("span", `${b.reportCount} reports · banned ${when(b.bannedAt)}`, { class: "badge" }),
              el("span", b.reports.map((r) => `${r.reporterName}${r.sharedRoom ? " (met)" : ""}: ${r.reason}`).join(" | "),
                 { class: "reason" }));
    for (const [label, decision, cls] of [["Ban permanently", "permanent", "danger"], ["Vindicate", "vindicated", ""]]) {
      const btn = el("button", label, { type: "button", class: cls, "data-decision": decision });
      btn.addEventListener("click", async () => {
        try {
          await api("POST", `/report/review/${b.userId}`, { decision });
          status(`${b.userName}: ${decision}`);
          await loadPending();
        } catch (err) { fail(err); }
      });
      li.append(btn);
    }
    list.append(li);
  }
  if (!list.children.length) list.append(el("li", "Nothing waiting for review.", { class: "muted" }));
}

/* ---- blacklist, stats, audit ---- */

async function loadBlacklist() {
  const data = await fetch("/report/blacklist").then((r) => r.json());
  const list = $("blacklist-list");
  list.replaceChildren(...data.blacklist.map((b) => {
    const li = el("li");
    if (b.userSelfie) li.append(el("img", null, { src: b.userSelfie, alt: "" }));
    li.append(el("span", b.userName, { class: "name" }), el("span", b.bannedReason, { class: "reason" }),
              el("span", `${b.reportCount} reports · ${when(b.bannedAt)}`, { class: "badge" }));
    return li;
  }));
  if (!list.children.length) list.append(el("li", "Nobody is on the blacklist.", { class: "muted" }));
}

async function loadStats() {
  const s = await api("GET", "/mod/stats");
  const labels = { totalReports: "Reports", openReports: "Open", claimedReports: "Claimed", resolvedReports: "Resolved",
                   medianDecisionSeconds: "Median time to decision (s)", pendingReviews: "Auto-bans to review",
                   temporaryBans: "Temporary bans", permanentBans: "Permanent bans", vindicated: "Vindicated",
                   totalBans: "Ban records", ipBans: "IP bans" };
  $("stats-list").replaceChildren(...Object.entries(labels).flatMap(([k, label]) =>
    [el("dt", label), el("dd", s[k] === null || s[k] === undefined ? "—" : s[k], { "data-stat": k })]));
}

async function loadAudit(reset) {
  if (reset) { state.auditNext = null; $("audit-rows").replaceChildren(); }
  const data = await api("GET", `/mod/audit?limit=50${state.auditNext ? `&before=${state.auditNext}` : ""}`);
  for (const e of data.entries) {
    const change = [e.before ? `before ${JSON.stringify(e.before)}` : "", e.after ? `after ${JSON.stringify(e.after)}` : "",
                    e.details && Object.keys(e.details).length ? JSON.stringify(e.details) : ""].filter(Boolean).join(" ");
    const tr = el("tr");
    tr.append(el("td", when(e.at)), el("td", e.actor), el("td", e.action), el("td", e.targetName || e.targetUserId || ""),
              el("td", e.ip || ""), el("td", change));
    $("audit-rows").append(tr);
  }
  state.auditNext = data.next;
  $("audit-more").hidden = !data.next;
}

$("audit-more").addEventListener("click", () => loadAudit(false).catch(fail));

/* ---- invite codes (/payment/admin/*) ---- */

async function loadCodes() {
  const data = await api("GET", "/payment/admin/codes");
  const list = $("codes-list");
  list.replaceChildren(...(data.codes || []).filter((c) => c.type === "admin").map((c) => {
    const li = el("li", null, { "data-code": c.code });
    li.append(el("code", c.code), el("span", c.createdBy, { class: "reason" }),
              el("span", `${c.totalUsed} used · ${c.isActive ? "active" : "deactivated"}`, { class: "badge" }));
    if (c.isActive) {
      const off = el("button", "Deactivate", { type: "button", class: "danger" });
      off.addEventListener("click", async () => {
        try { await api("POST", "/payment/admin/deactivate-code", { code: c.code }); await loadCodes(); } catch (err) { fail(err); }
      });
      li.append(off);
    }
    return li;
  }));
}

$("code-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  try {
    const data = await api("POST", "/payment/admin/generate-code", { label: $("code-label").value || "Admin QR Code" });
    $("code-new").hidden = false;
    $("code-qr").src = data.qrCodeUrl || `/payment/qr/${encodeURIComponent(data.code)}`;
    $("code-text").textContent = data.code;
    await loadCodes();
  } catch (err) { fail(err); }
});

/* ---- start ---- */

if (token()) signedIn().catch(() => signedOut("")); else signedOut("");
