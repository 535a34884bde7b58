// siesta's dashboard: the admin API (with the login cookie) and its event stream.
// Plain JavaScript, no build step, no library, nothing from the network but siesta.
"use strict";

const HEADERS = { "X-Siesta-UI": "1", Accept: "application/json" };
const REFRESH_SESSIONS_MS = 10000; // idle and awake times move; states come by the stream
const REFRESH_SAVINGS_MS = 30000;
const rows = new Map(); // session id -> <tr>
let savingsById = new Map();
let openSession = null;

function $(id) { return document.getElementById(id); }

async function api(path, options = {}) {
  const response = await fetch(path, {
    credentials: "same-origin",
    ...options,
    headers: { ...HEADERS, ...(options.headers || {}) },
  });
  if (response.status === 401 || (response.redirected && response.url.endsWith("/ui/login"))) {
    window.location.assign("/ui/login");
    throw new Error("logged out");
  }
  const type = response.headers.get("content-type") || "";
  const body = type.includes("json") ? await response.json() : null;
  if (!response.ok) throw new Error((body && body.error) || `HTTP ${response.status}`);
  return body;
}

function say(message, isError = false) {
  const status = $("status");
  status.textContent = message;
  status.classList.toggle("error", isError);
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  const h = Math.floor(s / 3600);
  return h < 48 ? `${h}h ${Math.floor((s % 3600) / 60)}m` : `${Math.floor(h / 24)}d ${h % 24}h`;
}

function money(usd) {
  const size = Math.abs(usd);
  if (size >= 100) return `$${usd.toFixed(0)}`;
  if (size >= 1) return `$${usd.toFixed(2)}`;
  return size >= 0.01 || size === 0 ? `$${usd.toFixed(4)}` : `$${usd.toPrecision(2)}`;
}
let savingsSoon = null;
function refreshSavingsSoon() { // after a wake or a sleep; several in a row cost one call
  clearTimeout(savingsSoon);
  savingsSoon = setTimeout(() => loadSavings().catch(() => {}), 1000);
}
function mass(kg) { return Math.abs(kg) >= 1 ? `${kg.toFixed(2)} kg` : `${(kg * 1000).toFixed(1)} g`; }
function share(x) { return `${Math.round(x * 100)}%`; }

function cell(row, label, cls) {
  const td = document.createElement("td");
  td.dataset.label = label;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function makeRow(session) {
  const tr = document.createElement("tr");
  tr.dataset.id = session.id;
  const name = document.createElement("th");
  name.scope = "row";
  name.dataset.label = "Session";
  const open = document.createElement("button");
  open.type = "button";
  open.className = "link";
  open.textContent = session.id;
  open.setAttribute("aria-label", `Details of ${session.id}`);
  open.addEventListener("click", () => showDetail(session.id));
  name.appendChild(open);
  tr.appendChild(name);
  cell(tr, "Template", "template");
  const state = cell(tr, "State", "state-cell");
  const badge = document.createElement("span");
  badge.className = "state";
  state.appendChild(badge);
  cell(tr, "Idle for", "idle");
  cell(tr, "Awake for", "awake");
  cell(tr, "Awake share", "share");
  cell(tr, "Saved", "saved");
  const actions = cell(tr, "Actions", "actions");
  for (const [verb, label] of [["wake", "Wake"], ["sleep", "Sleep"]]) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = verb === "sleep" ? "secondary" : "";
    button.dataset.verb = verb;
    button.textContent = label;
    button.setAttribute("aria-label", `${label} ${session.id}`);
    button.addEventListener("click", () => act(session.id, verb, button));
    actions.appendChild(button);
  }
  rows.set(session.id, tr);
  return tr;
}

function setState(id, state) {
  const tr = rows.get(id);
  if (!tr) return;
  const badge = tr.querySelector(".state");
  if (badge.dataset.state !== state) {
    tr.classList.remove("flash");
    void tr.offsetWidth; // restart the animation
    tr.classList.add("flash");
  }
  badge.dataset.state = state;
  badge.textContent = state;
  tr.dataset.state = state;
  tr.querySelector('[data-verb="wake"]').disabled = state === "AWAKE" || state === "WAKING";
  tr.querySelector('[data-verb="sleep"]').disabled = state !== "AWAKE";
}

