// The dashboard: login, the event stream, stat cards, tables, forms and the preview.
// Plain ES modules, no build step; every text from the server goes in as textContent.

import { drawChart } from "./chart.js";
import { Preview } from "./preview.js";
import { signIn, signOut } from "./session.js";

const $ = (selector) => document.querySelector(selector);
// following: the preview moves on to the newest running render or zoom once the one it
// shows has ended, until a job is picked (its row's preview button, the render form).
const state = { role: null, images: false, history: [], events: null, rows: new Map(), following: true };
const preview = new Preview($("#preview"), $("#preview-image"), $("#preview-title"), $("#preview-note"), $("#download"),
  $("#keyframes"), $("#preview-video"));
const PREVIEWED = new Set(["fractal.band", "fractal.keyframe"]);  // renders and zoom movies
const ACTIVE = new Set(["queued", "preparing", "running", "finishing"]);
// Roles that submit, cancel, requeue and purge (a client its own jobs, an admin any).
const WRITERS = new Set(["client", "admin"]);
const writer = () => WRITERS.has(state.role);

function element(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "text") node.textContent = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function age(seconds) {
  if (seconds < 60) return `${Math.round(seconds)} s`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
  if (seconds < 86400) return `${(seconds / 3600).toFixed(1)} h`;
  return `${(seconds / 86400).toFixed(1)} d`;
}

async function api(path, options = {}) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  let body = null;
  try { body = await response.json(); } catch { body = null; }
  return { ok: response.ok, status: response.status, body };
}

// ---- login --------------------------------------------------------------------

async function start() {
  const session = await signIn($("#dashboard"), () => {
    $("#dashboard").hidden = true;
    $("#connection").textContent = "token needed";
  });
  state.role = session.role;
  $("#logout").hidden = !session.auth;
  $("#whoami").textContent = session.auth ? `signed in as ${state.role} (${session.holder})` : "";
  $("#connection").textContent = "connecting…";
  $("#dashboard").hidden = false;
  for (const node of document.querySelectorAll(".writer")) node.hidden = !writer();
  await loadOptions();
  connect();
}

$("#logout").addEventListener("click", async () => {
  if (state.events) state.events.close();
  await signOut();
  location.reload();
});

// ---- the event stream -----------------------------------------------------------

function connect() {
  const events = new EventSource("/api/events");
  state.events = events;
  events.addEventListener("open", () => setConnection(true));
  events.addEventListener("error", async () => {
    setConnection(false);
    if (events.readyState === EventSource.CLOSED) {
      // Refused (the session expired, say): ask again rather than retry forever.
      const { body } = await api("/api/session");
      if (body && body.auth && !body.role) start();
      else setTimeout(connect, 2000);
    }
  });
  events.addEventListener("history", (event) => {
    state.history = JSON.parse(event.data);
    drawChart($("#chart"), state.history);
  });
  events.addEventListener("snapshot", (event) => render(JSON.parse(event.data)));
}

function setConnection(up) {
  const badge = $("#connection");
  badge.textContent = up ? "live" : "reconnecting…";
  badge.classList.toggle("off", !up);
}

function render(snapshot) {
  state.images = snapshot.images;
  $("#tls").hidden = !snapshot.tls;
  const last = state.history[state.history.length - 1];
  if (!last || last[0] < snapshot.point[0]) {
    state.history.push(snapshot.point);
    if (state.history.length > 600) state.history.shift();
  }
  drawChart($("#chart"), state.history);
  const s = snapshot.stats;
  const cards = { queued: s.queued, leased: s.leased, running: s.running, workers: s.workers,
    succeeded: s.succeeded, failed: s.failed, dead: s.dead, rate: s.rate.toFixed(1) };
  for (const [name, value] of Object.entries(cards)) {
    $(`[data-testid="stat-${name}"] .value`).textContent = String(value);
  }
  $('[data-testid="stat-workers"] .sub').textContent = `${s.idle} idle · ${s.busy} busy`;
  renderWorkers(snapshot.workers);
  renderJobs(snapshot.jobs);
  renderDead(snapshot.dead_letters);
  const shown = snapshot.jobs.find((row) => row.id === preview.jobId);
  if (state.following && !(shown && ACTIVE.has(shown.state))) {
    const running = snapshot.jobs.find((row) => PREVIEWED.has(row.type) && ACTIVE.has(row.state));
    if (running) selectJob(running.id, false);
  }
  preview.update(snapshot.jobs.find((row) => row.id === preview.jobId), snapshot.images);
}

