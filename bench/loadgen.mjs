// Load generator for `make bench`: the JavaScript socket.io-client (the library the web client uses)
// driving the full call cycle against our server or the null server.
//
//   node bench/loadgen.mjs <spec.json>
//
// spec: {mode: "closed"|"open"|"idle"|"relay", urls: [..], users: [{userId, token}], rounds, rate,
//        duration, ice, relaySeconds}. Users are spread over the urls round-robin (the --nodes axis).
// Prints one JSON line with the results (latencies in ms) and the generator's own CPU time.
//
// One cycle: invite -> notify -> accept -> call:start x2 -> queue:leave x2 -> room:join x2 -> offer ->
// answer -> `ice` candidates each way -> call:end -> session:finalized x2 -> queue:join x2.
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";

const require = createRequire(new URL("../tests/js/package.json", import.meta.url));
const { io } = require("socket.io-client");

const spec = JSON.parse(readFileSync(process.argv[2], "utf8"));
const ICE = spec.ice ?? 10;
const CYCLE_TIMEOUT_MS = spec.cycleTimeoutMs ?? 20000;
const now = () => performance.now();

const EVENTS = {}; // event name -> received by all clients (which broadcasts dominate a cycle)

class Client {
  constructor(user, url) {
    this.user = user;
    this.url = url;
    this.waiters = new Map(); // event -> [{pred, resolve}]
    this.events = 0;
  }
  connect() {
    return new Promise((resolve, reject) => {
      this.s = io(this.url, { transports: ["websocket"], auth: { token: this.user.token }, reconnection: false,
                              timeout: 60000, forceNew: true });
      this.s.onAny((ev, data) => { this.events++; EVENTS[ev] = (EVENTS[ev] || 0) + 1; this.dispatch(ev, data); });
      this.s.on("connect_error", (e) => reject(e));
      if (spec.waitAuth === false) this.s.on("connect", resolve);
      else this.once("auth:success", null, 60000).then(resolve, reject);
    });
  }
  dispatch(ev, data) {
    const list = this.waiters.get(ev);
    if (!list) return;
    for (let i = 0; i < list.length; i++) {
      if (!list[i].pred || list[i].pred(data)) {
        const [w] = list.splice(i, 1);
        clearTimeout(w.timer);
        w.resolve(data);
        return;
      }
    }
  }
  once(ev, pred, timeoutMs = CYCLE_TIMEOUT_MS) {
    const p = new Promise((resolve, reject) => {
      const w = { pred, resolve };
      w.timer = setTimeout(() => {
        const list = this.waiters.get(ev) || [];
        const i = list.indexOf(w);
        if (i >= 0) list.splice(i, 1);
        reject(new Error(ev === "call:declined" ? `cycle over ${timeoutMs / 1000} s` : `timeout waiting for ${ev}`));
      }, timeoutMs);
      if (!this.waiters.has(ev)) this.waiters.set(ev, []);
      this.waiters.get(ev).push(w);
    });
    p.catch(() => {}); // a waiter left behind by a failed cycle times out quietly
    return p;
  }
  emit(ev, data) { this.s.emit(ev, data); }
  close() { this.s.disconnect(); }
}

function pct(sorted, p) {
  if (!sorted.length) return null;
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];
}
function summary(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return { n: s.length, p50: pct(s, 0.5), p99: pct(s, 0.99), max: s.length ? s[s.length - 1] : null };
}

async function connectAll(users) {
  const clients = users.map((u, i) => new Client(u, spec.urls[i % spec.urls.length]));
  const BATCH = 100;
  for (let i = 0; i < clients.length; i += BATCH) {
    await Promise.all(clients.slice(i, i + BATCH).map((c) => c.connect()));
  }
  return clients;
}

// One call between a and b; resolves {ok, setup, total, reason}.
const STEPS = {};
function join(c, timeoutMs = CYCLE_TIMEOUT_MS) {
  const ack = c.once("queue:update", (d) => d.userId === c.user.userId && d.available, timeoutMs);
  c.emit("queue:join");
  return ack;
}
function step(name, t) { (STEPS[name] ||= []).push(now() - t); return now(); }

