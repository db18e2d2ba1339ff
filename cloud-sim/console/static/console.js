// Fleet console: the shared script. Pages are rendered by the server; this
// file calls the API for actions (with the session's CSRF token) and keeps
// live pages current from the API's event stream. No inline script: the
// Content-Security-Policy forbids it.
"use strict";

const Console = (() => {
  const csrf = () => document.querySelector('meta[name="csrf-token"]')?.content || "";

  // APIError is an error reply of the API: its message, the field it
  // names and its code.
  class APIError extends Error {
    constructor(status, body) {
      super(body.error || ("HTTP " + status));
      this.status = status; this.field = body.field || ""; this.code = body.code || "";
    }
  }

  // api calls the HTTP API as the logged-in browser: the session cookie
  // goes along; a change carries the CSRF token.
  async function api(method, path, body) {
    const opts = { method, headers: { "Accept": "application/json" }, credentials: "same-origin" };
    if (method !== "GET") opts.headers["X-CSRF-Token"] = csrf();
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    const resp = await fetch(path, opts);
    const text = await resp.text();
    let data = {};
    try { data = text ? JSON.parse(text) : {}; } catch { data = { error: text }; }
    if (!resp.ok) throw new APIError(resp.status, data);
    return data;
  }

  // Every kind the API's event stream names (event: {kind}); EventSource
  // delivers named events only to listeners of that name.
  const kinds = ["gateway.online", "gateway.offline", "gateway.refused", "gateway.assigned", "gateway.deprovisioned",
    "deployment.status", "deployment.removed", "command.accepted", "command.finished", "batch.created",
    "credential.set", "credential.deleted", "event", "rollout.created", "rollout.gateway", "rollout.running",
    "rollout.paused", "rollout.succeeded", "rollout.failed", "rollout.aborted", "rollout.canceled",
    "rollout.superseded", "rollout.work.refused", "lagged"];

  let source = null;
  const handlers = [];

  // on calls fn(change) for every change whose kind starts with one of
  // prefixes ("*" for all), opening the event stream on first use.
  function on(prefixes, fn) {
    handlers.push({ prefixes, fn });
    if (source) return;
    const params = new URLSearchParams();
    const tenant = document.body.dataset.tenant;
    if (tenant) params.set("tenant", tenant);
    // A page that lists changes starts the stream where its list ended
    // (data-stream-after, GET /v1/changes' cursor): the changes made
    // while it loaded come first. The browser resumes a stream that
    // reconnects after the last event it got (Last-Event-ID).
    const after = document.querySelector("[data-stream-after]")?.dataset.streamAfter;
    if (after) params.set("after", after);
    source = new EventSource("/v1/events" + (params.toString() ? "?" + params : ""));
    const status = document.getElementById("live-status");
    // A live page, which lists no changes but shows their effects, fetches
    // its content once more when the stream opens: what changed between
    // its rendering and the stream's start (or while it reconnected).
    source.onopen = () => {
      if (status) status.textContent = "Live";
      if (document.body.dataset.live) refresh();
    };
    source.onerror = () => { if (status) status.textContent = "Reconnecting…"; };
    for (const k of kinds) {
      source.addEventListener(k, (ev) => {
        let change = {};
        try { change = JSON.parse(ev.data); } catch { return; }
        change.kind = change.kind || k;
        for (const h of handlers) {
          if (h.prefixes.some((p) => p === "*" || k === "lagged" || change.kind.startsWith(p))) h.fn(change);
        }
      });
    }
  }

  // keep notes what the operator changed in main (form controls with an
  // id: typed text, ticked boxes, choices) and which <details> are open,
  // for restore to put back after a refresh.
  function keep(main) {
    const controls = [...main.querySelectorAll("input[id], textarea[id], select[id]")].filter((e) =>
      e.type === "checkbox" || e.type === "radio" ? e.checked !== e.defaultChecked
        : e.tagName === "SELECT" ? [...e.options].some((o) => o.selected !== o.defaultSelected)
        : e.value !== e.defaultValue).map((e) => ({ id: e.id, value: e.value, checked: e.checked }));
    const open = [...main.querySelectorAll("details[open][id]")].map((d) => d.id);
    return { controls, open };
  }

  function restore(kept) {
    for (const c of kept.controls) {
      const e = document.getElementById(c.id);
      if (!e) continue;
      if (e.type === "checkbox" || e.type === "radio") e.checked = c.checked; else e.value = c.value;
    }
    for (const id of kept.open) document.getElementById(id)?.setAttribute("open", "");
  }

  // refresh fetches this page's content again and swaps it in, at most
  // once a second; focus, what the operator typed or ticked, and the open
  // <details> stay as they were.
  // A change that arrives while a refresh is fetching (again) gets one
  // more refresh after it: the page rendered before the change may not
  // show it.
  let pending = null, fetching = false, again = false, last = 0;
  function refresh() {
    if (fetching) { again = true; return; }
    if (pending) return;
    const wait = Math.max(0, 1000 - (Date.now() - last));
    pending = setTimeout(async () => {
      last = Date.now();
      fetching = true;
      try {
        const resp = await fetch(location.href, { headers: { "X-Console-Fragment": "1" }, credentials: "same-origin" });
        if (resp.redirected || !resp.ok) return;
        const html = await resp.text();
        const main = document.getElementById("content");
        const active = document.activeElement?.id;
        const kept = keep(main);
        main.innerHTML = html;
        restore(kept);
        if (active) document.getElementById(active)?.focus();
        document.dispatchEvent(new CustomEvent("console:refreshed"));
      } finally {
        pending = null;
        fetching = false;
        if (again) { again = false; refresh(); }
      }
    }, wait);
  }

  // showError writes err next to the form field it names (an element with
  // data-field="<field>" inside form), else in the form's error slot.
  function showError(form, err) {
    form.querySelectorAll(".field-error").forEach((e) => e.remove());
    form.querySelectorAll("[aria-invalid]").forEach((e) => e.removeAttribute("aria-invalid"));
    const p = document.createElement("p");
    p.className = "field-error error";
    p.setAttribute("role", "alert");
    p.textContent = err.message + (err.code ? " (" + err.code + ")" : "");
    let at = err.field && [...form.querySelectorAll("[data-field]")].find((e) => err.field === e.dataset.field || err.field.startsWith(e.dataset.field + "."));
    if (at) {
      at.setAttribute("aria-invalid", "true");
      at.insertAdjacentElement("afterend", p);
    } else {
      (form.querySelector(".form-error") || form).prepend(p);
    }
  }

  // A page left for another closes its stream: a browser holds at most 6
  // connections to a host, and a stream kept by a page in the back-forward
  // cache would use one up each time.
  window.addEventListener("pagehide", () => { if (source) { source.close(); source = null; } });

  document.addEventListener("DOMContentLoaded", () => {
    const live = document.body.dataset.live;
    if (live) on(live.split(","), refresh);
  });

  return { api, on, refresh, showError, APIError };
})();
