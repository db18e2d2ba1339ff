// Fleet console: the events page. The server lists the recent changes
// that pass the filters; this adds the new ones from the event stream
// that pass them too, newest first, keeping at most data-max rows.
"use strict";

(() => {
  const ok = ["ONLINE", "RUNNING", "SUCCEEDED", "HEALTHY", "OK", "ACTIVE"];
  const bad = ["FAILED", "REJECTED", "UNDELIVERED", "UNHEALTHY", "ABORTED", "TIMED_OUT", "ERROR", "OFFLINE"];
  const warn = ["STALE", "PAUSED", "PENDING", "ACCEPTED", "PULLING", "STARTING", "ROLLING_BACK", "ROLLED_BACK", "WARNING", "IN_PROGRESS", "QUEUED"];

  // stateClass is console/funcs.go's stateClass.
  function stateClass(s) {
    const u = String(s).toUpperCase();
    return ok.includes(u) ? "ok" : bad.includes(u) ? "bad" : warn.includes(u) ? "warn" : "idle";
  }

  function badge(s) {
    const b = document.createElement("span");
    b.className = "badge " + stateClass(s);
    b.textContent = s;
    return b;
  }

  // passes applies the page's filters as GET /v1/changes does.
  function passes(f, ch) {
    if (f.tenant && ch.tenant !== f.tenant) return false;
    if (f.gateway && ch.gateway !== f.gateway) return false;
    if (f.kind && ch.kind !== f.kind && !ch.kind.startsWith(f.kind + ".")) return false;
    if (f.severity && !f.severity.split(",").includes(ch.severity || "info")) return false;
    return true;
  }

  const pad = (n) => String(n).padStart(2, "0");

  // row builds the same row as the "change-row" template.
  function row(ch) {
    const tr = document.createElement("tr");
    const sev = ch.severity || "info";
    tr.className = "sev-" + sev + " fresh";
    tr.dataset.kind = ch.kind;
    const at = new Date(ch.at || Date.now());
    const td = (...nodes) => { const c = document.createElement("td"); c.append(...nodes); tr.append(c); return c; };
    const time = document.createElement("time");
    time.dateTime = at.toISOString();
    time.textContent = pad(at.getUTCHours()) + ":" + pad(at.getUTCMinutes()) + ":" + pad(at.getUTCSeconds());
    td(time).className = "when";
    td(badge(sev));
    const code = document.createElement("code");
    code.textContent = ch.kind;
    td(code);
    if (ch.gateway) {
      const a = document.createElement("a");
      a.href = "/gateways/" + encodeURIComponent(ch.tenant) + "/" + encodeURIComponent(ch.gateway);
      a.textContent = ch.tenant + "/" + ch.gateway;
      td(a);
    } else {
      td(ch.tenant || "–");
    }
    const what = td();
    if (ch.deployment) what.append(ch.deployment + (ch.revision ? " r" + ch.revision : "") + " ");
    if (ch.phase) what.append(badge(ch.phase), " ");
    if (ch.state) what.append(badge(ch.state), " ");
    if (ch.batch) {
      const a = document.createElement("a");
      a.href = "/commands?batch=" + encodeURIComponent(ch.batch);
      a.textContent = "batch " + ch.batch;
      what.append(a);
    }
    td(ch.message || "").className = "msg";
    return tr;
  }

  document.addEventListener("DOMContentLoaded", () => {
    const form = document.getElementById("event-filters");
    const body = document.getElementById("change-rows");
    if (!form || !body) return;
    const f = form.dataset, max = Number(f.max) || 500;
    const count = document.getElementById("event-count");
    Console.on(["*"], (ch) => {
      if (ch.kind === "lagged" || !passes(f, ch)) return;
      body.querySelector("tr.empty-row")?.remove();
      body.prepend(row(ch));
      while (body.rows.length > max) body.lastElementChild.remove();
      if (count) count.textContent = body.rows.length + " shown";
    });
  });
})();