function renderWorkers(workers) {
  const body = $("#workers tbody");
  body.replaceChildren(...workers.map((w) => element("tr", { "data-testid": "worker-row" }, [
    element("td", { class: "id", text: w.id + (w.draining ? " (draining)" : "") }),
    element("td", { text: w.host }),
    element("td", { text: `${w.leased} / ${w.slots}` }),
    element("td", { class: "id", text: w.jobs.map((id) => id.slice(0, 12)).join(", ") + (w.more ? ` +${w.more}` : "") || "idle" }),
    element("td", { text: `${w.completed} / ${w.failed}` }),
    element("td", { class: w.storage_error ? "state-failed" : "state-succeeded", text: w.storage_error || "ok" }),
    element("td", { text: `${w.seen.toFixed(1)} s ago` }),
  ])));
  if (!workers.length) body.append(element("tr", {}, [element("td", { colspan: "7", text: "no workers" })]));
}

function jobName(row) {
  const name = row.labels["fractaljob.name"];
  if (!name) return null;
  return `FractalJob ${row.labels["fractaljob.namespace"] || "default"}/${name}`;
}

function renderJobs(rows) {
  const body = $("#jobs tbody");
  const seen = new Set();
  rows.forEach((row, position) => {
    seen.add(row.id);
    let tr = state.rows.get(row.id);
    if (!tr) {
      tr = element("tr", { "data-testid": "job-row", "data-job-id": row.id });
      tr.parts = {};
      for (const key of ["job", "type", "state", "progress", "age", "labels", "actions"]) {
        tr.parts[key] = element("td");
        tr.append(tr.parts[key]);
      }
      tr.parts.job.className = "id";
      const title = element("div", { text: row.id });
      const name = jobName(row);
      tr.parts.job.append(title);
      if (name) tr.parts.job.append(element("div", { text: name }));
      tr.parts.type.textContent = row.type;
      tr.parts.labels.className = "labels";
      for (const [key, value] of Object.entries(row.labels)) {
        if (!key.startsWith("fractaljob")) tr.parts.labels.append(element("span", { text: `${key}=${value}` }));
      }
      if (PREVIEWED.has(row.type)) {
        tr.parts.actions.append(element("button", { type: "button", text: "preview", "data-testid": "show-preview", onclick: () => selectJob(row.id) }));
      }
      tr.cancel = element("button", { type: "button", text: "cancel", "data-testid": "cancel", onclick: () => cancel(row.id, tr.cancel) });
      tr.parts.actions.append(tr.cancel);
      tr.bar = element("span");
      tr.count = element("span");
      tr.parts.progress.append(element("div", { class: "bar" }, [tr.bar]), " ", tr.count);
      state.rows.set(row.id, tr);
    }
    if (body.children[position] !== tr) body.insertBefore(tr, body.children[position] || null);
    tr.parts.state.textContent = row.state;
    tr.parts.state.className = `state-${row.state}`;
    tr.parts.state.dataset.testid = "job-state";
    if (row.reason) tr.parts.state.title = row.reason;
    const done = row.succeeded;
    tr.bar.style.width = `${row.total ? (100 * done) / row.total : 0}%`;
    tr.count.textContent = `${done}/${row.total}${row.leased ? ` · ${row.leased} running` : ""}${row.dead ? ` · ${row.dead} dead` : ""}`;
    tr.parts.age.textContent = age(row.age);
    tr.cancel.hidden = !writer() || !ACTIVE.has(row.state);
    tr.classList.toggle("selected", row.id === preview.jobId);
  });
  for (const [id, tr] of state.rows) {
    if (!seen.has(id)) { tr.remove(); state.rows.delete(id); }
  }
}

