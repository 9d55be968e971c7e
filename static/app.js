// The session's CSRF token: state-changing API calls send it as a header.
function csrfToken() {
  const m = document.querySelector('meta[name="csrf-token"]');
  return m ? m.content : "";
}

// vmscan dashboard: submit through the JSON API, toast the result, refresh
// the job list, and follow a job page live over Server-Sent Events.
"use strict";

function toast(kind, html) {
  const box = document.getElementById("toasts");
  const t = document.createElement("div");
  t.className = "toast toast-" + kind;
  t.setAttribute("role", kind === "error" ? "alert" : "status");
  t.innerHTML = html;
  const close = document.createElement("button");
  close.className = "toast-close";
  close.textContent = "×";
  close.onclick = () => t.remove();
  t.appendChild(close);
  box.appendChild(t);
  if (kind !== "error") setTimeout(() => t.remove(), 8000);
}

function esc(s) {
  return String(s).replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
}

async function apiError(resp) {
  try {
    const body = await resp.json();
    return body.error || resp.statusText;
  } catch (_) {
    return resp.status + " " + resp.statusText;
  }
}

async function refreshTable() {
  const holder = document.getElementById("job-table");
  if (!holder) return;
  // Not while someone is choosing a filter: the refresh would undo it.
  if (document.activeElement && document.activeElement.closest("#job-filters")) return;
  const qs = window.location.search.replace(/^\?/, "");
  const resp = await fetch("/jobs/table" + (qs ? "?" + qs : ""));
  if (resp.ok) holder.innerHTML = await resp.text();
}

function setupSubmit() {
  const form = document.getElementById("submit-form");
  if (!form) return;
  form.addEventListener("submit", async ev => {
    ev.preventDefault();
    const btn = document.getElementById("submit-btn");
    btn.disabled = true;
    const body = {};
    for (const [k, v] of new FormData(form).entries()) if (v.trim() !== "") body[k] = v.trim();
    try {
      const resp = await fetch("/api/v1/jobs", {
        method: "POST",
        headers: {"Content-Type": "application/json", "X-CSRF-Token": csrfToken()},
        body: JSON.stringify(body),
      });
      if (resp.ok) {
        const job = await resp.json();
        toast("success", `Job <a href="/jobs/${esc(job.id)}">${esc(job.id.slice(0, 8))}</a> queued for ${esc(job.url)}`);
        form.reset();
        refreshTable();
      } else {
        toast("error", "Not submitted: " + esc(await apiError(resp)));
      }
    } catch (e) {
      toast("error", "Not submitted: cannot reach vmscan (" + esc(e.message) + ")");
    } finally {
      btn.disabled = false;
    }
  });
  // Keep the list fresh while people watch it.
  setInterval(refreshTable, 5000);
}

// A manifest file goes to the batch API as it is (YAML or JSON); every
// error comes back with its image and field and is listed under the form.
function setupManifest() {
  const form = document.getElementById("manifest-form");
  if (!form) return;
  form.addEventListener("submit", async ev => {
    ev.preventDefault();
    const btn = document.getElementById("manifest-btn");
    const list = document.getElementById("manifest-errors");
    const file = document.getElementById("manifest").files[0];
    if (!file) return;
    btn.disabled = true;
    list.innerHTML = "";
    const json = /\.json$/i.test(file.name);
    try {
      const resp = await fetch("/api/v1/batches", {
        method: "POST",
        headers: {"Content-Type": json ? "application/json" : "application/yaml", "X-CSRF-Token": csrfToken()},
        body: await file.text(),
      });
      if (resp.ok) {
        const b = await resp.json();
        toast("success", `Batch <a href="${esc(b.page)}">${esc(b.id.slice(0, 8))}</a> queued: ${b.jobs.length} images`);
        for (const w of b.warnings || []) toast("info", esc(w));
        form.reset();
        refreshTable();
      } else {
        let body = {};
        try { body = await resp.json(); } catch (_) { body = {error: resp.status + " " + resp.statusText}; }
        toast("error", "Not queued: " + esc(body.error || resp.statusText));
        for (const e of body.errors || []) {
          const li = document.createElement("li");
          li.className = "error";
          li.textContent = (e.image ? "images." + e.image + (e.field ? "." + e.field : "") : e.field) + ": " + e.message;
          list.appendChild(li);
        }
      }
    } catch (e) {
      toast("error", "Not queued: cannot reach vmscan (" + esc(e.message) + ")");
    } finally {
      btn.disabled = false;
    }
  });
}

