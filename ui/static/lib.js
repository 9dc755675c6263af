// Shared helpers for every page: JSON fetches with clear errors, state in the URL, DOM building,
// time windows, number formats and small SVG charts. No framework: plain DOM and ES modules.

export class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

// GET a JSON endpoint. A non-2xx answer throws ApiError carrying the server's one-line message.
// Extra request headers (e.g. Loki's X-Loki-Response-Encoding-Flags) go in `headers`.
export async function api(path, params = {}, { signal, headers } = {}) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(params)) {
    if (v === undefined || v === null || v === "") continue;
    if (Array.isArray(v)) v.forEach((x) => url.searchParams.append(k, x));
    else url.searchParams.set(k, v);
  }
  let resp;
  try {
    resp = await fetch(url, { signal, headers: { Accept: "application/json", ...headers } });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, `cannot reach meshscope: ${e.message}`);
  }
  const text = await resp.text();
  if (!resp.ok) {
    let msg = text.trim();
    try { const j = JSON.parse(text); msg = j.error || j.message || (j.errors && j.errors[0] && j.errors[0].msg) || msg; } catch (_) { /* plain text */ }
    throw new ApiError(resp.status, msg || `HTTP ${resp.status}`);
  }
  try { return JSON.parse(text); } catch (e) { throw new ApiError(resp.status, `not JSON from ${url.pathname}`); }
}

// ---- state in the URL ----
export function getState() { return new URLSearchParams(location.search); }

// Merge params into the URL's query (empty values are removed). push=true adds a history entry.
export function setState(params, { push = false } = {}) {
  const url = new URL(location.href);
  for (const [k, v] of Object.entries(params)) {
    if (v === undefined || v === null || v === "" || v === false) url.searchParams.delete(k);
    else url.searchParams.set(k, String(v));
  }
  if (url.href === location.href) return;
  if (push) history.pushState(null, "", url);
  else history.replaceState(null, "", url);
}

