// Drives the call happy path with socket.io-client 4.x, the library the original web client uses,
// configured like its socket.ts (websocket then polling, reconnection, auth {token}, and an `auth`
// event on every connect). Caller and callee may be on different server nodes.
//
//   node happy_path.mjs '{"callerUrl": "...", "calleeUrl": "...",
//                         "caller": {"token": "...", "userId": "..."}, "callee": {...},
//                         "seconds": 60, "holdSeconds": 0, "calleeTransports": ["websocket", "polling"]}'
//
// Prints one JSON object on stdout ({ok: true, ...} or {ok: false, error, step, ...}); exit code 0 or 1.

import { io } from "socket.io-client";

const cfg = JSON.parse(process.argv[2] ?? process.env.HAPPY_PATH_CONFIG ?? "{}");
const seconds = cfg.seconds ?? 60;
const t0 = Date.now();
const steps = [];
let step = "start";

function fail(message) {
  throw new Error(`${step}: ${message}`);
}

function check(cond, message) {
  if (!cond) fail(message);
}

function sameKeys(obj, keys, what) {
  const got = Object.keys(obj ?? {}).sort();
  const want = [...keys].sort();
  check(JSON.stringify(got) === JSON.stringify(want), `${what} keys ${JSON.stringify(got)} != ${JSON.stringify(want)}`);
}

class Client {
  constructor(name, url, token, transports) {
    this.name = name;
    this.token = token;
    this.events = [];
    this.seen = new Map();
    this.listeners = new Set();
    this.socket = io(url, {
      transports: transports ?? ["websocket", "polling"],
      reconnection: true,
      reconnectionAttempts: 5,
      reconnectionDelay: 1000,
      timeout: 20000,
      auth: { token },
      // Node keeps cookies only with this (a browser always does): the proxy's sticky cookie.
      withCredentials: cfg.withCredentials ?? false,
    });
    this.socket.onAny((event, data) => this.record(event, data));
    // socket.ts: on every connect (including reconnects) the client also sends `auth`.
    this.socket.on("connect", () => {
      this.record("connect", { transport: this.socket.io.engine.transport.name });
      this.socket.emit("auth", { sessionToken: token });
    });
    this.socket.on("connect_error", (err) => this.record("connect_error", { message: err.message }));
  }

  record(event, data) {
    this.events.push([event, data, Date.now() - t0]);
    for (const fn of this.listeners) fn();
  }

  emit(event, data) {
    this.socket.emit(event, data);
  }

  // The next `event` not yet returned (optionally matching `where`).
  wait(event, { timeout = 5000, where = () => true } = {}) {
    return new Promise((resolve, reject) => {
      const look = () => {
        const from = this.seen.get(event) ?? 0;
        for (let i = from; i < this.events.length; i++) {
          const [e, d] = this.events[i];
          if (e === event && where(d)) {
            this.seen.set(event, i + 1);
            cleanup();
            resolve(d);
            return true;
          }
        }
        return false;
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`${step}: ${this.name} got no ${event} within ${timeout} ms; got ${this.names().join(", ")}`));
      }, timeout);
      const cleanup = () => {
        clearTimeout(timer);
        this.listeners.delete(look);
      };
      if (!look()) this.listeners.add(look);
    });
  }

  count(event) {
    return this.events.filter(([e]) => e === event).length;
  }

  names() {
    return this.events.map(([e]) => e);
  }

  close() {
    this.socket.disconnect();
  }
}