// A batch page refreshes its table until every job has ended.
function setupBatchPage() {
  const root = document.getElementById("batch");
  if (!root || root.dataset.ended === "true") return;
  const id = root.dataset.id;
  root.addEventListener("click", async ev => {
    const btn = ev.target.closest("button[data-batch-action]");
    if (!btn) return;
    btn.disabled = true;
    const resp = await fetch(`/api/v1/batches/${id}/cancel`, {method: "POST", headers: {"X-CSRF-Token": csrfToken()}});
    if (resp.ok) {
      toast("success", esc((await resp.json()).message));
    } else {
      toast("error", "cancel failed: " + esc(await apiError(resp)));
      btn.disabled = false;
    }
  });
  const timer = setInterval(async () => {
    const resp = await fetch(`/batches/${id}/panel`);
    if (!resp.ok) return;
    document.getElementById("batch-panel").innerHTML = await resp.text();
    if (document.getElementById("batch-summary") && /ended/.test(document.querySelector("#batch-panel h2").textContent)) {
      clearInterval(timer);
    }
  }, 5000);
}

function appendLog(line) {
  const log = document.getElementById("log");
  if (log.querySelector(`[data-id="${line.id}"]`)) return;
  const span = document.createElement("span");
  span.className = "line lvl-" + line.level;
  span.dataset.id = line.id;
  span.dataset.stage = line.stage || "-";
  span.dataset.level = line.level;
  span.textContent = `${line.ts} ${line.stage ? "[" + line.stage + "] " : ""}${line.level} ${line.message}\n`;
  log.appendChild(span);
  filterLine(span, logFilter());
  if (document.getElementById("follow").checked) log.scrollTop = log.scrollHeight;
}

// The log viewer's filters: stage, minimum level, and a search that marks
// what it found. Lines stay in the page; filtering only hides them.
const LEVELS = {debug: 0, info: 1, warn: 2, error: 3};
function logFilter() {
  const v = id => (document.getElementById(id) || {}).value || "";
  return {stage: v("log-stage"), level: v("log-level"), text: v("log-search").toLowerCase()};
}
function filterLine(span, f) {
  const raw = span.dataset.raw || span.textContent;
  span.dataset.raw = raw;
  const show = (!f.stage || span.dataset.stage === f.stage)
    && (!f.level || (LEVELS[span.dataset.level] ?? 1) >= LEVELS[f.level])
    && (!f.text || raw.toLowerCase().includes(f.text));
  span.classList.toggle("hidden", !show);
  if (f.text && show) {
    const i = raw.toLowerCase().indexOf(f.text);
    span.innerHTML = esc(raw.slice(0, i)) + "<mark>" + esc(raw.slice(i, i + f.text.length)) + "</mark>" + esc(raw.slice(i + f.text.length));
  } else if (span.querySelector("mark")) {
    span.textContent = raw;
  }
  return show;
}
function applyLogFilter() {
  const f = logFilter();
  let shown = 0, all = 0;
  for (const span of document.querySelectorAll("#log .line")) {
    all++;
    if (filterLine(span, f)) shown++;
  }
  const c = document.getElementById("log-count");
  if (c) c.textContent = shown === all ? `${all} lines` : `${shown} of ${all} lines`;
}
function setupLogTools() {
  const tools = document.getElementById("log-tools");
  if (!tools) return;
  for (const id of ["log-stage", "log-level"]) document.getElementById(id).addEventListener("change", applyLogFilter);
  document.getElementById("log-search").addEventListener("input", applyLogFilter);
  document.getElementById("log-wrap").addEventListener("change", ev => {
    document.getElementById("log").classList.toggle("wrap", ev.target.checked);
  });
  applyLogFilter();
}

// A parked stage counts down to its next check.
function tickCountdowns() {
  for (const el of document.querySelectorAll(".countdown[data-wake]")) {
    const left = Math.round((Number(el.dataset.wake) - Date.now()) / 1000);
    if (left <= 0) { el.textContent = "checking again now"; continue; }
    const h = Math.floor(left / 3600), m = Math.floor(left / 60) % 60, sec = left % 60;
    el.textContent = "next check in " + (h ? h + "h " : "") + (h || m ? m + "m " : "") + sec + "s";
  }
}

