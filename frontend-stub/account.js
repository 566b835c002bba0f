// Account settings in the test client (README "Account lifecycle"): download everything the server
// holds about you (GET /user/me/export) and delete the account (DELETE /user/me; a permanent account
// confirms with its password). Hooks: window.__napalmStub and the napalm:* events of app.js.

import { $, el } from "./ui.js";

const stub = window.__napalmStub;

const toggle = el("button", { id: "account-open", type: "button", class: "link", "aria-expanded": "false",
  "aria-controls": "account-panel" }, "Account");
toggle.hidden = true;
$("logout").before(toggle);

const panel = el("section", { id: "account-panel", class: "notice", "aria-labelledby": "account-title" });
const title = el("h2", { id: "account-title", tabindex: "-1" }, "Your account");
panel.hidden = true;
const exportBtn = el("button", { id: "account-export", type: "button" }, "Download my data");
const exportLink = el("a", { id: "account-export-link", download: "napalm-export.json" }, "Save napalm-export.json");
exportLink.hidden = true;
const exportRow = el("div", { class: "row" });
exportRow.append(exportBtn, exportLink);

const pwLabel = el("label", { for: "account-password" }, "Password (needed to delete a linked account)");
const pw = el("input", { id: "account-password", type: "password", autocomplete: "current-password" });
const pwRow = el("div", { class: "row" });
pwRow.append(pwLabel, pw);
const deleteBtn = el("button", { id: "account-delete", type: "button", class: "danger" }, "Delete my account");
const confirmBtn = el("button", { id: "account-delete-confirm", type: "button", class: "danger" },
  "Yes, delete my account and everything in it");
confirmBtn.hidden = true;
const deleteRow = el("div", { class: "row" });
deleteRow.append(deleteBtn, confirmBtn);
const status = el("p", { id: "account-status", role: "status" });

panel.append(title,
  el("p", { class: "muted" }, "Your data: everything this server keeps about you, as a JSON file (links to your media expire after a few minutes)."),
  exportRow,
  el("p", { class: "muted" }, "Deleting removes your profile, selfie, intro video, sessions and history. Payments, bans and reports against you are kept."),
  pwRow, deleteRow, status);
document.querySelector("main").prepend(panel);

toggle.addEventListener("click", () => {
  panel.hidden = !panel.hidden;
  toggle.setAttribute("aria-expanded", String(!panel.hidden));
  if (!panel.hidden) title.focus();
});

let exportUrl = null;
exportBtn.addEventListener("click", async () => {
  exportBtn.disabled = true;
  status.textContent = "Preparing your data…";
  try {
    const res = await stub.api("/user/me/export");
    if (!res.ok) { status.textContent = res.data.error || `Export failed (${res.status})`; return; }
    if (exportUrl) URL.revokeObjectURL(exportUrl);
    exportUrl = URL.createObjectURL(new Blob([JSON.stringify(res.data, null, 2)], { type: "application/json" }));
    exportLink.href = exportUrl;
    exportLink.hidden = false;
    window.__napalmExport = res.data;  // for tests
    status.textContent = `Your data is ready (${(res.data.callHistory || []).length} calls, ${(res.data.media.objects || []).length} media files).`;
  } finally { exportBtn.disabled = false; }
});

deleteBtn.addEventListener("click", () => {
  confirmBtn.hidden = false;
  confirmBtn.focus();
  status.textContent = "This cannot be undone.";
});

confirmBtn.addEventListener("click", async () => {
  confirmBtn.disabled = true;
  try {
    const body = pw.value ? { password: pw.value } : {};
    const res = await stub.api("/user/me", { method: "DELETE", body });
    if (!res.ok) {
      status.textContent = res.data.error === "Password required" ? "Enter your password first." : (res.data.error || `Deletion failed (${res.status})`);
      return;
    }
    pw.value = "";
    stub.signOut("Your account has been deleted.");
  } finally { confirmBtn.disabled = false; confirmBtn.hidden = true; }
});

function signedIn(me) {
  toggle.hidden = false;
  pwRow.hidden = !me || me.accountType !== "permanent";
}
window.addEventListener("napalm:signedin", (ev) => signedIn(ev.detail));
window.addEventListener("napalm:signedout", () => {
  toggle.hidden = true; panel.hidden = true; exportLink.hidden = true; status.textContent = "";
});
if (window.__napalm && window.__napalm.me) signedIn(window.__napalm.me);
