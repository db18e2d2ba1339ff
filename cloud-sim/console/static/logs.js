// Fleet console: the gateway page's logs panel. A deployment's "Logs"
// button opens it; Show reads GET …/deployments/{name}/logs as an
// EventSource (tail, or follow), Stop closes the stream, which the API
// takes as the client going away: it cancels the follow on the gateway.
// The panel is kept across the page's live refreshes.
"use strict";

(() => {
  const maxLines = 5000; // the oldest go first
  let panel = null;      // the panel element, kept across refreshes
  let source = null;     // the open EventSource
  let deployment = "";

  const $ = (id) => document.getElementById(id);
  const page = () => $("gateway");

  function status(text, cls) {
    const s = $("logs-status");
    s.textContent = text;
    s.className = "small " + (cls || "muted");
  }

  function running(on) {
    $("logs-show").disabled = on;
    $("logs-stop").disabled = !on;
  }

  function append(text, cls) {
    const out = $("logs-output");
    const line = document.createElement("span");
    line.textContent = text + "\n";
    if (cls) line.className = cls;
    out.append(line);
    while (out.childElementCount > maxLines) out.firstElementChild.remove();
    if (out.scrollHeight - out.scrollTop - out.clientHeight < 80) out.scrollTop = out.scrollHeight;
  }

  function stop(text) {
    if (source) { source.close(); source = null; }
    running(false);
    if (text) status(text);
  }

  function dropNotice(d) {
    if (d.by === "gateway") return "— " + d.lines + " lines (" + d.bytes + " bytes) dropped here by the gateway's rate limit —";
    if (d.chunks && !d.lines) return "— " + d.chunks + " chunks of lines lost on the way here —";
    return "— " + d.lines + " lines (" + d.bytes + " bytes) dropped here: the page read too slowly —";
  }

  // check reads the form; a bad value is shown next to its field.
  function check(form) {
    form.querySelectorAll(".field-error").forEach((e) => e.remove());
    const q = new URLSearchParams();
    const service = $("logs-service").value.trim(), tail = $("logs-tail").value.trim(), since = $("logs-since").value.trim();
    const bad = (field, message) => { Console.showError(form, new Console.APIError(400, { error: message, field, code: "INVALID_ARGUMENT" })); return null; };
    if (service) {
      if (!/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/.test(service)) return bad("service", "Service: 1-63 characters of a-z 0-9 -, or empty for all");
      q.set("service", service);
    }
    if (tail) {
      if (!/^\d+$/.test(tail) || Number(tail) > 100000) return bad("tail", "Tail: a whole number of lines from 0 to 100000");
      q.set("tail", tail);
    }
    if (since) {
      const duration = /^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$/.test(since);
      if (!duration && !/^\d{4}-\d\d-\d\dT/.test(since)) return bad("since", "Since: a duration like 10m, or an RFC 3339 instant like 2026-12-01T10:00:00Z");
      q.set("since", since);
    }
    if ($("logs-follow").checked) q.set("follow", "true");
    return q;
  }

  function show(form) {
    const g = page();
    const q = check(form);
    if (!q || !g || !deployment) return;
    stop();
    if (g.dataset.online !== "true") {
      status(g.dataset.tenant + "/" + g.dataset.id + " is offline: its logs can be read once it is back online.", "error");
      return;
    }
    $("logs-output").replaceChildren();
    const path = "/v1/gateways/" + encodeURIComponent(g.dataset.tenant) + "/" + encodeURIComponent(g.dataset.id) +
      "/deployments/" + encodeURIComponent(deployment) + "/logs?" + q;
    const follow = q.get("follow") === "true";
    const es = new EventSource(path);
    source = es;
    let seen = false;
    running(true);
    status(follow ? "Following…" : "Reading…");
    es.addEventListener("line", (ev) => {
      seen = true;
      const l = JSON.parse(ev.data);
      append(l.at + " [" + l.service + "] " + l.stream + " " + l.text, l.stream === "stderr" ? "logs-stderr" : "");
    });
    es.addEventListener("dropped", (ev) => { seen = true; append(dropNotice(JSON.parse(ev.data)), "logs-notice"); });
    es.addEventListener("end", (ev) => {
      const e = JSON.parse(ev.data);
      const why = (e.code ? e.code + ": " : "") + (e.message || "");
      const ok = ["COMPLETE", "UNTIL", "CANCELED", "SUCCEEDED", "CONTAINER_GONE"].includes(e.reason);
      stop();
      status("Ended: " + e.reason + (why ? " — " + why : "") + (e.reason === "CONTAINER_GONE" ? " (the container was removed or replaced)" : ""), ok ? "muted" : "error");
    });
    // EventSource would reconnect, and so send another logs command: a
    // stream cut or refused is over.
    es.onerror = () => {
      if (source !== es) return;
      stop();
      status(seen ? "The stream was cut; Show reads again." : "The stream could not be opened: is the gateway online, and the values right?", "error");
    };
  }

  function open(name) {
    panel.hidden = false;
    if (name !== deployment) {
      stop();
      $("logs-output").replaceChildren();
      status("");
    }
    deployment = name;
    $("logs-deployment").textContent = name;
    show($("logs-form"));
    panel.scrollIntoView({ block: "nearest" });
  }

  document.addEventListener("click", (ev) => {
    const btn = ev.target.closest?.("button.logs-open");
    if (btn && panel) open(btn.dataset.logs);
    if (ev.target.id === "logs-stop") stop(deployment ? "Stopped." : "");
  });
  document.addEventListener("submit", (ev) => {
    if (ev.target.id !== "logs-form") return;
    ev.preventDefault();
    show(ev.target);
  });
  // A live refresh renders the panel anew: the one in use stays.
  document.addEventListener("console:refreshed", () => {
    const fresh = $("logs-panel");
    if (panel && fresh && fresh !== panel) fresh.replaceWith(panel);
  });
  document.addEventListener("DOMContentLoaded", () => { panel = $("logs-panel"); });
  window.addEventListener("pagehide", () => stop());
})();
