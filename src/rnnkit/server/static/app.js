// The rnnkit playground: pick a loaded model, send its task's request, show the answer.
// Plain JavaScript, no build step. Every value from the server is shown with textContent.
"use strict";

const $ = (id) => document.getElementById(id);
const PANELS = ["classify", "textgen", "translate", "forecast"];  // the rest get the JSON panel
const SVG = "http://www.w3.org/2000/svg";
let models = [];
let streaming = null;  // the AbortController of the generation running now

function status(message, isError = false) {
  $("status").textContent = message;
  $("status").className = isError ? "error" : "";
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const token = $("token").value.trim();
  if (token) h["Authorization"] = "Bearer " + token;
  return h;
}

function current() {
  return models.find((m) => m.name === $("model").value);
}

async function post(path, request, signal) {
  const response = await fetch(path, { method: "POST", headers: headers(), body: JSON.stringify(request), signal });
  if (!response.ok) {
    const body = await response.json().catch(() => ({ error: response.statusText }));
    throw new Error(`${response.status}: ${body.error || JSON.stringify(body)}`);
  }
  return response;
}

async function predict(request) {
  const started = performance.now();
  const answer = await (await post(`/v1/${current().name}/predict`, request)).json();
  status(`answered in ${Math.round(performance.now() - started)} ms`);
  return answer;
}

// Server-sent events over a POST: read "data: {...}" blocks until "event: done".
async function stream(request, onPiece, signal) {
  const response = await post(`/v1/${current().name}/generate`, request, signal);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const event = (block.match(/^event: (.*)$/m) || [])[1] || "message";
      const data = JSON.parse((block.match(/^data: (.*)$/m) || [])[1] || "{}");
      if (event === "done") return;
      if (event === "error") throw new Error(data.error);
      onPiece(data);
    }
  }
}

function show(model) {
  const panel = PANELS.includes(model.task) ? model.task : "json";
  for (const name of [...PANELS, "json"]) $("panel-" + name).hidden = name !== panel;
  if (panel === "json") $("json-schema").textContent = JSON.stringify(model.request, null, 2);
  status(`${model.name}: ${model.task} (${model.model_type})${model.streams ? ", streams" : ""}`);
}

async function loadModels() {
  const response = await fetch("/v1/models", { headers: headers() });
  const body = await response.json();
  if (!response.ok) return status(`${response.status}: ${body.error}`, true);
  models = body.models;
  const select = $("model");
  select.replaceChildren(...models.map((m) => new Option(`${m.name} (${m.task})`, m.name)));
  if (models.length) show(current());
}

function guarded(button, action) {
  $(button).addEventListener("click", async () => {
    $(button).disabled = true;
    try { await action(); } catch (error) { if (error.name !== "AbortError") status(error.message, true); }
    finally { $(button).disabled = false; }
  });
}

// ---------------------------------------------------------------- classify
guarded("classify-run", async () => {
  const texts = $("classify-texts").value.split("\n").filter((t) => t.trim());
  const { predictions } = await predict({ texts });
  const table = document.createElement("table");
  table.className = "probs";
  predictions.forEach((p, i) => {
    const head = table.insertRow();
    const cell = head.insertCell();
    cell.colSpan = 3;
    cell.textContent = `${texts[i]}  →  ${p.label}`;
    cell.style.fontWeight = "bold";
    for (const [label, prob] of Object.entries(p.probabilities).sort((a, b) => b[1] - a[1])) {
      const row = table.insertRow();
      row.insertCell().textContent = label;
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.width = `${Math.round(prob * 200)}px`;
      row.insertCell().append(bar);
      row.insertCell().textContent = prob.toFixed(3);
    }
  });
  $("classify-output").replaceChildren(table);
});

// ---------------------------------------------------------------- textgen
guarded("textgen-run", async () => {
  const prime = $("textgen-prime").value;
  const output = $("textgen-output");
  output.textContent = prime;
  streaming = new AbortController();
  $("textgen-stop").disabled = false;
  let pieces = 0;
  try {
    await stream({ prime, max_tokens: Number($("textgen-tokens").value),
                   temperature: Number($("textgen-temperature").value) },
                 (piece) => { output.textContent += piece.text; pieces += 1; }, streaming.signal);
    status(`${pieces} pieces streamed`);
  } finally {
    $("textgen-stop").disabled = true;
    streaming = null;
  }
});
$("textgen-stop").addEventListener("click", () => { if (streaming) streaming.abort(); status("stopped"); });

// ---------------------------------------------------------------- translate
guarded("translate-run", async () => {
  const attention = $("translate-attention").checked;
  const request = { texts: [$("translate-text").value], beam: Number($("translate-beam").value) };
  if ("attention" in (current().request.properties || {})) request.attention = attention;
  const { translations } = await predict(request);
  const t = translations[0];
  $("translate-output").textContent = t.translation;
  $("translate-attention-map").replaceChildren(t.attention ? attentionMap(t) : "");
});

