// Access screens of the test client (PROTOCOL.md §2.7): the paywall (pay with Stripe Checkout, or enter
// an invite code), the return from Checkout (/payment-success polls /payment/status, as the original
// client does), invite links (/onboarding?inviteCode=...) and the panel with the user's own invite code
// and its QR once they have one. app.js calls gate() before entering the lobby.

const app = () => window.__napalmStub;
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const POLL_MS = 1000;
const POLL_TRIES = 15;

// An invite link pre-fills the sign-up form.
const linked = (params.get("inviteCode") || "").trim().toUpperCase();
if (linked && $("signup-invite")) $("signup-invite").value = linked;

function forgetUrl() { history.replaceState(null, "", "/"); }

function setStatus(text) { $("paywall-status").textContent = text; }
function setError(text) { $("paywall-error").textContent = text || ""; }

function showPaywall(message) {
  app().show("paywall");
  $("paywall-options").hidden = false;
  setStatus(message || "This server asks for a one-time payment before you can go online, or an invite code.");
  setError("");
  if (linked && !$("paywall-code").value) $("paywall-code").value = linked;
}

async function enter() {
  // Fresh /user/me, then the lobby through app.js's usual path (which calls gate() again).
  const me = await app().api("/user/me");
  if (me.ok) app().signedIn(me.data);
}

async function waitForPayment() {
  app().show("paywall");
  $("paywall-options").hidden = true;
  setError("");
  for (let i = 0; i < POLL_TRIES; i++) {
    setStatus(`Confirming your payment… (${i + 1})`);
    const st = await app().api("/payment/status");
    if (st.ok && st.data.hasAccess) {
      forgetUrl();
      app().toast("Payment received. Welcome!");
      return enter();
    }
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
  forgetUrl();
  showPaywall("We have not received the payment confirmation yet. If you paid, reload in a minute.");
}

async function pay() {
  $("paywall-pay").disabled = true;
  setError("");
  try {
    const res = await app().api("/payment/create-checkout", { method: "POST", body: {} });
    if (!res.ok) { setError(res.data.error || `Could not start the payment (${res.status})`); return; }
    location.assign(res.data.checkoutUrl);
  } finally { $("paywall-pay").disabled = false; }
}

async function useCode(ev) {
  ev.preventDefault();
  const code = $("paywall-code").value.trim().toUpperCase();
  if (!code) { setError("Please enter an invite code"); return; }
  $("paywall-code-submit").disabled = true;
  setError("");
  try {
    const check = await app().api("/payment/validate-code", { method: "POST", body: { code } });
    if (!check.ok) {
      setError(check.status === 429 ? (check.data.message || check.data.error) : check.data.error || "Invalid invite code");
      return;
    }
    const res = await app().api("/payment/apply-code", { method: "POST", body: { inviteCode: code } });
    if (!res.ok) { setError(res.data.error || "Could not use the code"); return; }
    await enter();
  } finally { $("paywall-code-submit").disabled = false; }
}

// The user's own invite code and QR (the original's settings panel): shown when they have a code and
// either paid or unlocked it by calls.
async function refreshMyCode() {
  const st = await app().api("/payment/status");
  const d = st.data || {};
  const show = st.ok && d.myInviteCode && (d.paidStatus === "paid" || d.qrUnlocked);
  $("my-code").hidden = !show;
  if (!show) return;
  $("my-code-text").textContent = d.myInviteCode;
  $("my-code-uses").textContent = String(d.inviteCodeUsesRemaining);
  $("my-code-qr").src = `/payment/qr/${encodeURIComponent(d.myInviteCode)}`;
}

window.__napalmPaywall = {
  // true = the paywall took over; false = go on to the lobby.
  gate(me) {
    if (location.pathname === "/payment-success" && params.get("session_id")) { waitForPayment(); return true; }
    if (location.pathname !== "/") forgetUrl();
    if (me.hasAccess !== false) { refreshMyCode(); return false; }
    showPaywall();
    return true;
  },
  signupExtras() {
    const code = ($("signup-invite") && $("signup-invite").value.trim().toUpperCase()) || "";
    return code ? { inviteCode: code } : {};
  },
};

window.addEventListener("napalm:socket", (ev) => {
  ev.detail.on("qr:unlocked", (d) => { app().toast((d && d.message) || "You unlocked your invite code!"); refreshMyCode(); });
});

$("paywall-pay").addEventListener("click", pay);
$("paywall-code-form").addEventListener("submit", useCode);
