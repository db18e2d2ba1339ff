// Fleet console: the deploy page. The YAML goes to the console's
// /deploy/check (a dry run: targets and registry check) and /deploy/send;
// the batch is then followed through the API until every gateway answered.
"use strict";

(() => {
  const $ = (sel) => document.querySelector(sel);
  let batchID = "", following = null;
  const maxRows = 500;

  const composing = () => $("#format-compose")?.checked;

  function body() {
    const form = $("#deploy-form");
    const b = { target: Ops.target(form), yaml: $("#spec").value, skipRegistryCheck: $("#skip-check").checked };
    if (composing()) {
      b.compose = true;
      b.name = $("#compose-name").value.trim();
      b.revision = parseInt($("#compose-revision").value, 10) || 0;
      b.env = {};
      for (const line of $("#compose-env").value.split("\n")) {
        const i = line.indexOf("=");
        if (line.trim() && i > 0) b.env[line.slice(0, i).trim()] = line.slice(i + 1);
      }
    }
    return b;
  }

  // format switches the editor between a deployment spec and a Compose
  // file, keeping what was typed in each.
  const texts = { spec: null, compose: null };
  function format() {
    const compose = composing(), ta = $("#spec");
    texts[compose ? "spec" : "compose"] = ta.value;
    ta.value = texts[compose ? "compose" : "spec"] ?? (compose ? $("#compose-example").content.textContent : ta.value);
    $("#compose-fields").hidden = !compose;
    $("#spec-help").hidden = compose;
    $("#spec-label").textContent = compose ? "YAML: a Compose file (compose.yaml, docker-compose.yml)" : "YAML: a protocol DeploymentSpec, as cloud-sim deploy -f reads it";
  }

  // upload reads a chosen Compose file into the editor.
  async function upload(ev) {
    const f = ev.target.files?.[0];
    if (f) $("#spec").value = await f.text();
  }

  // count writes "matches N gateways" for the target fields; only the
  // latest count is written, whichever answer comes last.
  let counting = 0;
  const count = Ops.debounce(async () => {
    const out = $("#match"), n = ++counting;
    let text = "", failed = false;
    try {
      text = (await Ops.matches(Ops.target($("#deploy-form")))).text;
    } catch (err) {
      text = err.message; failed = true;
    }
    if (n !== counting) return;
    out.textContent = text;
    out.classList.toggle("error-text", failed);
  }, 400);

  // showCheck writes a dry run: the gateways and the registry's answer.
  function showCheck(d) {
    const box = $("#check-body");
    box.replaceChildren();
    const n = d.count || 0;
    const p = Ops.el("p", "check-targets", "Would deploy to " + n + " gateway" + (n === 1 ? "" : "s") + " of " + d.tenant + ": ");
    const ids = d.gateways || [];
    p.append(Ops.el("span", "mono", ids.slice(0, 20).join(", ") + (ids.length > 20 ? ", … (" + (ids.length - 20) + " more)" : "")));
    box.append(p);
    // An application's services each have their image's check.
    const checks = d.checks?.length ? d.checks : (d.check ? [d.check] : []);
    if (!checks.length) box.append(Ops.el("p", "muted", "Registry check skipped."));
    for (const c of checks) {
      const dl = Ops.el("dl", "kv");
      const row = (k, v) => { if (v === undefined || v === "" || v === null) return; dl.append(Ops.el("dt", "", k)); const dd = Ops.el("dd"); if (v instanceof Node) dd.append(v); else dd.textContent = v; dl.append(dd); };
      row("Registry check", Ops.badge(c.ok ? "OK" : (c.code || "FAILED")));
      row("Image", c.image);
      row("Credential", c.registry || "none (anonymous)");
      for (const [k, v] of Object.entries(c.check || {})) row(k, Ops.checkValue(k, v));
      row("Message", c.message);
      box.append(dl);
    }
    for (const w of d.warnings || []) box.append(Ops.el("p", "warning", "Warning: " + w));
    $("#check-result").hidden = false;
  }

  async function check() {
    const form = $("#deploy-form");
    Ops.clearErrors(form);
    $("#check-btn").disabled = true;
    try {
      showCheck(await Ops.post("/deploy/check", body()));
    } catch (err) {
      $("#check-result").hidden = true;
      Ops.showError(form, err);
    } finally {
      $("#check-btn").disabled = false;
    }
  }

  async function send(ev) {
    ev.preventDefault();
    const form = $("#deploy-form");
    Ops.clearErrors(form);
    $("#deploy-btn").disabled = true;
    try {
      // The dry run first: its targets and registry check are on the page
      // before anything is sent.
      const req = body();
      showCheck(await Ops.post("/deploy/check", req));
      const b = await Ops.post("/deploy/send", req);
      batchID = b.id;
      showBatch(b);
      follow();
    } catch (err) {
      Ops.showError(form, err);
    } finally {
      $("#deploy-btn").disabled = false;
    }
  }

  // phase reads the deployment's phase from a command's final reply.
  function phase(c) {
    return c.reply?.status?.phase || "";
  }

  // showBatch writes the batch's per-gateway outcomes.
  function showBatch(b) {
    const cmds = (b.commands || []).filter((c) => c.verb === "deploy");
    const counts = {};
    for (const c of cmds) counts[c.state] = (counts[c.state] || 0) + 1;
    const done = cmds.filter((c) => !["PENDING", "ACCEPTED"].includes(c.state)).length;
    const summary = $("#outcome-summary");
    summary.replaceChildren(Ops.el("strong", "", (b.done ? "Done: " : "In progress: ") + done + " of " + cmds.length + " gateways answered. "));
    for (const [s, n] of Object.entries(counts).sort()) { summary.append(Ops.badge(s), " " + n + " "); }
    const link = Ops.el("a", "", "batch " + b.id);
    link.href = "/commands?batch=" + encodeURIComponent(b.id);
    summary.append(" (", link, ")");
    for (const w of b.warnings || []) summary.append(Ops.el("p", "warning", "Warning: " + w));
    const bar = $("#outcome-bar");
    bar.replaceChildren();
    for (const [s, n] of Object.entries(counts)) {
      const seg = Ops.el("span", Ops.stateClass(s));
      seg.style.width = (100 * n / Math.max(1, cmds.length)) + "%"; // CSSOM: allowed by the CSP
      seg.title = s + ": " + n;
      bar.append(seg);
    }
    // The gateways that did not succeed first; at most maxRows rows (the
    // batch's page on /commands lists them all).
    const rank = (c) => (c.state === "SUCCEEDED" ? 2 : ["PENDING", "ACCEPTED"].includes(c.state) ? 1 : 0);
    cmds.sort((a, b) => rank(a) - rank(b) || a.gateway.localeCompare(b.gateway, undefined, { numeric: true }));
    $("#outcome-table tbody").replaceChildren(...cmds.slice(0, maxRows).map(row));
    if (cmds.length > maxRows) summary.append(Ops.el("p", "muted small", "The first " + maxRows + " of " + cmds.length + " gateways, those that did not succeed first; the batch's page lists all."));
    $("#outcome").hidden = false;
    $("#outcome").dataset.done = b.done ? "true" : "false";
  }

  function row(c) {
    const tr = document.createElement("tr");
    tr.dataset.gateway = c.gateway;
    const gw = Ops.el("a", "", c.gateway);
    gw.href = "/gateways/" + encodeURIComponent(c.tenant) + "/" + encodeURIComponent(c.gateway);
    const th = Ops.el("th");
    th.scope = "row";
    th.append(gw);
    const cell = (x) => { const td = Ops.el("td"); if (x instanceof Node) td.append(x); else td.textContent = x || ""; return td; };
    tr.append(th, cell(Ops.badge(c.state)), cell(phase(c) ? Ops.badge(phase(c)) : ""), cell(c.code),
      cell((c.field ? c.field + ": " : "") + (c.message || "")), cell(Ops.time(c.finishedAt)));
    return tr;
  }

  // follow polls the batch every second (sooner after a command event)
  // until every gateway answered.
  function follow() {
    clearTimeout(following);
    const id = batchID;
    const tick = async () => {
      if (id !== batchID) return;
      try {
        const b = await Console.api("GET", "/v1/batches/" + encodeURIComponent(id));
        showBatch(b);
        if (b.done) return;
      } catch { /* shown by the next tick */ }
      following = setTimeout(tick, 1000);
    };
    tick();
  }

  document.addEventListener("DOMContentLoaded", () => {
    const form = $("#deploy-form");
    if (!form) return;
    form.addEventListener("input", (ev) => { if (ev.target.closest("#target-tenant, fieldset.target")) count(); });
    form.addEventListener("change", (ev) => { if (ev.target.name === "target-kind") count(); });
    form.addEventListener("focusin", (ev) => {
      const row = ev.target.closest(".target-row");
      const radio = row?.querySelector('input[type="radio"]');
      if (radio && ev.target.type === "text" && !radio.checked) { radio.checked = true; count(); }
    });
    $("#check-btn").addEventListener("click", check);
    for (const r of form.querySelectorAll('input[name="format"]')) r.addEventListener("change", format);
    $("#compose-upload").addEventListener("change", upload);
    form.addEventListener("submit", send);
    Console.on(["command."], () => { if (batchID && $("#outcome").dataset.done !== "true") follow(); });
    count();
  });
})();