// Target tokens down, source tokens across, darker = more attention.
function attentionMap({ attention, source_tokens: src = [], target_tokens: tgt = [] }) {
  const cell = 22, left = 90, top = 70;
  const svg = element("svg", { width: left + cell * attention[0].length + 10, height: top + cell * attention.length + 10 });
  src.forEach((token, j) => svg.append(label(token, left + j * cell + cell / 2, top - 6, -60)));
  attention.forEach((row, i) => {
    svg.append(label(tgt[i] ?? "", left - 6, top + i * cell + cell / 2 + 4, 0, "end"));
    row.forEach((w, j) => svg.append(element("rect", { x: left + j * cell, y: top + i * cell, width: cell - 1,
      height: cell - 1, fill: `rgba(47, 111, 214, ${Math.max(0.03, w)})` })));
  });
  return svg;
}

// ---------------------------------------------------------------- forecast
guarded("forecast-run", async () => {
  const values = $("forecast-series").value.split(/[\s,;]+/).filter(Boolean).map(Number);
  if (values.length < 3 || values.some(Number.isNaN)) throw new Error("the history must be at least 3 numbers");
  const item = { values };
  const start = $("forecast-start").value.trim();
  if (start) item.dates = dates(start, $("forecast-every").value, values.length);
  const request = { series: [item] };
  if ($("forecast-horizon").value) request.horizon = Number($("forecast-horizon").value);
  const forecast = (await predict(request)).forecasts[0];
  const levels = Object.keys(forecast.quantiles).sort((a, b) => a - b);
  const interval = levels.length >= 2 ? [forecast.quantiles[levels[0]], forecast.quantiles[levels.at(-1)]] : null;
  $("forecast-plot").replaceChildren(forecastPlot(values, forecast.median, interval));
  $("forecast-output").textContent = `${forecast.method}; median ${forecast.median.map((v) => v.toPrecision(4)).join(", ")}` +
    (interval ? `\ninterval ${levels[0]}-${levels.at(-1)} shaded` : "\nno interval (naive forecast)");
});

// `count` ISO dates from `start`, one `every` apart; a month-end start stays on month ends.
function dates(start, every, count) {
  const first = new Date(start + "T00:00:00Z");
  if (Number.isNaN(first.getTime())) throw new Error(`first date ${start} is not a date like 1958-01-01`);
  const monthEnd = new Date(Date.UTC(first.getUTCFullYear(), first.getUTCMonth() + 1, 0)).getUTCDate() === first.getUTCDate();
  const months = { month: 1, quarter: 3, year: 12 }[every];
  return Array.from({ length: count }, (_, i) => {
    let d;
    if (months) {
      const m = first.getUTCMonth() + i * months;
      d = monthEnd ? new Date(Date.UTC(first.getUTCFullYear(), m + 1, 0))
                   : new Date(Date.UTC(first.getUTCFullYear(), m, first.getUTCDate()));
    } else {
      d = new Date(first.getTime() + i * (every === "week" ? 7 : 1) * 86400000);
    }
    return d.toISOString().slice(0, 10);
  });
}

// The history, then the point forecast and the interval (a shaded band) after it.
function forecastPlot(series, point, interval) {
  const all = [...series, ...point, ...(interval ? interval.flat() : [])];
  const width = 720, height = 260, pad = 30, n = series.length + point.length;
  const ymin = Math.min(...all), ymax = Math.max(...all), span = ymax - ymin || 1;
  const x = (i) => pad + (i * (width - 2 * pad)) / Math.max(1, n - 1);
  const y = (v) => height - pad - ((v - ymin) * (height - 2 * pad)) / span;
  const points = (values, offset) => values.map((v, i) => `${x(i + offset)},${y(v)}`);
  const svg = element("svg", { width, height, role: "img", id: "forecast-svg" });
  svg.append(element("rect", { x: 0, y: 0, width, height, fill: "#fff", stroke: "#dde1e7" }));
  if (interval) {
    const band = [...points(interval[0], series.length), ...points(interval[1], series.length).reverse()];
    svg.append(element("polygon", { points: band.join(" "), fill: "rgba(214, 111, 47, 0.25)", class: "interval" }));
  }
  svg.append(element("polyline", { points: points(series, 0).join(" "), fill: "none", stroke: "#1d2430",
                                   "stroke-width": 1.5, class: "history" }));
  svg.append(element("polyline", { points: points([series.at(-1), ...point], series.length - 1).join(" "),
                                   fill: "none", stroke: "#d66f2f", "stroke-width": 2, class: "forecast" }));
  svg.append(label(ymax.toPrecision(4), 2, pad), label(ymin.toPrecision(4), 2, height - pad));
  return svg;
}

// ---------------------------------------------------------------- any other task
guarded("json-run", async () => {
  const answer = await predict(JSON.parse($("json-request").value));
  $("json-output").textContent = JSON.stringify(answer, null, 2);
});

function element(name, attributes) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attributes)) node.setAttribute(k, v);
  return node;
}

function label(text, x, y, rotate = 0, anchor = "start") {
  const node = element("text", { x, y, "text-anchor": anchor, transform: rotate ? `rotate(${rotate} ${x} ${y})` : "" });
  node.textContent = text;
  return node;
}

$("model").addEventListener("change", () => show(current()));
$("token").addEventListener("change", loadModels);
loadModels().catch((error) => status(error.message, true));
