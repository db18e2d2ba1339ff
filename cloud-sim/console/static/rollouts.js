// Fleet console: the rollout pages. The create form posts to the
// console's /rollouts/create (it turns the form's YAML into the API's
// JSON); pause, resume and cancel call the API. Handlers are delegated
// from document, so they survive the live page's refreshes.
"use strict";

(() => {
  const csrf = () => document.querySelector('meta[name="csrf-token"]')?.content || "";

  // The create form: form or YAML.
  function showMode(form) {
    const mode = form.querySelector('input[name="mode"]:checked')?.value || "form";
    for (const el of form.querySelectorAll("[data-mode]")) {
      const off = el.dataset.mode !== mode;
      el.hidden = off;
      el.querySelectorAll("input, textarea, select").forEach((i) => { i.disabled = off; });
    }
  }

  document.addEventListener("change", (ev) => {
    const form = ev.target.form;
    if (ev.target.name === "mode" && form?.matches("[data-rollout-create]")) showMode(form);
    // The list's filters apply when chosen.
    if (form?.matches("form[data-autosubmit]")) form.requestSubmit();
  });

  document.addEventListener("submit", async (ev) => {
    const form = ev.target;
    if (!form.matches("[data-rollout-create]")) return;
    ev.preventDefault();
    const button = ev.submitter || form.querySelector('button[type="submit"]');
    const dryRun = button.name === "dryRun";
    const result = form.querySelector("#dry-run");
    if (result) result.hidden = true;
    const body = new URLSearchParams(new FormData(form));
    if (dryRun) body.set("dryRun", "true");
    button.disabled = true;
    try {
      const resp = await fetch("/rollouts/create", {
        method: "POST", credentials: "same-origin", body,
        headers: { "Accept": "application/json", "X-CSRF-Token": csrf() },
      });
      let data = {};
      try { data = await resp.json(); } catch { data = { error: "HTTP " + resp.status }; }
      if (!resp.ok) throw new Console.APIError(resp.status, data);
      form.querySelectorAll(".field-error").forEach((e) => e.remove());
      form.querySelectorAll("[aria-invalid]").forEach((e) => e.removeAttribute("aria-invalid"));
      if (dryRun) return showDryRun(result, data);
      location.assign("/rollouts/" + encodeURIComponent(data.id));
    } catch (err) {
      const e = err instanceof Console.APIError ? err : { message: String(err.message || err), field: "", code: "" };
      // In YAML mode every field is in the one document: show the error by it.
      if (form.querySelector('input[name="mode"]:checked')?.value === "yaml") e.field = "yaml";
      Console.showError(form, e);
      form.querySelector('[aria-invalid="true"]')?.focus();
    } finally {
      button.disabled = false;
    }
  });

  // showDryRun writes what the API's dry run found: the gateways the
  // rollout would take and the registry check.
  function showDryRun(el, d) {
    el.replaceChildren();
    const add = (tag, text, cls) => {
      const e = document.createElement(tag);
      e.textContent = text;
      if (cls) e.className = cls;
      el.append(e);
      return e;
    };
    const all = [...(d.gateways || [])].sort((a, b) => a.localeCompare(b, undefined, { numeric: true }));
    const names = all.slice(0, 12).join(", ") + (all.length > 12 ? ` and ${all.length - 12} more` : "");
    add("p", `The rollout would take ${d.count} gateway${d.count === 1 ? "" : "s"} of ${d.tenant}${names ? ": " + names : ""}.`, "dry-targets");
    if (d.check) {
      add("p", d.check.ok ? `The registry serves ${d.check.image}.` :
        `The registry refused ${d.check.image}: ${d.check.message || ""} (${d.check.code || "error"})`, d.check.ok ? "dry-ok" : "dry-bad");
    } else {
      add("p", "The registry check was skipped.", "muted");
    }
    for (const w of d.warnings || []) add("p", "Warning: " + w, "dry-warn");
    el.hidden = false;
  }

  // confirm asks in a dialog (outside the live content, which refreshes)
  // and resolves to true when the operator confirms.
  function confirm(title, text, yes) {
    return new Promise((resolve) => {
      const d = document.createElement("dialog");
      d.className = "confirm";
      d.setAttribute("aria-labelledby", "confirm-title");
      d.innerHTML = '<form method="dialog"><h2 id="confirm-title"></h2><p></p><div class="buttons">' +
        '<button value="no" type="submit" autofocus>Keep it running</button> <button value="yes" type="submit" class="danger" id="confirm-yes"></button></div></form>';
      d.querySelector("h2").textContent = title;
      d.querySelector("p").textContent = text;
      d.querySelector("#confirm-yes").textContent = yes;
      d.addEventListener("close", () => { resolve(d.returnValue === "yes"); d.remove(); });
      document.body.append(d);
      d.showModal();
    });
  }

  document.addEventListener("click", async (ev) => {
    const b = ev.target.closest("button[data-rollout-action]");
    if (!b) return;
    const action = b.dataset.rolloutAction, id = b.dataset.rollout;
    if (action === "cancel" && !(await confirm("Cancel rollout " + (b.dataset.name || id) + "?",
      "Queued gateways are canceled and nothing new is dispatched; gateways in progress finish. A canceled rollout cannot be resumed.",
      "Cancel rollout"))) return;
    const slot = document.getElementById("rollout-action-error");
    b.disabled = true;
    try {
      await Console.api("POST", "/v1/rollouts/" + encodeURIComponent(id) + "/" + action);
      if (slot) slot.textContent = "";
      Console.refresh();
    } catch (err) {
      if (slot) slot.textContent = "Could not " + action + " the rollout: " + err.message;
      b.disabled = false;
    }
  });

  // An edited field loses its error.
  document.addEventListener("input", (ev) => {
    const f = ev.target.closest?.('[aria-invalid="true"]');
    if (!f || !f.closest("form[data-rollout-create]")) return;
    f.removeAttribute("aria-invalid");
    if (f.nextElementSibling?.classList.contains("field-error")) f.nextElementSibling.remove();
  });

  // A live refresh replaces the content: open <details> stay open.
  const open = new Set();
  document.addEventListener("toggle", (ev) => {
    const d = ev.target;
    if (!(d instanceof HTMLDetailsElement) || !d.id) return;
    if (d.open) open.add(d.id); else open.delete(d.id);
  }, true);
  document.addEventListener("console:refreshed", () => {
    for (const id of open) {
      const d = document.getElementById(id);
      if (d) d.open = true;
    }
  });

  document.addEventListener("DOMContentLoaded", () => {
    document.querySelectorAll("form[data-rollout-create]").forEach(showMode);
  });
})();