function renderDead(letters) {
  const list = $("#dead");
  list.replaceChildren(...letters.map((d) => {
    const task = `task ${d.index} (${d.type}${d.stage ? `, the ${d.stage} task` : ""})`;
    const item = element("li", { "data-testid": "dead-letter", "data-job-id": d.id }, [
      element("span", { class: "id", text: d.id }), ` ${task}, ${d.attempts} attempt(s)`,
      d.owner ? ` · ${d.owner}` : "", element("div", { class: "note", text: d.error }),
    ]);
    if (writer()) {
      item.append(
        element("button", { type: "button", text: "requeue", "data-testid": "requeue", onclick: (e) => act(d.id, "requeue", e.target) }),
        " ",
        element("button", { type: "button", text: "purge", "data-testid": "purge", onclick: (e) => act(d.id, "purge", e.target) }),
      );
    }
    return item;
  }));
  if (!letters.length) list.append(element("li", { class: "note", text: "none" }));
}

async function act(jobId, action, button) {
  button.disabled = true;
  const { ok, body } = await api(`/api/jobs/${encodeURIComponent(jobId)}/${action}`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: "{}",
  });
  button.disabled = false;
  if (!ok) alert((body && body.error) || `${action} was refused`);
}

function selectJob(jobId, picked = true) {
  if (picked) state.following = false;
  preview.select(jobId);
  for (const [id, tr] of state.rows) tr.classList.toggle("selected", id === jobId);
}

async function cancel(jobId, button) {
  button.disabled = true;
  const { ok, body } = await api(`/api/jobs/${encodeURIComponent(jobId)}/cancel`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: "{}",
  });
  button.disabled = false;
  if (!ok) alert((body && body.error) || "cancel was refused");
}

// ---- forms ------------------------------------------------------------------------

async function loadOptions() {
  const { ok, body } = await api("/api/render/options");
  if (!ok) return;
  const form = $("#render-form");
  fill(form.elements.fractal, body.fractals, body.defaults.fractal);
  fill(form.elements.palette, body.palettes, body.defaults.palette);
  fill(form.elements["colour-scale"], body.colour_scales, body.defaults["colour-scale"]);
  for (const name of ["width", "height", "regions", "max-iter", "priority"]) {
    form.elements[name].placeholder = String(body.defaults[name]);
  }
  const julia = () => {
    for (const label of form.querySelectorAll("label.julia")) label.hidden = form.elements.fractal.value !== "julia";
  };
  form.elements.fractal.addEventListener("change", julia);
  julia();
  fill($("#task-form").elements.task, body.task_types, "sleep");
  $("#task-form").elements.priority.placeholder = String(body.defaults.priority);
}

function fill(select, names, chosen) {
  select.replaceChildren(...names.map((name) => element("option", { value: name, text: name })));
  select.value = chosen;
}

function clearErrors(form) {
  for (const node of form.querySelectorAll(".invalid")) node.classList.remove("invalid");
  for (const node of form.querySelectorAll("label .error")) node.remove();
  form.querySelector(".form-error").textContent = "";
}

function showError(form, field, message) {
  const input = field && form.elements[field];
  if (input) {
    input.classList.add("invalid");
    input.closest("label").append(element("p", { class: "error", "data-testid": `error-${field}`, role: "alert", text: message }));
    input.focus();
  } else {
    form.querySelector(".form-error").textContent = message;
  }
}

async function submitForm(form, path, onDone) {
  clearErrors(form);
  const data = Object.fromEntries(new FormData(form).entries());
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    const { ok, body } = await api(path, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(data),
    });
    if (!ok) showError(form, body && body.field, (body && body.error) || "refused");
    else onDone(body);
  } finally {
    button.disabled = false;
  }
}

$("#render-form").addEventListener("submit", (event) => {
  event.preventDefault();
  submitForm(event.target, "/api/render", (body) => selectJob(body.job_id));
});
$("#task-form").addEventListener("submit", (event) => {
  event.preventDefault();
  submitForm(event.target, "/api/tasks", () => {});
});

start();