async function cycle(a, b) {
  const t0 = now();
  let t = t0;
  const declined = a.once("call:declined", null).then((d) => { throw new Error(`declined:${d.reason}`); });
  declined.catch(() => {});
  try {
    const notify = b.once("call:notify", (d) => d.fromUser.userId === a.user.userId);
    const startA = a.once("call:start");
    const startB = b.once("call:start");
    a.emit("call:invite", { toUserId: b.user.userId, requestedSeconds: 300 });
    const n = await Promise.race([notify, declined]);
    t = step("invite->notify", t);
    b.emit("call:accept", { inviteId: n.inviteId, requestedSeconds: 300 });
    const [sa] = await Promise.race([Promise.all([startA, startB]), declined]);
    const setup = now() - t0;
    t = step("accept->start x2", t);
    const room = sa.roomId;
    a.emit("queue:leave"); b.emit("queue:leave");
    const joinedA = a.once("room:joined"), joinedB = b.once("room:joined");
    a.emit("room:join", { roomId: room }); b.emit("room:join", { roomId: room });
    await Promise.all([joinedA, joinedB]);
    t = step("join->joined x2", t);
    const offer = b.once("rtc:offer");
    a.emit("rtc:offer", { roomId: room, offer: { type: "offer", sdp: "v=0 bench-offer" } });
    await offer;
    t = step("offer", t);
    const answer = a.once("rtc:answer");
    b.emit("rtc:answer", { roomId: room, answer: { type: "answer", sdp: "v=0 bench-answer" } });
    await answer;
    t = step("answer", t);
    const lastA = b.once("rtc:ice", (d) => d.candidate.candidate === `a${ICE - 1}`);
    const lastB = a.once("rtc:ice", (d) => d.candidate.candidate === `b${ICE - 1}`);
    for (let k = 0; k < ICE; k++) {
      a.emit("rtc:ice", { roomId: room, candidate: { candidate: `a${k}`, sdpMid: "0", sdpMLineIndex: 0 } });
      b.emit("rtc:ice", { roomId: room, candidate: { candidate: `b${k}`, sdpMid: "0", sdpMLineIndex: 0 } });
    }
    await Promise.all([lastA, lastB]);
    t = step("ice x2", t);
    const finA = a.once("session:finalized"), finB = b.once("session:finalized");
    a.emit("call:end", { roomId: room });
    await Promise.all([finA, finB]);
    t = step("end->finalized x2", t);
    // queue:join x2, acknowledged by each user's own queue:update (so the next round's invites do not
    // race a queue:join still waiting to be read by an overloaded server)
    await Promise.all([join(a), join(b)]);
    step("queue:join x2", t);
    return { ok: true, setup, total: now() - t0, started: t0 };
  } catch (e) {
    return { ok: false, reason: String(e.message || e), total: now() - t0 };
  }
}

function resultOf(results, wall, extra = {}) {
  const ok = results.filter((r) => r.ok);
  const reasons = {};
  for (const r of results) if (!r.ok) reasons[r.reason] = (reasons[r.reason] || 0) + 1;
  return {
    cycles: results.length, ok: ok.length, failed: results.length - ok.length, failReasons: reasons,
    wallSeconds: wall / 1000, cyclesPerSecond: ok.length / (wall / 1000),
    cycleMs: summary(ok.map((r) => r.total)), setupMs: summary(ok.map((r) => r.setup)), ...extra,
  };
}

async function closed(clients) {
  // Pairs never repeat: round r pairs caller i with callee (i + r) mod P; rounds are separated by a barrier.
  const P = Math.floor(clients.length / 2);
  const callers = clients.slice(0, P), callees = clients.slice(P, 2 * P);
  // Everyone's join is broadcast to everyone queued (O(N^2) sends, as the protocol wants): bounded, and
  // a join not acknowledged in time is counted rather than fatal.
  const initialJoinFailures = (await Promise.allSettled(clients.map((c) => join(c, 120000))))
    .filter((r) => r.status === "rejected").length;
  if (initialJoinFailures) process.stderr.write(`initial queue:join not acknowledged: ${initialJoinFailures}\n`);
  const results = [];
  const t0 = now();
  for (let r = 0; r < spec.rounds; r++) {
    const rr = await Promise.all(callers.map((a, i) => cycle(a, callees[(i + r) % P])));
    results.push(...rr);
  }
  return resultOf(results, now() - t0);
}

