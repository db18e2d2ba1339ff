// Fleet console: the credentials page. Set, check, push and delete are
// API calls (Console.api); secrets go from the form to the API and are
// cleared from the form at once, success or not. Nothing here writes a
// secret into the page.
"use strict";

(() => {
  const $ = (sel) => document.querySelector(sel);
  const enc = encodeURIComponent;
  const tenant = () => $("#cred-form")?.dataset.tenant || "";
  const val = (id) => ($("#" + id)?.value || "").trim();

  // showKind shows the fields of the chosen kind.
  function showKind() {
    const kind = $("#cred-kind").value;
    for (const f of document.querySelectorAll(".kind-fields")) f.hidden = !f.dataset.kinds.split(" ").includes(kind);
    const reg = $("#cred-registry");
    if (kind === "dockerhub" && !reg.value) reg.value = "docker.io";
    if (kind === "gcr" && !reg.value) reg.placeholder = "europe-docker.pkg.dev/project";
    const pw = document.querySelector('label[for="cred-password"]');
    pw.textContent = kind === "dockerhub" ? "Access token" : "Password or token";
  }

  // credential builds the protocol Credential (protojson) of the form.
  function credential() {
    const kind = $("#cred-kind").value;
    const c = { registry: val("cred-registry") };
    if (kind === "basic" || kind === "dockerhub") c.basic = { username: val("cred-username"), password: $("#cred-password").value };
    if (kind === "gcr") c.basic = { username: "_json_key", password: $("#cred-json-key").value };
    if (kind === "ecr") c.ecr = { region: val("cred-ecr-region"), accessKeyId: val("cred-ecr-key"), secretAccessKey: $("#cred-ecr-secret").value };
    if (kind === "anonymous") c.anonymous = {};
    if (val("cred-ca")) c.caCertificate = $("#cred-ca").value;
    if ($("#cred-require-tls").checked) c.requireTls = true;
    return c;
  }

  // clearSecrets empties every password input of the page.
  function clearSecrets() {
    document.querySelectorAll('input[type="password"]').forEach((e) => { e.value = ""; });
  }

  async function save(ev) {
    ev.preventDefault();
    const form = $("#cred-form"), out = $("#cred-result");
    Ops.clearErrors(form);
    out.textContent = "";
    const body = { credential: credential() };
    clearSecrets(); // the request holds them now; the page no longer does
    if ($("#cred-kind").value === "ecr" && $("#cred-issue-tokens").checked) body.issueTokens = true;
    if (val("cred-check-image")) body.checkImage = val("cred-check-image");
    $("#cred-save").disabled = true;
    try {
      const v = await Console.api("PUT", "/v1/tenants/" + enc(tenant()) + "/credentials", body);
      out.className = "result notice";
      out.textContent = "Stored the " + v.kind + " credential for " + v.registry + " (fingerprint " + (v.fingerprint || "–") + ").";
      const kind = $("#cred-kind").value;
      form.reset(); // a stored credential leaves nothing in the form
      $("#cred-kind").value = kind;
      showKind();
      refresh();
    } catch (err) {
      out.className = "result";
      Ops.showError(form, err);
    } finally {
      body.credential = null;
      $("#cred-save").disabled = false;
    }
  }

  async function check(ev) {
    ev.preventDefault();
    const form = $("#check-form"), out = $("#check-result");
    Ops.clearErrors(form);
    out.replaceChildren();
    $("#check-btn").disabled = true;
    try {
      const r = await Console.api("POST", "/v1/tenants/" + enc(tenant()) + "/check-registry", { image: val("check-image") });
      const dl = Ops.el("dl", "kv");
      const row = (k, v) => { if (v === undefined || v === "") return; dl.append(Ops.el("dt", "", k)); const dd = Ops.el("dd"); if (v instanceof Node) dd.append(v); else dd.textContent = v; dl.append(dd); };
      row("Result", Ops.badge(r.ok ? "OK" : (r.code || "FAILED")));
      row("Image", r.image);
      row("Credential", r.registry || "none (anonymous)");
      for (const [k, v] of Object.entries(r.check || {})) row(k, Ops.checkValue(k, v));
      row("Message", r.message);
      out.append(dl);
      refresh();
    } catch (err) {
      Ops.showError(form, err);
    } finally {
      $("#check-btn").disabled = false;
    }
  }

  async function push(ev) {
    ev.preventDefault();
    const form = $("#push-form"), out = $("#push-result");
    Ops.clearErrors(form);
    out.replaceChildren();
    const t = Ops.target(form);
    t.tenant = tenant();
    $("#push-btn").disabled = true;
    try {
      const b = await Console.api("POST", "/v1/tenants/" + enc(tenant()) + "/credentials/push", { target: t, registry: $("#push-registry").value });
      const n = (b.commands || []).length;
      const a = Ops.el("a", "", "follow batch " + b.id);
      a.href = "/commands?batch=" + enc(b.id);
      out.className = "result notice";
      out.append("Sent to " + n + " gateway" + (n === 1 ? "" : "s") + ", sealed to each: ", a);
      for (const w of b.warnings || []) out.append(Ops.el("p", "warning", "Warning: " + w));
    } catch (err) {
      Ops.showError(form, err);
    } finally {
      $("#push-btn").disabled = false;
    }
  }

  // del deletes a credential on a second click: the first asks.
  async function del(btn) {
    if (btn.dataset.confirm !== "yes") {
      btn.dataset.confirm = "yes";
      btn.textContent = "Really delete?";
      btn.setAttribute("aria-label", "Confirm: delete the credential for " + btn.dataset.delete);
      setTimeout(() => { btn.dataset.confirm = ""; btn.textContent = "Delete"; btn.removeAttribute("aria-label"); }, 5000);
      return;
    }
    btn.disabled = true;
    try {
      await Console.api("DELETE", "/v1/tenants/" + enc(tenant()) + "/credentials/" + btn.dataset.delete.split("/").map(enc).join("/"));
      refresh();
    } catch (err) {
      btn.disabled = false;
      Ops.showError($("#list-error").parentElement, err);
    }
  }

  // count writes "matches N gateways" for the push target; only the
  // latest count is written.
  let counting = 0;
  const count = Ops.debounce(async () => {
    const out = $("#match"), form = $("#push-form"), n = ++counting;
    if (!out || !form) return;
    const t = Ops.target(form);
    t.tenant = tenant();
    let text = "";
    try { text = (await Ops.matches(t)).text; } catch (err) { text = err.message; }
    if (n === counting) out.textContent = text;
  }, 400);

  let refresh = () => {};

  document.addEventListener("DOMContentLoaded", () => {
    if (!$("#cred-form")) return;
    refresh = Ops.live(["credential."], ["section.cred-list", "#push-registry"]);
    const tin = $("#push-form #target-tenant");
    if (tin) tin.readOnly = true;
    $("#cred-kind").addEventListener("change", showKind);
    $("#cred-form").addEventListener("submit", save);
    $("#check-form").addEventListener("submit", check);
    $("#push-form").addEventListener("submit", push);
    $("#push-form").addEventListener("input", count);
    $("#push-form").addEventListener("change", count);
    document.addEventListener("click", (ev) => { const b = ev.target.closest("button[data-delete]"); if (b) del(b); });
    document.addEventListener("ops:refreshed", () => { $("#push-btn").disabled = !$("#push-registry").value; });
    showKind();
    count();
  });
})();
