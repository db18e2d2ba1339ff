// Fleet console: the gateways page's bulk actions. The selection, the
// bulk form's values and the batches' outcomes live here, so a live
// refresh (which replaces the page's content) keeps them.
"use strict";

(() => {
  const selected = new Map(); // "tenant/id" → {tenant, id}
  const form = { action: "restart", deployment: "" };
  const batches = []; // {id, tenant, verb, counts, done, total, error}

  const key = (t, id) => t + "/" + id;
  const boxes = () => [...document.querySelectorAll("input.row-select")];

  // command is the protocol Command (protojson) for an action.
  function command(action, deployment) {
    if (action === "rebirth") return { rebirth: {} };
    return { [action]: { name: deployment } };
  }

  // restore puts the selection, the form and the outcomes back after the
  // page's content was replaced; a selected gateway no longer on the page
  // is dropped.
  function restore() {
    const onPage = new Set();
    for (const b of boxes()) {
      const k = key(b.dataset.tenant, b.dataset.id);
      onPage.add(k);
      b.checked = selected.has(k);
      b.closest("tr")?.classList.toggle("selected", b.checked);
    }
    for (const k of [...selected.keys()]) if (!onPage.has(k)) selected.delete(k);
    const action = document.getElementById("bulk-action");
    const dep = document.getElementById("bulk-deployment");
    if (action) action.value = form.action;
    if (dep) { dep.value = form.deployment; dep.disabled = form.action === "rebirth"; }
    update();
    drawBatches();
  }

  function update() {
    const n = selected.size;
    const count = document.getElementById("sel-count");
    if (count) count.textContent = n + " selected";
    const send = document.getElementById("bulk-send");
    if (send) send.disabled = n === 0;
    const all = document.getElementById("select-page");
    if (all) {
      const bs = boxes();
      all.checked = bs.length > 0 && bs.every((b) => b.checked);
      all.indeterminate = !all.checked && bs.some((b) => b.checked);
    }
  }

  function drawBatches() {
    const at = document.getElementById("bulk-result");
    if (!at) return;
    at.replaceChildren();
    for (const b of batches) {
      const div = document.createElement("div");
      div.className = "batch-outcome " + (b.error ? "error" : b.done ? (b.failed ? "bad" : "ok") : "warn");
      div.dataset.batch = b.id || "";
      const head = document.createElement("strong");
      head.textContent = b.verb + " · tenant " + b.tenant + " · " + b.total + " gateway" + (b.total === 1 ? "" : "s") + ": ";
      div.append(head);
      const state = document.createElement("span");
      state.className = "batch-counts";
      if (b.error) {
        state.textContent = b.error;
      } else {
        const parts = Object.keys(b.counts || {}).sort().map((s) => s + " " + b.counts[s]);
        state.textContent = (parts.join(" · ") || "sent") + (b.done ? " — done" : " — waiting…");
      }
      div.append(state);
      if (b.id) {
        const a = document.createElement("a");
        a.href = "/commands?batch=" + encodeURIComponent(b.id);
        a.textContent = "Batch " + b.id;
        div.append(" ", a);
      }
      at.append(div);
    }
  }

  // follow asks for the batch's outcome until every gateway answered or a
  // minute passed.
  async function follow(b) {
    const until = Date.now() + 60000;
    while (!b.done && Date.now() < until) {
      try {
        const v = await Console.api("GET", "/v1/batches/" + encodeURIComponent(b.id) + "?wait=2s");
        b.counts = v.counts || {}; b.done = v.done; b.failed = v.failed;
      } catch (err) {
        b.error = err.message;
        break;
      }
      drawBatches();
    }
    drawBatches();
  }

  async function send(ev) {
    ev.preventDefault();
    const f = ev.target;
    const action = form.action, dep = form.deployment.trim();
    if (action !== "rebirth" && !dep) {
      Console.showError(f, { message: "Give the name of the deployment to " + action + ".", field: "command" });
      return;
    }
    if (action === "remove" && !confirm("Remove deployment " + dep + " from " + selected.size + " gateway(s)? Its container is deleted.")) return;
    f.querySelectorAll(".field-error").forEach((e) => e.remove());
    const byTenant = new Map();
    for (const g of selected.values()) {
      if (!byTenant.has(g.tenant)) byTenant.set(g.tenant, []);
      byTenant.get(g.tenant).push(g.id);
    }
    batches.length = 0;
    const sends = [];
    for (const [tenant, ids] of byTenant) {
      const b = { tenant, verb: action + (dep && action !== "rebirth" ? " " + dep : ""), total: ids.length, counts: {}, done: false };
      batches.push(b);
      sends.push(Console.api("POST", "/v1/commands", { target: { tenant, gateways: ids }, command: command(action, dep), wait: "2s" })
        .then((v) => { b.id = v.id; b.counts = v.counts || {}; b.done = v.done; b.failed = v.failed; drawBatches(); return follow(b); })
        .catch((err) => { b.error = err.message + (err.field ? " (" + err.field + ")" : ""); drawBatches(); }));
    }
    drawBatches();
    await Promise.all(sends);
  }

  document.addEventListener("change", (ev) => {
    const t = ev.target;
    if (t.classList?.contains("row-select")) {
      const k = key(t.dataset.tenant, t.dataset.id);
      if (t.checked) selected.set(k, { tenant: t.dataset.tenant, id: t.dataset.id }); else selected.delete(k);
      t.closest("tr")?.classList.toggle("selected", t.checked);
      update();
    } else if (t.id === "select-page") {
      for (const b of boxes()) {
        b.checked = t.checked;
        const k = key(b.dataset.tenant, b.dataset.id);
        if (t.checked) selected.set(k, { tenant: b.dataset.tenant, id: b.dataset.id }); else selected.delete(k);
        b.closest("tr")?.classList.toggle("selected", t.checked);
      }
      update();
    } else if (t.id === "bulk-action") {
      form.action = t.value;
      const dep = document.getElementById("bulk-deployment");
      if (dep) dep.disabled = t.value === "rebirth";
    }
  });
  // edited holds what the operator typed in the filters and has not yet
  // applied: a live refresh renders them from the URL again.
  const edited = new Map();
  document.addEventListener("input", (ev) => {
    const t = ev.target;
    if (t.id === "bulk-deployment") form.deployment = t.value;
    else if (t.closest?.("form.filters") && t.id) edited.set(t.id, t.value);
  });
  document.addEventListener("console:refreshed", () => {
    for (const [id, v] of edited) {
      const el = document.getElementById(id);
      if (el) el.value = v;
    }
  });
  document.addEventListener("submit", (ev) => {
    if (ev.target.id === "bulk") send(ev);
  });
  document.addEventListener("console:refreshed", restore);
  document.addEventListener("DOMContentLoaded", restore);
})();
