// Introductions in the test client (PROTOCOL.md §2.5, §3.3, README "Introductions"): an "Introduce a
// friend" button on each card that makes a link, the onboarding banner for someone who opens such a
// link, the live notification popup with "Call now", and the list of people introduced to you.
// Everything is built with textContent (names are user input). Hooks: window.__napalmStub and the
// napalm:* events of app.js.

import { $, el } from "./ui.js";

const stub = window.__napalmStub;
const params = new URLSearchParams(location.search);

// ---------------------------------------------------------------- page parts
const banner = el("div", { id: "intro-banner", class: "notice", role: "status" });
banner.hidden = true;
$("signup-form").before(banner);

const share = el("div", { id: "intro-share", class: "notice" });
share.hidden = true;
const shareText = el("p", { id: "intro-share-text" });
const shareLabel = el("label", { for: "intro-link" }, "Send this link to the friend you introduce:");
const shareLink = el("input", { id: "intro-link", readonly: "", size: "60" });
share.append(shareText, shareLabel, shareLink);
$("queue-status").after(share);

const mine = el("section", { id: "my-intros", "aria-labelledby": "my-intros-title" });
const mineList = el("ul", { id: "intro-list", class: "cards", "aria-label": "People introduced to you" });
const mineEmpty = el("p", { id: "intro-empty", class: "muted" }, "Nobody has been introduced to you yet.");
mine.append(el("h3", { id: "my-intros-title" }, "Introduced to you"), mineEmpty, mineList);
$("view-lobby").append(mine);

const popup = el("dialog", { id: "intro-popup", "aria-labelledby": "intro-popup-title" });
const popupText = el("p", { id: "intro-popup-text" });
const callNow = el("button", { id: "intro-call", type: "button" }, "Call now");
const later = el("button", { id: "intro-later", type: "button", class: "link" }, "Later");
const popupRow = el("div", { class: "row" });
popupRow.append(callNow, later);
popup.append(el("h2", { id: "intro-popup-title" }, "New introduction"), popupText, popupRow);
document.body.append(popup);

// ---------------------------------------------------------------- onboarding from a link
async function showBanner() {
  const code = params.get("ref");
  if (!code || (window.__napalm && window.__napalm.session)) return;
  const res = await stub.api(`/referral/info/${encodeURIComponent(code)}`);
  banner.replaceChildren();
  if (!res.ok) {
    banner.append(el("p", {}, "This introduction link is invalid or has expired; you can still join."));
  } else {
    const t = res.data.targetUser || {};
    if (t.selfieUrl) banner.append(el("img", { src: t.selfieUrl, alt: `Selfie of ${res.data.targetUserName}`, width: "96" }));
    banner.append(el("p", { id: "intro-banner-text" },
      `${res.data.introducedBy} introduced you to ${res.data.targetUserName}. Join and record your intro: ` +
      `${res.data.targetUserName} will be told.`));
  }
  banner.hidden = false;
}

// ---------------------------------------------------------------- introduce a friend (cards)
window.addEventListener("napalm:card", (ev) => {
  const { li, user } = ev.detail;
  const btn = el("button", { type: "button", "data-introduce": user.userId }, "Introduce a friend");
  btn.addEventListener("click", () => introduce(user, btn));
  li.append(btn);
});

async function introduce(user, btn) {
  btn.disabled = true;
  try {
    const res = await stub.api("/referral/generate", { method: "POST", body: { targetUserId: user.userId } });
    if (!res.ok) { stub.toast(res.data.error || `Could not make a link (${res.status})`); return; }
    const link = `${location.origin}/onboarding?ref=${encodeURIComponent(res.data.referralCode)}`;
    shareText.textContent = `A link that introduces a friend to ${res.data.targetUserName}:`;
    shareLink.value = link;
    share.hidden = false;
    shareLink.focus(); shareLink.select();
  } finally { btn.disabled = false; }
}

// ---------------------------------------------------------------- notifications
const shown = new Set();
const waiting = [];
let current = null;

function onNotification(n) {
  if (!n || !n.id || shown.has(n.id) || n.read) return;
  shown.add(n.id);
  waiting.push(n);
  if (!current) next();
  loadIntros();
}

function next() {
  current = waiting.shift() || null;
  if (!current) { if (popup.open) popup.close(); return; }
  popupText.textContent = current.introducedByName
    ? `${current.introducedByName} introduced ${current.referredName} to you, and ${current.referredName} just joined.`
    : `${current.referredName} was introduced to you and just joined.`;
  if (!popup.open) popup.show();
  const id = current.id;  // seen: mark it read (the original client does so after a second)
  setTimeout(() => stub.api(`/referral/notifications/${encodeURIComponent(id)}/read`, { method: "PUT" }), 1000);
}

callNow.addEventListener("click", () => {
  if (current) stub.invite({ userId: current.referredUserId, name: current.referredName });
  next();
});
later.addEventListener("click", () => next());

const bound = new WeakSet();
function bindSocket(socket) {
  if (!socket || bound.has(socket)) return;
  bound.add(socket);
  socket.on("referral:notification", (d) => onNotification(d && d.notification));
}
window.addEventListener("napalm:socket", (ev) => bindSocket(ev.detail));

// ---------------------------------------------------------------- introduced to you
async function loadIntros() {
  const res = await stub.api("/referral/my-introductions");
  if (!res.ok) return;
  mineList.replaceChildren();
  for (const u of res.data.introductions || []) {
    const li = el("li", { "data-introduced": u.userId });
    li.append(el("strong", {}, u.name),
      el("span", { class: "badge" }, [u.introducedBy ? `introduced by ${u.introducedBy}` : "", u.isAvailable ? "available" : u.isOnline ? "online" : "offline"].filter(Boolean).join(" · ")));
    if (u.isAvailable) {
      const call = el("button", { type: "button" }, `Call ${u.name}`);
      call.addEventListener("click", () => stub.invite({ userId: u.userId, name: u.name }));
      li.append(call);
    }
    mineList.append(li);
  }
  mineEmpty.hidden = mineList.children.length > 0;
}

async function onSignedIn() {
  banner.hidden = true;
  const state = window.__napalm;
  if (state && state.socket) bindSocket(state.socket);
  loadIntros();
  const res = await stub.api("/referral/notifications");
  if (res.ok) for (const n of (res.data.notifications || []).slice().reverse()) onNotification(n);
}

window.addEventListener("napalm:signedin", onSignedIn);
window.addEventListener("napalm:signedout", () => { share.hidden = true; mineList.replaceChildren(); if (popup.open) popup.close(); showBanner(); });

// app.js may have signed in (or not) before this module ran.
if (window.__napalm && window.__napalm.me) onSignedIn(); else showBanner();