async function refreshPanel(id) {
  const resp = await fetch(`/jobs/${id}/panel`);
  if (resp.ok) {
    document.getElementById("job-panel").innerHTML = await resp.text();
  }
}

function setupJobPage() {
  const root = document.getElementById("job");
  if (!root) return;
  const id = root.dataset.id;
  const log = document.getElementById("log");
  log.scrollTop = log.scrollHeight;

  root.addEventListener("click", async ev => {
    const btn = ev.target.closest("button[data-action]");
    if (!btn) return;
    const action = btn.dataset.action;
    btn.disabled = true;
    const resp = await fetch(`/api/v1/jobs/${id}/${action}`, {method: "POST", headers: {"X-CSRF-Token": csrfToken()}});
    if (resp.ok) {
      const body = await resp.json();
      toast("success", esc(body.message));
      await refreshPanel(id);
      if (action === "retry") follow(id);
    } else {
      toast("error", `${action} failed: ` + esc(await apiError(resp)));
      btn.disabled = false;
    }
  });
  if (root.dataset.final !== "true") follow(id);
}

let source = null;
function follow(id) {
  if (source) source.close();
  source = new EventSource(`/api/v1/jobs/${id}/events`);
  let pending = null;
  source.addEventListener("log", ev => appendLog(JSON.parse(ev.data)));
  source.addEventListener("job", () => {
    // Coalesce bursts of updates into one panel refresh.
    if (pending) return;
    pending = setTimeout(() => { pending = null; refreshPanel(id); }, 200);
  });
  source.addEventListener("end", ev => {
    source.close();
    source = null;
    refreshPanel(id);
    toast(ev.data === "succeeded" ? "success" : "error", `Job ${esc(ev.data)}`);
  });
}

async function sendJson(method, url, body) {
  return fetch(url, {
    method,
    headers: {"Content-Type": "application/json", "X-CSRF-Token": csrfToken()},
    body: body === undefined ? undefined : JSON.stringify(body),
  });
}

// The watches page: make a watch; a watch page: check now, pause, resume, delete.
function setupWatches() {
  const form = document.getElementById("watch-form");
  if (form) {
    form.addEventListener("submit", async ev => {
      ev.preventDefault();
      const btn = document.getElementById("watch-btn");
      btn.disabled = true;
      const body = {};
      for (const [k, v] of new FormData(form).entries()) if (v.trim() !== "") body[k] = v.trim();
      try {
        const resp = await sendJson("POST", "/api/v1/watches", body);
        if (resp.ok) {
          const w = await resp.json();
          toast("success", `Watching <a href="/watches/${esc(w.id)}">${esc(w.url_redacted)}</a>; the first check is due now`);
          form.reset();
          setTimeout(() => window.location.reload(), 1500);
        } else {
          toast("error", "Not watched: " + esc(await apiError(resp)));
        }
      } catch (e) {
        toast("error", "Not watched: cannot reach vmscan (" + esc(e.message) + ")");
      } finally {
        btn.disabled = false;
      }
    });
  }
  const page = document.getElementById("watch");
  if (!page) return;
  const id = page.dataset.id;
  for (const b of document.querySelectorAll(".watch-action")) {
    b.addEventListener("click", async () => {
      const action = b.dataset.action;
      if (action === "delete" && !confirm("Delete this watch? The scans it queued stay.")) return;
      const [method, url, body] = {
        check: ["POST", `/api/v1/watches/${id}/check`, undefined],
        pause: ["PATCH", `/api/v1/watches/${id}`, {enabled: false}],
        resume: ["PATCH", `/api/v1/watches/${id}`, {enabled: true}],
        delete: ["DELETE", `/api/v1/watches/${id}`, undefined],
      }[action];
      const resp = await sendJson(method, url, body);
      if (!resp.ok) {
        toast("error", esc(await apiError(resp)));
        return;
      }
      toast("success", esc((await resp.json()).message));
      setTimeout(() => { window.location.href = action === "delete" ? "/watches" : window.location.href; }, 1200);
    });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  setupLogTools();
  tickCountdowns();
  setInterval(tickCountdowns, 1000);
  setupSubmit();
  setupManifest();
  setupBatchPage();
  setupJobPage();
  setupWatches();
});