async function open(clients) {
  // Poisson arrivals at `rate` cycles/s for `duration` s; each arrival takes an idle pair never paired before.
  const idle = new Set(clients.map((_, i) => i));
  const paired = new Set();
  // Everyone's join is broadcast to everyone queued (O(N^2) sends, as the protocol wants): bounded, and
  // a join not acknowledged in time is counted rather than fatal.
  const initialJoinFailures = (await Promise.allSettled(clients.map((c) => join(c, 120000))))
    .filter((r) => r.status === "rejected").length;
  if (initialJoinFailures) process.stderr.write(`initial queue:join not acknowledged: ${initialJoinFailures}\n`);
  // The crowd's joins (O(N^2) queue:update sends, everyone's first deck) are not the steady state the
  // open loop measures: arrivals start once they have settled.
  await new Promise((r) => setTimeout(r, (spec.settle ?? 2) * 1000));
  const results = [];
  const running = [];
  let dropped = 0;
  const t0 = now();
  const end = t0 + spec.duration * 1000;
  const pick = () => {
    const ids = [...idle];
    for (let tries = 0; tries < 50 && ids.length >= 2; tries++) {
      const a = ids[Math.floor(Math.random() * ids.length)], b = ids[Math.floor(Math.random() * ids.length)];
      if (a === b || paired.has(`${a}:${b}`) || paired.has(`${b}:${a}`)) continue;
      return [a, b];
    }
    return null;
  };
  while (now() < end) {
    await new Promise((r) => setTimeout(r, -Math.log(1 - Math.random()) * 1000 / spec.rate));
    const p = pick();
    if (!p) { dropped++; continue; }
    const [a, b] = p;
    idle.delete(a); idle.delete(b); paired.add(`${a}:${b}`);
    running.push(cycle(clients[a], clients[b]).then((res) => {
      results.push(res);
      idle.add(a); idle.add(b);
    }));
  }
  await Promise.all(running);
  // When the slowest setups started (s into the run): one stall of the server shows as a cluster.
  const slowestSetups = results.filter((r) => r.ok).sort((x, y) => y.setup - x.setup).slice(0, 8)
    .map((r) => [Math.round((r.started - t0) / 100) / 10, Math.round(r.setup)]);
  return resultOf(results, now() - t0, { targetRate: spec.rate, droppedArrivals: dropped, slowestSetups });
}

async function relay(clients) {
  // Two members of a call; a streams rtc:ice to b for relaySeconds with a window of 50 in flight.
  const [a, b] = clients;
  for (const c of clients) c.emit("queue:join");
  await new Promise((r) => setTimeout(r, 300));
  const notify = b.once("call:notify");
  const sa = a.once("call:start");
  a.emit("call:invite", { toUserId: b.user.userId, requestedSeconds: 1800 });
  const n = await notify;
  b.emit("call:accept", { inviteId: n.inviteId, requestedSeconds: 1800 });
  const room = (await sa).roomId;
  const ja = a.once("room:joined"), jb = b.once("room:joined");
  a.emit("room:join", { roomId: room }); b.emit("room:join", { roomId: room });
  await Promise.all([ja, jb]);
  let sent = 0, got = 0;
  const WINDOW = 50;
  const t0 = now();
  const end = t0 + spec.relaySeconds * 1000;
  await new Promise((resolve) => {
    const pump = () => {
      while (sent - got < WINDOW && now() < end) {
        a.emit("rtc:ice", { roomId: room, candidate: { candidate: `c${sent++}`, sdpMid: "0", sdpMLineIndex: 0 } });
      }
      if (now() >= end && got >= sent) resolve();
    };
    b.s.on("rtc:ice", () => { got++; pump(); });
    pump();
  });
  return { relayed: got, seconds: (now() - t0) / 1000, perSecond: got / ((now() - t0) / 1000) };
}

async function idleConnections(clients) {
  // Connected and authenticated; the orchestrator measures the server's memory, then sends SIGUSR2... or
  // simply waits for stdin to close.
  process.stdout.write(JSON.stringify({ connected: clients.length }) + "\n");
  await new Promise((r) => process.stdin.on("end", r).resume());
  return { connected: clients.length };
}

const cpu0 = process.cpuUsage();
const w0 = now();
const clients = await connectAll(spec.users);
const connectSeconds = (now() - w0) / 1000;
let out;
if (spec.mode === "closed") out = await closed(clients);
else if (spec.mode === "open") out = await open(clients);
else if (spec.mode === "relay") out = await relay(clients);
else out = await idleConnections(clients);
const cpu = process.cpuUsage(cpu0);
const wall = (now() - w0) / 1000;
out.connectSeconds = connectSeconds;
out.generatorCpuSeconds = (cpu.user + cpu.system) / 1e6;
out.generatorCpuShare = out.generatorCpuSeconds / wall; // of one core
out.events = clients.reduce((s, c) => s + c.events, 0);
out.eventsByType = EVENTS;
out.stepsMs = Object.fromEntries(Object.entries(STEPS).map(([k, v]) => [k, summary(v)]));
for (const c of clients) c.close();
process.stdout.write(JSON.stringify(out) + "\n");
setTimeout(() => process.exit(0), 200);
