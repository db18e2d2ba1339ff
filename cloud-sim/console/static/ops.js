// Fleet console: what the deploy, commands and credentials pages share.
// Actions are API calls (Console.api); the deploy page's YAML goes to the
// console's /deploy/check and /deploy/send, which convert it and call the
// API. No inline script: the Content-Security-Policy forbids it.
"use strict";

const Ops = (() => {
  // post sends body as JSON to a console endpoint with the session's CSRF
  // token; an error keeps the API's field and the YAML line it points at.
  async function post(path, body) {
    const csrf = document.querySelector('meta[name="csrf-token"]')?.content || "";
    const resp = await fetch(path, {
      method: "POST", credentials: "same-origin",
      headers: { "Accept": "application/json", "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body),
    });
    const text = await resp.text();
    let data = {};
    try { data = text ? JSON.parse(text) : {}; } catch { data = { error: text }; }
    if (!resp.ok) {
      const err = new Console.APIError(resp.status, data);
      err.line = data.line || 0; err.path = data.path || ""; err.errors = data.errors || [];
      throw err;
    }
    return data;
  }

  // target reads a target form (the "ops-target" template) inside root:
  // {tenant, all | selector | group | gateways}.
  function target(root) {
    const val = (id) => (root.querySelector("#" + id)?.value || "").trim();
    const t = { tenant: val("target-tenant") };
    const kind = root.querySelector('input[name="target-kind"]:checked')?.value || "all";
    if (kind === "all") t.all = true;
    if (kind === "selector") t.selector = val("target-selector");
    if (kind === "group") t.group = val("target-group");
    if (kind === "gateways") t.gateways = val("target-gateways").split(/[\s,]+/).filter(Boolean);
    return t;
  }

  const enc = encodeURIComponent;

  // matches counts the gateways t names, as the API sees them: a text
  // such as "matches 12 gateways (11 online)".
  async function matches(t) {
    if (!t.tenant) return { count: 0, text: "Give a tenant." };
    if (t.gateways) {
      if (t.gateways.length === 0) return { count: 0, text: "List gateway ids, separated by commas." };
      const ids = t.gateways.slice(0, 50);
      const found = await Promise.all(ids.map((id) => Console.api("GET", "/v1/gateways/" + enc(t.tenant) + "/" + enc(id)).then(() => true, () => false)));
      const missing = ids.filter((_, i) => !found[i]);
      const n = found.filter(Boolean).length;
      let text = "matches " + n + " of " + ids.length + " listed gateway" + (ids.length === 1 ? "" : "s");
      if (missing.length) text += "; not in the inventory: " + missing.join(", ");
      return { count: n, text };
    }
    const q = new URLSearchParams({ tenant: t.tenant, limit: "1" });
    if (t.selector) q.set("selector", t.selector);
    if (t.group) q.set("group", t.group);
    if (!t.all && !t.selector && !t.group) return { count: 0, text: "Give a selector or a group." };
    const l = await Console.api("GET", "/v1/gateways?" + q);
    const n = l.count || 0;
    return { count: n, text: "matches " + n + " gateway" + (n === 1 ? "" : "s") + " (" + (l.online || 0) + " online)" };
  }

  // debounce calls fn ms after the last call.
  function debounce(fn, ms) {
    let t = null;
    return (...args) => { clearTimeout(t); t = setTimeout(() => fn(...args), ms); };
  }

  // stateClass is funcs.go's: the CSS class of a state (ok, warn, bad, idle).
  function stateClass(s) {
    s = (s || "").toUpperCase();
    if (["ONLINE", "RUNNING", "SUCCEEDED", "HEALTHY", "OK", "ACTIVE"].includes(s)) return "ok";
    if (["FAILED", "REJECTED", "UNDELIVERED", "UNHEALTHY", "ABORTED", "TIMED_OUT", "ERROR", "OFFLINE", "ROLLED_BACK"].includes(s)) return "bad";
    if (["STALE", "PAUSED", "PENDING", "ACCEPTED", "PULLING", "STARTING", "CREATING", "STOPPING", "IN_PROGRESS", "QUEUED"].includes(s)) return "warn";
    return "idle";
  }

  // badge is the "badge" template's element: the state as text, and a class.
  function badge(s) {
    const b = el("span", "badge " + stateClass(s), s || "–");
    return b;
  }

  // el makes an element with a class and text.
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  // clearErrors removes what showError wrote in form.
  function clearErrors(form) {
    form.querySelectorAll(".field-error").forEach((e) => e.remove());
    form.querySelectorAll("[aria-invalid]").forEach((e) => e.removeAttribute("aria-invalid"));
  }

  // showError writes err next to the element whose data-field is the
  // longest prefix of the field it names (else in the form's error
  // slot); with a YAML line it says "line N".
  function showError(form, err) {
    clearErrors(form);
    const p = el("p", "field-error error");
    p.setAttribute("role", "alert");
    let where = "";
    if (err.line) where = "Line " + err.line + (err.path ? " (" + err.path + ")" : "") + ": ";
    else if (err.field) where = err.field + ": ";
    p.textContent = where + err.message + (err.code ? " [" + err.code + "]" : "");
    if (err.errors?.length) {
      // A refused Compose file: every refused field, one a line.
      p.textContent = where + "refused" + (err.code ? " [" + err.code + "]" : "") + ":";
      const ul = el("ul", "refusals");
      for (const e of err.errors) ul.append(el("li", "mono", e));
      p.append(ul);
    }
    let at = null;
    for (const e of form.querySelectorAll("[data-field]")) {
      const f = e.dataset.field;
      if (err.field && (err.field === f || err.field.startsWith(f + ".") || err.field.startsWith(f + "[")) && (!at || f.length > at.dataset.field.length)) at = e;
    }
    if (at) {
      (at.matches("input, textarea, select") ? at : at.querySelector("input, textarea, select") || at).setAttribute("aria-invalid", "true");
      at.insertAdjacentElement("afterend", p);
    } else {
      (form.querySelector(".form-error") || form).prepend(p);
    }
    return p;
  }

  // time writes an RFC 3339 time as the console does (UTC), "" for none.
  function time(s) {
    if (!s || s.startsWith("0001-")) return "";
    const d = new Date(s);
    return isNaN(d) ? s : d.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
  }

  // live keeps the elements of selectors current: after an event of one
  // of prefixes it fetches the page's content again (at most once a
  // second) and swaps only those elements, so that what is typed in the
  // page's forms stays. It dispatches "ops:refreshed" afterwards.
  function live(prefixes, selectors) {
    let pending = null, again = false, last = 0;
    const refresh = () => {
      // An event while a fetch is on its way may postdate what it gets:
      // fetch once more after it.
      if (pending) { again = true; return; }
      pending = setTimeout(async () => {
        last = Date.now();
        again = false;
        try {
          const resp = await fetch(location.href, { headers: { "X-Console-Fragment": "1" }, credentials: "same-origin" });
          if (resp.redirected || !resp.ok) return;
          const doc = new DOMParser().parseFromString("<main>" + await resp.text() + "</main>", "text/html");
          for (const sel of selectors) {
            const now = document.querySelector(sel), next = doc.querySelector(sel);
            if (!now || !next) continue;
            const chosen = now.matches("select") ? now.value : null;
            now.replaceWith(document.adoptNode(next));
            if (chosen !== null && [...next.options].some((o) => o.value === chosen)) next.value = chosen; // the user's choice stays
          }
          document.dispatchEvent(new CustomEvent("ops:refreshed"));
        } finally {
          pending = null;
          if (again) refresh();
        }
      }, Math.max(0, 1000 - (Date.now() - last)));
    };
    Console.on(prefixes, refresh);
    return refresh;
  }

  // checkValue writes a field of a RegistryCheck: sizes in MiB, lists
  // and objects as JSON.
  function checkValue(k, v) {
    if (k === "sizeBytes" && Number(v) > 0) return (Number(v) / 1048576).toFixed(1) + " MiB (" + v + " bytes)";
    return typeof v === "object" ? JSON.stringify(v) : String(v);
  }

  return { post, live, checkValue, target, matches, debounce, badge, el, showError, clearErrors, stateClass, time };
})();