async function mark(name, fn) {
  step = name;
  const started = Date.now();
  const out = await fn();
  steps.push({ step: name, ms: Date.now() - started });
  return out;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const caller = new Client("caller", cfg.callerUrl, cfg.caller?.token, cfg.callerTransports);
const callee = new Client("callee", cfg.calleeUrl, cfg.callee?.token, cfg.calleeTransports);
const result = { ok: false };
const watchdog = setTimeout(() => {
  console.log(JSON.stringify({ ok: false, error: `timed out in step ${step}`, step, events: dump() }));
  process.exit(1);
}, (cfg.timeoutSeconds ?? 40) * 1000);

function dump() {
  return { caller: caller.names(), callee: callee.names() };
}

try {
  await mark("connect", async () => {
    for (const c of [caller, callee]) {
      const connected = await c.wait("connect");
      c.transport = connected.transport;
      const ok = await c.wait("auth:success"); // for the handshake token
      check(ok.userId === (c === caller ? cfg.caller.userId : cfg.callee.userId), "auth:success userId");
      await c.wait("auth:success"); // for the `auth` event
    }
  });

  await mark("queue", async () => {
    for (const [c, me] of [[callee, cfg.callee.userId], [caller, cfg.caller.userId]]) {
      c.emit("presence:join");
      c.emit("queue:join");
      await c.wait("queue:update", { where: (d) => d.userId === me && d.available === true });
    }
  });

  const notify = await mark("invite", async () => {
    caller.emit("call:invite", { toUserId: cfg.callee.userId, requestedSeconds: seconds });
    const n = await callee.wait("call:notify");
    sameKeys(n, ["inviteId", "fromUser", "requestedSeconds", "ttlMs", "expiresAt"], "call:notify");
    check(n.fromUser.userId === cfg.caller.userId, "call:notify fromUser.userId");
    check(typeof n.fromUser.name === "string" && n.fromUser.name.length > 0, "call:notify fromUser.name");
    check(n.requestedSeconds === seconds, "call:notify requestedSeconds");
    const sent = await caller.wait("call:invite-sent");
    check(sent.inviteId === n.inviteId, "call:invite-sent inviteId");
    return n;
  });

  const [startA, startB] = await mark("accept", async () => {
    callee.emit("call:accept", { inviteId: notify.inviteId, requestedSeconds: seconds });
    return Promise.all([caller.wait("call:start"), callee.wait("call:start")]);
  });
  step = "call:start";
  for (const [s, initiator, peer] of [[startA, true, cfg.callee.userId], [startB, false, cfg.caller.userId]]) {
    sameKeys(s, ["roomId", "agreedSeconds", "isInitiator", "peerUser", "sessionId", "endsAt", "serverNow"], "call:start");
    check(s.isInitiator === initiator, "isInitiator");
    check(s.peerUser.userId === peer, "peerUser.userId");
    check(s.agreedSeconds === seconds, "agreedSeconds");
  }
  check(startA.roomId === startB.roomId, "same roomId");
  const roomId = startA.roomId;

  const offer = { type: "offer", sdp: "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\n" };
  const answer = { type: "answer", sdp: "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\n" };
  const candA = { candidate: "candidate:1 1 udp 2122260223 192.0.2.1 54400 typ host", sdpMid: "0", sdpMLineIndex: 0, usernameFragment: "aaaa" };
  const candB = { candidate: "candidate:2 1 udp 2122260223 192.0.2.2 54401 typ host", sdpMid: "0", sdpMLineIndex: 0, usernameFragment: "bbbb" };

  await mark("offer-before-join", async () => {
    caller.emit("room:join", { roomId });
    const joined = await caller.wait("room:joined");
    check(joined.peerPresent === false, "caller joined first");
    caller.emit("rtc:offer", { roomId, offer });
    caller.emit("rtc:ice", { roomId, candidate: candA });
    await sleep(200);
    check(callee.count("rtc:offer") === 0, "offer delivered before the callee joined");
    callee.emit("room:join", { roomId });
    const got = await callee.wait("rtc:offer");
    check(JSON.stringify(got) === JSON.stringify({ offer, from: cfg.caller.userId }), `rtc:offer ${JSON.stringify(got)}`);
    const ice = await callee.wait("rtc:ice");
    check(ice.candidate.candidate === candA.candidate && ice.from === cfg.caller.userId, "buffered rtc:ice");
  });

  await mark("answer-ice", async () => {
    callee.emit("rtc:answer", { roomId, answer });
    const got = await caller.wait("rtc:answer");
    check(got.answer.sdp === answer.sdp && got.from === cfg.callee.userId, "rtc:answer");
    callee.emit("rtc:ice", { roomId, candidate: candB });
    const ice = await caller.wait("rtc:ice");
    check(ice.candidate.usernameFragment === "bbbb", "rtc:ice to caller");
  });

  await mark("chat", async () => {
    caller.emit("room:chat", { roomId, text: "hello from <b>socket.io-client</b>" });
    for (const c of [caller, callee]) {
      const m = await c.wait("room:chat");
      check(m.text === "hello from socket.io-client" && m.from === cfg.caller.userId && m.type === "message", "room:chat echo");
    }
    callee.emit("room:giveSocial", { roomId, socials: { instagram: "js.user", snapchat: "not valid!" } });
    for (const c of [caller, callee]) {
      const s = await c.wait("room:socialShared");
      check(JSON.stringify(s.socials) === JSON.stringify({ instagram: "js.user" }), "room:socialShared");
    }
  });

  if (cfg.holdSeconds) await mark("hold", () => sleep(cfg.holdSeconds * 1000));

  const finalized = await mark("end", async () => {
    caller.emit("call:end", { roomId });
    const [fa, fb] = await Promise.all([caller.wait("session:finalized"), callee.wait("session:finalized")]);
    check(fa.sessionId === startA.sessionId && fb.sessionId === startA.sessionId, "session:finalized sessionId");
    // The old room page's own countdown also sends call:end: that socket was told already, so nothing
    // more (§3.3). Sentinel: an `auth` (as socket.ts sends) is answered after it.
    callee.emit("call:end", { roomId });
    callee.emit("auth", { sessionToken: callee.token });
    await callee.wait("auth:success");
    check(callee.count("session:finalized") === 1, "callee got a second session:finalized");
    check(caller.count("session:finalized") === 1, "caller got a second session:finalized");
    return fa;
  });

  Object.assign(result, {
    ok: true,
    roomId,
    sessionId: finalized.sessionId,
    reason: finalized.reason,
    agreedSeconds: startA.agreedSeconds,
    transports: { caller: caller.transport, callee: callee.transport },
    steps,
    totalMs: Date.now() - t0,
    events: dump(),
  });
} catch (err) {
  Object.assign(result, { ok: false, error: String(err?.message ?? err), step, steps, events: dump() });
} finally {
  clearTimeout(watchdog);
  caller.close();
  callee.close();
}
console.log(JSON.stringify(result));
// With the polling transport the DISCONNECT packet goes out in an HTTP request of its own: give it
// time to leave, or the server keeps the socket until its ping timeout.
await sleep(500);
process.exit(result.ok ? 0 : 1);
