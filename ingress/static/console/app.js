// Omni console: submit a job, follow its events, render its result.
// The API key lives in this page's memory only; it goes out as the X-API-Key header. Events are
// read with fetch streaming (EventSource cannot send headers) and resumed with Last-Event-ID when
// the connection drops. Untrusted text is only ever set with textContent, never parsed as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG_NS = "http://www.w3.org/2000/svg";
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

function weeklySeries(days) {
  const start = new Date(Date.UTC(2026, 0, 5));
  const series = [];
  for (let i = 0; i < days; i++) {
    const ds = new Date(start.getTime() + i * 86400000).toISOString().slice(0, 10);
    const weekend = i % 7 >= 5 ? 8 : 0;
    series.push({ ds, y: Math.round((20 + i * 0.2 + weekend + Math.sin(i) * 0.5) * 100) / 100 });
  }
  return series;
}

const EXAMPLES = {
  embed: { texts: ["Omni streams results as they happen.", "Results arrive as server-sent events."] },
  similar: {
    query: "Where is the Eiffel Tower?",
    documents: ["The Eiffel Tower stands in Paris.", "Bananas are rich in potassium.",
      "Berlin is the capital of Germany."],
    top_k: 2,
  },
  entities: { text: "Angela Merkel met Emmanuel Macron in Paris on Tuesday." },
  forecast: { series: weeklySeries(42), horizon: 14, frequency: "D" },
  predict: { model: "my-model", instances: [[1.0, 2.0, 3.0]] },
};

let tasks = {};
let following = null; // the AbortController of the stream being read

class ApiError extends Error {
  constructor(message, status, retryAfterS) {
    super(message);
    this.status = status;
    this.retryAfterS = retryAfterS; // seconds, from Retry-After (null when absent)
  }
}

async function api(path, options = {}) {
  const key = $("api-key").value.trim();
  const headers = { "X-API-Key": key, ...(options.headers || {}) };
  const response = await fetch(path, { ...options, headers });
  if (!response.ok) {
    let text = `${response.status} ${response.statusText}`;
    try {
      const problem = await response.json();
      text = `${problem.status} ${problem.title}: ${problem.detail || ""}`;
      for (const e of problem.errors || []) text += `\n  ${(e.loc || []).join(".")}: ${e.msg}`;
    } catch (_) { /* not problem+json: keep the status line */ }
    const retryAfter = Number(response.headers.get("Retry-After"));
    throw new ApiError(text, response.status, Number.isFinite(retryAfter) && retryAfter > 0 ? retryAfter : null);
  }
  return response;
}

function showError(error) {
  $("form-error").textContent = error ? String(error.message || error) : "";
}

async function loadTasks() {
  showError(null);
  try {
    const body = await (await api("/v1/tasks")).json();
    tasks = {};
    const select = $("task");
    select.replaceChildren();
    for (const task of body.tasks) {
      tasks[task.name] = task;
      const option = document.createElement("option");
      option.value = task.name;
      option.textContent = task.name;
      select.append(option);
    }
    select.disabled = false;
    $("submit").disabled = false;
    pickTask();
  } catch (error) {
    showError(error);
  }
}

function pickTask() {
  const name = $("task").value;
  $("task-description").textContent = tasks[name] ? tasks[name].description : "";
  $("input").value = JSON.stringify(EXAMPLES[name] || {}, null, 2);
}

async function submitJob(event) {
  event.preventDefault();
  showError(null);
  let input;
  try {
    input = JSON.parse($("input").value);
  } catch (error) {
    showError(`The input is not JSON: ${error.message}`);
    return;
  }
  try {
    const response = await api("/v1/jobs", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ task: $("task").value, input }),
    });
    const job = await response.json();
    $("job").hidden = false;
    $("job-id").textContent = job.id;
    $("events").replaceChildren();
    $("result").replaceChildren();
    delete $("result").dataset.status;
    setStatus(job.status);
    follow(job.id);
  } catch (error) {
    showError(error);
  }
}

