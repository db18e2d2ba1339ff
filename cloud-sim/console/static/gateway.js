// Fleet console: one gateway's page. Actions on its deployments and
// rebirth; the page refreshes on changes of this gateway (and every 30 s,
// for the heartbeat chart). The last action's outcome survives a refresh.
"use strict";

(() => {
  let outcome = null; // {text, cls, batch}

  const page = () => document.getElementById("gateway");

  function draw() {
    const at = document.getElementById("action-result");
    if (!at || !outcome) return;
    const p = document.createElement("p");
    p.className = outcome.cls;
    p.setAttribute("role", "status");
    p.textContent = outcome.text + " ";
    if (outcome.batch) {
      const a = document.createElement("a");
      a.href = "/commands?batch=" + encodeURIComponent(outcome.batch);
      a.textContent = "Batch " + outcome.batch;
      p.append(a);
    }
    at.replaceChildren(p);
  }

  function command(action, deployment) {
    if (action === "rebirth") return { rebirth: {} };
    return { [action]: { name: deployment } };
  }

  async function act(btn) {
    const g = page();
    const action = btn.dataset.action, dep = btn.dataset.deployment || "";
    const what = action + (dep ? " " + dep : "");
    if (action === "remove" && !confirm("Remove deployment " + dep + " from " + g.dataset.tenant + "/" + g.dataset.id + "? Its container is deleted.")) return;
    btn.disabled = true;
    outcome = { text: what + ": sent, waiting for the gateway…", cls: "notice pending" };
    draw();
    try {
      let v = await Console.api("POST", "/v1/commands", { target: { tenant: g.dataset.tenant, gateways: [g.dataset.id] }, command: command(action, dep), wait: "10s" });
      if (!v.done) v = await Console.api("GET", "/v1/batches/" + encodeURIComponent(v.id) + "?wait=20s");
      const c = (v.commands || [])[0] || {};
      const state = c.state || Object.keys(v.counts || {}).join(", ");
      outcome = { text: what + ": " + state + (c.message ? " — " + c.message : ""), cls: v.failed ? "error" : (v.done ? "notice" : "notice pending"), batch: v.id };
    } catch (err) {
      outcome = { text: what + ": " + err.message + (err.code ? " (" + err.code + ")" : ""), cls: "error" };
    } finally {
      btn.disabled = false;
    }
    draw();
  }

  document.addEventListener("click", (ev) => {
    const btn = ev.target.closest?.("button.act");
    if (btn && page()) act(btn);
  });
  document.addEventListener("console:refreshed", draw);
  document.addEventListener("DOMContentLoaded", () => {
    const g = page();
    if (!g) return;
    const tenant = g.dataset.tenant, id = g.dataset.id;
    Console.on(["gateway.", "deployment.", "command.", "event", "credential."], (ch) => {
      if (ch.kind === "lagged" || (ch.tenant === tenant && (!ch.gateway || ch.gateway === id))) Console.refresh();
    });
    setInterval(Console.refresh, 30000);
  });
})();