// ---- DOM ----
// el("div.card#x", {onclick, title, dataset:{}}, child, "text", [more children])
export function el(spec, attrs, ...children) {
  if (attrs === undefined || attrs === null || typeof attrs !== "object" || attrs instanceof Node || Array.isArray(attrs)) {
    if (attrs !== undefined && attrs !== null) children.unshift(attrs);
    attrs = {};
  }
  const m = spec.match(/^([a-z0-9-]+)?((?:[.#][\w-]+)*)$/i);
  const node = document.createElement((m && m[1]) || "div");
  if (m && m[2]) {
    for (const part of m[2].match(/[.#][\w-]+/g)) {
      if (part[0] === ".") node.classList.add(part.slice(1));
      else node.id = part.slice(1);
    }
  }
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") node.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k === "style" && typeof v === "object") Object.assign(node.style, v);
    else if (k === "value" || k === "checked" || k === "selected") node[k] = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(node, c);
    else node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function loading(root, what = "Loading…") {
  const n = el("p.loading", { role: "status" }, what);
  root.replaceChildren(n);
  return n;
}

export function showError(root, message, { replace = true } = {}) {
  const n = el("div.error", { role: "alert" }, message);
  if (replace) root.replaceChildren(n); else root.append(n);
  return n;
}

export function emptyState(root, title, hint) {
  const n = el("div.empty", el("strong", title), hint ? el("p", hint) : null);
  root.replaceChildren(n);
  return n;
}

// ---- time ----
export const WINDOWS = ["5m", "15m", "30m", "1h", "3h", "6h", "12h", "24h", "2d", "7d"];

export function parseDuration(s) {
  const m = String(s).match(/^(\d+(?:\.\d+)?)(ms|s|m|h|d|w)$/);
  if (!m) return null;
  const mult = { ms: 0.001, s: 1, m: 60, h: 3600, d: 86400, w: 604800 }[m[2]];
  return Number(m[1]) * mult;
}

export function windowPicker(value, onChange, { label = "Window", choices = WINDOWS } = {}) {
  const sel = el("select.window", { "aria-label": label, onchange: () => onChange(sel.value) },
    choices.map((w) => el("option", { value: w, selected: w === value }, `Last ${w}`)));
  return el("label.field", el("span", label), sel);
}

export function fmtTime(ms) {
  const d = new Date(ms);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

// Nanosecond timestamp string (Loki) -> milliseconds number.
export function nsToMs(ns) { return Number(BigInt(ns) / 1000000n); }

export function fmtDurationMs(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "–";
  if (ms < 1) return `${(ms * 1000).toFixed(0)}µs`;
  if (ms < 1000) return `${ms < 10 ? ms.toFixed(2) : ms.toFixed(1)}ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(2)}s`;
  return `${(ms / 60000).toFixed(1)}m`;
}

export function fmtNumber(x, digits = 2) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  const a = Math.abs(x);
  if (a >= 1e9) return `${(x / 1e9).toFixed(digits)}G`;
  if (a >= 1e6) return `${(x / 1e6).toFixed(digits)}M`;
  if (a >= 1e4) return `${(x / 1e3).toFixed(digits)}k`;
  if (a === 0 || a >= 1) return Number.isInteger(x) ? String(x) : x.toFixed(digits);
  return x.toPrecision(digits);
}

export function fmtPercent(x) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  return `${(x * 100).toFixed(x < 0.01 && x > 0 ? 2 : 1)}%`;
}

// ---- charts ----
const PALETTE = ["#3b82f6", "#ef4444", "#10b981", "#f59e0b", "#8b5cf6", "#06b6d4", "#ec4899", "#84cc16", "#f97316", "#64748b"];
export function color(i) { return PALETTE[i % PALETTE.length]; }

const SVGNS = "http://www.w3.org/2000/svg";
export function svg(tag, attrs = {}, ...children) {
  const n = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) n.setAttribute(k, v);
  for (const c of children) if (c) n.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return n;
}

// series: [{name, points: [[tMs, value], ...]}]. Returns a figure with an SVG line chart and a legend.
// Bars instead of lines with {bars: true} (e.g. log volume). onSelect(t0, t1) is called on a drag.
export function timeChart(series, { height = 160, unit = "", bars = false, stacked = false, title = "", onSelect } = {}) {
  const width = 600, padL = 48, padB = 20, padT = 8, padR = 8;
  const fig = el("figure.chart");
  if (title) fig.append(el("figcaption", title));
  const pts = series.flatMap((s) => s.points);
  if (!pts.length) {
    fig.append(el("div.chart-empty", "No data in this window."));
    return fig;
  }
  let t0 = Math.min(...pts.map((p) => p[0])), t1 = Math.max(...pts.map((p) => p[0]));
  if (t0 === t1) { t0 -= 30000; t1 += 30000; }
  let ymax = 0;
  if (stacked) {
    const sums = new Map();
    for (const s of series) for (const [t, v] of s.points) sums.set(t, (sums.get(t) || 0) + (Number.isFinite(v) ? v : 0));
    ymax = Math.max(0, ...sums.values());
  } else {
    ymax = Math.max(0, ...pts.map((p) => (Number.isFinite(p[1]) ? p[1] : 0)));
  }
  if (ymax === 0) ymax = 1;
  const x = (t) => padL + ((t - t0) / (t1 - t0)) * (width - padL - padR);
  const y = (v) => height - padB - (v / ymax) * (height - padB - padT);
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart-svg", preserveAspectRatio: "none", role: "img" });
  for (let i = 0; i <= 3; i++) {
    const v = (ymax * i) / 3;
    root.append(svg("line", { x1: padL, x2: width - padR, y1: y(v), y2: y(v), class: "grid" }));
    root.append(svg("text", { x: padL - 4, y: y(v) + 4, "text-anchor": "end", class: "axis" }, `${fmtNumber(v, 1)}${unit}`));
  }
  for (const t of [t0, (t0 + t1) / 2, t1]) {
    const d = new Date(t);
    // seconds too when the whole chart spans a few minutes, or all three labels would read the same
    const label = `${String(d.getHours()).padStart(2, "0")}:${String(d.getMinutes()).padStart(2, "0")}` +
      (t1 - t0 < 300000 ? `:${String(d.getSeconds()).padStart(2, "0")}` : "");
    root.append(svg("text", { x: x(t), y: height - 4, "text-anchor": t === t0 ? "start" : t === t1 ? "end" : "middle", class: "axis" }, label));
  }
  const times = [...new Set(pts.map((p) => p[0]))].sort((a, b) => a - b);
  const step = times.length > 1 ? Math.min(...times.slice(1).map((t, i) => t - times[i])) : (t1 - t0);
  const bw = Math.max(1, ((step / (t1 - t0)) * (width - padL - padR)) * 0.8);
  const base = new Map();
  series.forEach((s, i) => {
    const c = s.color || color(i);
    if (bars) {
      for (const [t, v] of s.points) {
        if (!Number.isFinite(v) || v <= 0) continue;
        const b = stacked ? base.get(t) || 0 : 0;
        const r = svg("rect", { x: x(t) - bw / 2, y: y(b + v), width: bw, height: Math.max(0.5, y(b) - y(b + v)), fill: c });
        r.append(svg("title", {}, `${s.name}: ${fmtNumber(v)}${unit} at ${fmtTime(t)}`));
        root.append(r);
        if (stacked) base.set(t, b + v);
      }
    } else {
      const d = s.points.filter((p) => Number.isFinite(p[1])).map((p, j) => `${j ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join("");
      const path = svg("path", { d, stroke: c, fill: "none", "stroke-width": 1.5, "vector-effect": "non-scaling-stroke" });
      path.append(svg("title", {}, s.name));
      root.append(path);
    }
  });
  if (onSelect) {
    let start = null;
    const band = svg("rect", { class: "select-band", y: padT, height: height - padB - padT, width: 0, x: 0 });
    root.append(band);
    const tAt = (ev) => {
      const r = root.getBoundingClientRect();
      const px = ((ev.clientX - r.left) / r.width) * width;
      return t0 + ((px - padL) / (width - padL - padR)) * (t1 - t0);
    };
    root.addEventListener("mousedown", (ev) => { start = tAt(ev); });
    root.addEventListener("mousemove", (ev) => {
      if (start === null) return;
      const t = tAt(ev);
      band.setAttribute("x", x(Math.min(start, t)));
      band.setAttribute("width", Math.abs(x(t) - x(start)));
    });
    root.addEventListener("mouseup", (ev) => {
      if (start === null) return;
      const t = tAt(ev);
      const a = Math.min(start, t), b = Math.max(start, t);
      start = null;
      band.setAttribute("width", 0);
      if (b - a > step / 2) onSelect(Math.max(a, t0), Math.min(b, t1));
    });
  }
  fig.append(root);
  if (series.length > 1 || (series[0] && series[0].name)) {
    fig.append(el("ul.legend", series.slice(0, 12).map((s, i) => el("li", el("span.swatch", { style: { background: s.color || color(i) } }), s.name || "value"))));
  }
  return fig;
}

// Prometheus matrix result -> timeChart series.
export function promSeries(result, legend) {
  return result.map((r) => ({
    name: legend ? legend(r.metric) : Object.entries(r.metric).map(([k, v]) => `${k}=${v}`).join(", ") || "value",
    points: (r.values || (r.value ? [r.value] : [])).map(([t, v]) => [t * 1000, Number(v)]),
  }));
}

// Escape a value for a LogQL/PromQL string literal in double quotes.
export function quote(s) { return `"${String(s).replace(/\\/g, "\\\\").replace(/"/g, '\\"')}"`; }

// A debounced auto-refresh timer that pauses while the tab is hidden. Returns stop().
export function every(seconds, fn) {
  if (!seconds) return () => {};
  const id = setInterval(() => { if (!document.hidden) fn(); }, seconds * 1000);
  return () => clearInterval(id);
}