function setStatus(status) {
  const badge = $("job-status");
  badge.textContent = status;
  badge.className = `status ${status}`;
}

// Reads the job's event stream; on a dropped connection, resumes after the last event seen.
// Gives up after 10 failures in a row; a 503 (the ingress is busy or restarting) and a 429 (this
// tenant is at its cap of open streams, say) are retried after their Retry-After.
async function follow(jobId) {
  if (following) following.abort();
  const controller = new AbortController();
  following = controller;
  let lastId = null;
  let done = false;
  let failures = 0;
  while (!done && failures < 10 && !controller.signal.aborted) {
    let waitMs = 1000;
    try {
      const headers = lastId === null ? {} : { "Last-Event-ID": String(lastId) };
      const response = await api(`/v1/jobs/${jobId}/events`, { headers, signal: controller.signal });
      if (response.status === 204) return; // we already have the terminal event
      failures = 0;
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done: ended } = await reader.read();
        if (ended) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const message = parseMessage(buffer.slice(0, cut));
          buffer = buffer.slice(cut + 2);
          if (!message) continue;
          lastId = Number(message.id);
          if (controller !== following) return; // another job is on show now
          onEvent(message);
          if (TERMINAL.has(message.event)) done = true;
        }
      }
    } catch (error) {
      if (controller.signal.aborted) return;
      failures += 1;
      if (error instanceof ApiError) {
        if (error.status !== 503 && error.status !== 429) { showError(error); return; }
        if (error.retryAfterS !== null) waitMs = Math.min(error.retryAfterS, 60) * 1000;
      }
    }
    if (!done) await new Promise((resolve) => setTimeout(resolve, waitMs));
  }
}

function parseMessage(block) {
  const message = {};
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue; // a ping
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    message[field] = field === "data" && message.data !== undefined ? `${message.data}\n${value}` : value;
  }
  if (message.data === undefined) return null;
  message.data = JSON.parse(message.data);
  return message;
}

function onEvent(message) {
  const job = message.data;
  const item = document.createElement("li");
  item.className = `event ${message.event}`;
  item.textContent = `#${message.id} ${message.event} `;
  const when = document.createElement("span");
  when.textContent = `at ${job.updated_at}${job.attempts ? `, attempt ${job.attempts}` : ""}`;
  item.append(when);
  $("events").append(item);
  setStatus(job.status);
  if (TERMINAL.has(job.status)) renderOutcome(job);
}

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function svg(tag, attributes = {}) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  return node;
}

function renderOutcome(job) {
  const out = $("result");
  out.replaceChildren();
  out.dataset.status = job.status;
  if (job.status === "failed") {
    out.append(el("p", `${job.error.code}: ${job.error.message}`, "error"));
    return;
  }
  if (job.status === "cancelled") {
    out.append(el("p", "The job was cancelled."));
    return;
  }
  const render = RENDERERS[job.task] || renderJson;
  render(out, job.result, job.input);
}

function renderEmbed(out, result) {
  out.append(el("h3", `${result.embeddings.length} embedding(s), ${result.dimensions} dimensions`));
  out.append(el("p", `model: ${result.model}`, "hint"));
  result.embeddings.forEach((vector, i) => {
    const norm = Math.sqrt(vector.reduce((sum, x) => sum + x * x, 0));
    const head = vector.slice(0, 6).map((x) => x.toFixed(3)).join(", ");
    out.append(el("p", `#${i}: ‖v‖ = ${norm.toFixed(4)} · [${head}, …]`, "embedding-summary"));
    const width = vector.length * 2;
    const max = Math.max(...vector.map(Math.abs)) || 1;
    const chart = svg("svg", { width, height: 40, viewBox: `0 0 ${width} 40`, role: "img" });
    vector.forEach((x, j) => {
      const h = (Math.abs(x) / max) * 19;
      chart.append(svg("rect", { x: j * 2, y: x >= 0 ? 20 - h : 20, width: 2, height: h,
        fill: x >= 0 ? "#3a7bd5" : "#d5573a" }));
    });
    out.append(chart);
  });
}