function fillRow(session) {
  const tr = rows.get(session.id) || makeRow(session);
  tr.querySelector(".template").textContent = session.template;
  tr.querySelector(".idle").textContent = duration(session.idle_for);
  tr.querySelector(".awake").textContent = duration(session.awake_for);
  const saved = savingsById.get(session.id);
  tr.querySelector(".share").textContent = saved ? share(saved.awake_share) : "–";
  tr.querySelector(".saved").textContent = saved ? `${money(saved.saved_usd)} · ${mass(saved.saved_kg_co2e)}` : "–";
  setState(session.id, session.state);
  return tr;
}

async function loadSessions() {
  const sessions = await api("/api/sessions");
  const body = $("sessions").querySelector("tbody");
  const seen = new Set();
  sessions.forEach((session, index) => {
    const tr = fillRow(session);
    seen.add(session.id);
    if (body.children[index] !== tr) body.insertBefore(tr, body.children[index] || null);
  });
  for (const [id, tr] of rows) {
    if (!seen.has(id)) { tr.remove(); rows.delete(id); }
  }
}

async function loadSavings() {
  const report = await api("/api/savings");
  savingsById = new Map(report.sessions.map((s) => [s.id, s]));
  const total = report.total;
  $("kpi-usd").textContent = money(total.saved_usd);
  $("kpi-co2e").textContent = mass(total.saved_kg_co2e);
  $("kpi-kwh").textContent = `${total.saved_kwh.toFixed(3)} kWh`;
  $("kpi-share").textContent = share(total.awake_share);
  $("kpi-wakes").textContent = String(total.wakes);
  $("grid-note").textContent =
    `Grid: ${report.region.source} (${Math.round(report.region.g_co2e_per_kwh)} g CO2e/kWh). ` +
    `Prices: $${report.prices.vcpu_hour}/vCPU-h, $${report.prices.gib_hour}/GiB-h (OpenCost defaults unless configured). ` +
    `Energy: Cloud Carbon Footprint method, PUE ${report.energy.pue}.`;
  for (const [id, tr] of rows) {
    const saved = savingsById.get(id);
    if (saved) {
      tr.querySelector(".share").textContent = share(saved.awake_share);
      tr.querySelector(".saved").textContent = `${money(saved.saved_usd)} · ${mass(saved.saved_kg_co2e)}`;
    }
  }
}

function loadCharts() {
  const stamp = Date.now();
  for (const img of document.querySelectorAll("img[data-chart]")) {
    img.src = `/ui/charts/${img.dataset.chart}.svg?t=${stamp}`;
  }
}

async function act(id, verb, button) {
  button.disabled = true;
  say(verb === "wake" ? `Waking ${id}…` : `Putting ${id} to sleep…`);
  try {
    const session = await api(`/api/sessions/${encodeURIComponent(id)}/${verb}`, { method: "POST" });
    fillRow(session);
    say(`${id} is ${session.state}.`);
  } catch (error) {
    say(`${id}: ${error.message}`, true);
    button.disabled = false;
  }
}

function eventLine(event) {
  const li = document.createElement("li");
  const when = new Date(event.at * 1000).toLocaleString();
  const took = event.wake_seconds ? ` (woke in ${event.wake_seconds.toFixed(2)}s)` : "";
  li.textContent = `${when}: ${event.old} → ${event.new}: ${event.reason}${took}`;
  return li;
}