function renderEntities(out, result, input) {
  const text = input.text;
  const paragraph = el("p", undefined, "entity-text");
  let at = 0;
  for (const entity of [...result.entities].sort((a, b) => a.start - b.start)) {
    if (entity.start < at) continue;
    paragraph.append(document.createTextNode(text.slice(at, entity.start)));
    const mark = el("mark", text.slice(entity.start, entity.end), entity.label);
    mark.append(el("sup", entity.label));
    paragraph.append(mark);
    at = entity.end;
  }
  paragraph.append(document.createTextNode(text.slice(at)));
  out.append(el("h3", `${result.entities.length} entities`), paragraph);
}

function renderSimilar(out, result) {
  const table = el("table");
  table.append(row(["rank", "score", "document"], "th"));
  result.matches.forEach((m, i) => table.append(row([i + 1, m.score.toFixed(4), m.text])));
  out.append(el("h3", "Best matches"), table);
}

function row(cells, tag = "td") {
  const tr = el("tr");
  for (const cell of cells) tr.append(el(tag, String(cell)));
  return tr;
}

function renderForecast(out, result, input) {
  const history = (input.series || []).map((p) => ({ t: Date.parse(p.ds), y: p.y }));
  const ahead = result.forecast.map((p) => ({ t: Date.parse(p.ds), y: p.yhat,
    lo: p.yhat_lower, hi: p.yhat_upper }));
  const all = [...history, ...ahead];
  const ts = all.map((p) => p.t);
  const ys = [...history.map((p) => p.y), ...ahead.flatMap((p) => [p.lo, p.hi])];
  const [t0, t1, y0, y1] = [Math.min(...ts), Math.max(...ts), Math.min(...ys), Math.max(...ys)];
  const W = 720, H = 260, pad = 30;
  const x = (t) => pad + ((t - t0) / (t1 - t0 || 1)) * (W - 2 * pad);
  const y = (v) => H - pad - ((v - y0) / (y1 - y0 || 1)) * (H - 2 * pad);
  const chart = svg("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img",
    "aria-label": "forecast chart", class: "forecast-chart" });
  const band = [...ahead.map((p) => `${x(p.t)},${y(p.hi)}`),
    ...ahead.slice().reverse().map((p) => `${x(p.t)},${y(p.lo)}`)].join(" ");
  chart.append(svg("polygon", { points: band, fill: "#3a7bd533" }));
  const line = (points, color) => svg("polyline", { fill: "none", stroke: color, "stroke-width": 2,
    points: points.map((p) => `${x(p.t)},${y(p.y)}`).join(" ") });
  chart.append(line(history, "#1d2430"), line(ahead, "#3a7bd5"));
  chart.append(svg("text", { x: pad, y: 18, "font-size": 12 }));
  chart.lastChild.textContent = `history (dark), forecast with its interval (blue): ${y0.toFixed(1)} … ${y1.toFixed(1)}`;
  out.append(el("h3", `Forecast, ${ahead.length} steps`), chart);
  const table = el("table");
  table.append(row(["ds", "yhat", "lower", "upper"], "th"));
  for (const p of result.forecast) {
    table.append(row([p.ds, p.yhat.toFixed(2), p.yhat_lower.toFixed(2), p.yhat_upper.toFixed(2)]));
  }
  out.append(table);
}

function renderJson(out, result) {
  out.append(el("pre", JSON.stringify(result, null, 2)));
}

const RENDERERS = { embed: renderEmbed, entities: renderEntities, similar: renderSimilar,
  forecast: renderForecast, predict: renderJson };

document.addEventListener("DOMContentLoaded", () => {
  $("load-tasks").addEventListener("click", loadTasks);
  $("task").addEventListener("change", pickTask);
  $("job-form").addEventListener("submit", submitJob);
});