function explainTable(answer) {
  const wrap = document.createElement("div");
  const head = document.createElement("p");
  head.textContent = `Policy ${answer.policy}; ${answer.state}.`;
  if (answer.decision) {
    const d = answer.decision;
    head.textContent += d.sleep ? ` Decision: sleep now (${d.reason}).` : ` Decision: stay awake (${d.reason}).`;
    if (!d.sleep && d.sleep_in !== null) head.textContent += ` Would sleep in ${duration(d.sleep_in)} if only time passes.`;
  }
  wrap.appendChild(head);
  const table = document.createElement("table");
  table.className = "rules";
  table.innerHTML = '<thead><tr><th scope="col">Rule</th><th scope="col">Condition</th><th scope="col">Values</th><th scope="col">Holds</th><th scope="col">When it holds</th></tr></thead>';
  const body = document.createElement("tbody");
  for (const rule of answer.rules) {
    const tr = document.createElement("tr");
    const values = Object.entries(rule.values).map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(", ");
    const holds = rule.error ? `error: ${rule.error}` : rule.holds === null ? "–" : rule.holds ? "yes" : "no";
    for (const [text, code] of [[rule.key, false], [rule.source, true], [values, false], [holds, false], [rule.effect, false]]) {
      const td = document.createElement("td");
      if (code) { const c = document.createElement("code"); c.textContent = text; td.appendChild(c); } else td.textContent = text;
      tr.appendChild(td);
    }
    body.appendChild(tr);
  }
  table.appendChild(body);
  wrap.appendChild(table);
  if (answer.note) { const note = document.createElement("p"); note.className = "note"; note.textContent = answer.note; wrap.appendChild(note); }
  return wrap;
}

async function showDetail(id) {
  openSession = id;
  const section = $("detail");
  section.hidden = false;
  $("detail-h").textContent = `Session ${id}`;
  $("detail-h").focus();
  const list = $("events");
  const explain = $("explain");
  list.replaceChildren();
  explain.textContent = "Loading…";
  const weekAgo = Date.now() / 1000 - 7 * 86400;
  try {
    const [events, answer] = await Promise.all([
      api(`/api/events?session=${encodeURIComponent(id)}&since=${weekAgo}&limit=10000`),
      api(`/api/sessions/${encodeURIComponent(id)}/explain`).catch((error) => ({ error: error.message })),
    ]);
    for (const event of events.slice(-50).reverse()) list.appendChild(eventLine(event));
    if (!events.length) list.appendChild(Object.assign(document.createElement("li"), { textContent: "No events in the last 7 days." }));
    explain.replaceChildren(answer.error ? Object.assign(document.createElement("p"), { textContent: answer.error }) : explainTable(answer));
  } catch (error) {
    explain.textContent = error.message;
  }
}

function closeDetail() {
  const id = openSession;
  openSession = null;
  $("detail").hidden = true;
  const tr = id && rows.get(id);
  if (tr) tr.querySelector("button.link").focus();
}

function listen() {
  const live = $("live");
  const stream = new EventSource("/api/events/stream");
  stream.addEventListener("open", () => { live.dataset.state = "live"; live.textContent = "live"; });
  stream.addEventListener("error", () => { live.dataset.state = "down"; live.textContent = "reconnecting…"; });
  stream.addEventListener("transition", (message) => {
    const event = JSON.parse(message.data);
    if (!rows.has(event.session)) { loadSessions().catch(() => {}); return; }
    setState(event.session, event.new);
    if (event.new === "AWAKE" || event.new === "ASLEEP" || event.new === "FAILED") {
      say(`${event.session} is ${event.new}: ${event.reason}`);
      api(`/api/sessions/${encodeURIComponent(event.session)}`).then(fillRow).catch(() => {});
      refreshSavingsSoon();
    }
    if (openSession === event.session) $("events").prepend(eventLine(event));
  });
}

async function start() {
  window.siestaLoadedAt = Date.now(); // tests check the page was never reloaded
  $("detail-close").addEventListener("click", closeDetail);
  document.addEventListener("keydown", (e) => { if (e.key === "Escape" && openSession) closeDetail(); });
  try {
    await loadSavings();
  } catch (error) {
    say(`savings: ${error.message}`, true);
  }
  try {
    await loadSessions();
  } catch (error) {
    say(`sessions: ${error.message}`, true);
  }
  listen();
  loadCharts();
  setInterval(() => loadSessions().catch(() => {}), REFRESH_SESSIONS_MS);
  setInterval(() => { loadSavings().catch(() => {}); loadCharts(); }, REFRESH_SAVINGS_MS);
}

document.addEventListener("DOMContentLoaded", start);
