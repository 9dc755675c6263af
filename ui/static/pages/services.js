// Services: RED (rate, errors, duration) from spans, per service and per operation.
//
//   /services                 every service over the window, sortable, with a trend sparkline per row
//   /services/<name>          one service: RED charts over time and a table per operation, with links to its
//                             traces (/traces?service=&operation=&lookback=) and logs (/logs?query=&since=)
//
// URL state: window (e.g. 15m), kind ("all" counts every span, default only the entry spans SERVER/CONSUMER, so a
// request counts once per service), sort + dir (table order), q (name filter, list only), refresh (auto refresh).
// Data: /api/red and /api/red/series (scripts can use the same), /loki/api/v1/label/service_name/values to
// phrase the logs link.
import {
  api, getState, setState, el, loading, showError, emptyState, windowPicker, parseDuration, fmtNumber, fmtPercent,
  fmtDurationMs, timeChart, quote, every, svg, color,
} from "/static/lib.js";

const DEFAULT_WINDOW = "15m";
const REFRESH_CHOICES = ["off", "10s", "30s", "1m", "5m"];

// Kiali's default HTTP tolerance: any error degrades, 10% fails.
function health(errorRate, requests) {
  if (!requests) return el("span.badge", "no traffic");
  if (errorRate >= 0.1) return el("span.badge.bad", "failing");
  if (errorRate > 0) return el("span.badge.warn", "degraded");
  return el("span.badge.ok", "healthy");
}

function readWindow() {
  const w = getState().get("window");
  if (w && parseDuration(w)) return w;
  if (w) setState({ window: DEFAULT_WINDOW }); // a hand-edited bad value: say what is shown instead
  return DEFAULT_WINDOW;
}

function readRefresh() {
  const r = getState().get("refresh") || "off";
  return REFRESH_CHOICES.includes(r) ? r : "off";
}

function refreshPicker(value, onChange) {
  const sel = el("select", { "aria-label": "Auto refresh", onchange: () => onChange(sel.value) },
    REFRESH_CHOICES.map((r) => el("option", { value: r, selected: r === value }, r === "off" ? "Off" : `Every ${r}`)));
  return el("label.field", el("span", "Auto refresh"), sel);
}

function kindPicker(value, onChange) {
  const sel = el("select", { "aria-label": "Span kinds", onchange: () => onChange(sel.value) },
    el("option", { value: "", selected: value !== "all" }, "Entry spans (server, consumer)"),
    el("option", { value: "all", selected: value === "all" }, "All spans"));
  return el("label.field", el("span", "Count"), sel);
}

// Epoch seconds of the series answer's bucket grid, so empty buckets show as zero traffic, not as a gap. The
// buckets cut by the window's ends are left out: the last one is still filling (and spans arrive a few seconds
// late), so its rate would always look like a sudden drop.
function grid(resp) {
  const step = resp.step;
  const start = Number(BigInt(resp.start) / 1000000000n), end = Number(BigInt(resp.end) / 1000000000n);
  const out = [];
  for (let t = Math.ceil(start / step) * step; t + step <= end && out.length < 2000; t += step) out.push(t);
  return out;
}

function filled(points, times, pick) {
  const by = new Map(points.map((p) => [p.t, p]));
  return times.map((t) => [t * 1000, by.has(t) ? pick(by.get(t)) : 0]);
}

// A small inline SVG: request rate as a line, errors per second as a red line on the same scale.
function sparkline(points, times, label) {
  const w = 120, h = 28;
  const rate = filled(points, times, (p) => p.rate);
  const errs = filled(points, times, (p) => p.rate * p.errorRate);
  const max = Math.max(1e-9, ...rate.map((p) => p[1]));
  const x = (i) => (rate.length > 1 ? (i / (rate.length - 1)) * (w - 2) + 1 : w / 2);
  const y = (v) => h - 2 - (v / max) * (h - 4);
  const path = (pts) => pts.map((p, i) => `${i ? "L" : "M"}${x(i).toFixed(1)},${y(p[1]).toFixed(1)}`).join("");
  const s = svg("svg", { class: "sparkline", viewBox: `0 0 ${w} ${h}`, width: w, height: h, role: "img",
    "aria-label": label });
  s.append(svg("path", { d: path(rate), stroke: color(0), fill: "none", "stroke-width": 1.5 }));
  if (errs.some((p) => p[1] > 0)) s.append(svg("path", { d: path(errs), stroke: color(1), fill: "none", "stroke-width": 1.2 }));
  s.append(svg("title", {}, label));
  return s;
}

// A table whose column headers sort it; the order lives in the URL (sort, dir).
function sortableTable(columns, rows, { sort, dir, onSort, rowAttrs }) {
  const col = columns.find((c) => c.key === sort && c.sortable !== false) || columns[0];
  const sign = dir === "asc" ? 1 : -1;
  const sorted = [...rows].sort((a, b) => {
    const va = col.value(a), vb = col.value(b);
    const c = typeof va === "string" ? va.localeCompare(vb) : (va ?? -Infinity) - (vb ?? -Infinity);
    return c * sign;
  });
  const head = el("tr", columns.map((c) => {
    if (c.sortable === false) return el("th", { class: c.num ? "num" : null }, c.title);
    const active = c.key === col.key;
    const btn = el("button.sort", { type: "button", onclick: () => onSort(c.key, active ? (dir === "asc" ? "desc" : "asc") : c.defaultDir || "desc") },
      c.title, active ? (dir === "asc" ? " ▲" : " ▼") : "");
    return el("th", { class: c.num ? "num" : null, "aria-sort": active ? (dir === "asc" ? "ascending" : "descending") : null }, btn);
  }));
  const body = sorted.map((r) => el("tr", rowAttrs ? rowAttrs(r) : {}, columns.map((c) => el("td", { class: c.num ? "num" : null }, c.cell(r)))));
  return el("div.table-wrap", el("table.data.services", el("thead", head), el("tbody", body)));
}

const RED_COLUMNS = [
  { key: "rate", title: "Req/s", num: true, value: (r) => r.rate, cell: (r) => fmtNumber(r.rate, 2) },
  { key: "errorRate", title: "Errors", num: true, value: (r) => r.errorRate,
    cell: (r) => el("span", { class: r.errorRate > 0 ? "err-text" : null }, fmtPercent(r.errorRate)) },
  { key: "p50Ms", title: "p50", num: true, value: (r) => r.p50Ms, cell: (r) => fmtDurationMs(r.p50Ms) },
  { key: "p95Ms", title: "p95", num: true, value: (r) => r.p95Ms, cell: (r) => fmtDurationMs(r.p95Ms) },
  { key: "p99Ms", title: "p99", num: true, value: (r) => r.p99Ms, cell: (r) => fmtDurationMs(r.p99Ms) },
  { key: "requests", title: "Requests", num: true, value: (r) => r.requests, cell: (r) => fmtNumber(r.requests, 1) },
];

// Logs of a traced service. Envoy reports as "<app>.<namespace>" (Istio's tracing name) while the app's own logs
// carry service_name="<app>"; map the one onto the other when the logs know the app but not the proxy name.
export function serviceLogQuery(service, logServices) {
  if (!logServices || logServices.includes(service)) return `{service_name=${quote(service)}}`;
  const dot = service.indexOf(".");
  if (dot > 0) {
    const app = service.slice(0, dot), ns = service.slice(dot + 1);
    if (logServices.includes(app) && ns && !ns.includes(".")) return `{service_name=${quote(app)}, k8s_namespace_name=${quote(ns)}}`;
  }
  return `{service_name=${quote(service)}}`;
}

function spanKindParam(kind) { return kind === "all" ? "all" : undefined; }

export async function render(root, ctx) {
  if (ctx.rest.length) return renderService(root, ctx, ctx.rest.join("/"));
  return renderList(root, ctx);
}

// Common frame of both views: toolbar with window, span kinds, refresh; a content area; load() with abort and
// a "refreshing" note that keeps the old numbers on screen while new ones load.
function frame(root, title, intro, extraTools, load) {
  let window_ = readWindow();
  let kind = getState().get("kind") === "all" ? "all" : "";
  let refresh = readRefresh();
  let stopTimer = () => {};
  let ctrl = null;
  const status = el("span.muted.status", { role: "status" });
  const content = el("div.content");
  const state = { get window() { return window_; }, get kind() { return kind; }, content };

  async function run(first) {
    if (ctrl) ctrl.abort();
    ctrl = new AbortController();
    const mine = ctrl;
    if (first) loading(content, "Loading RED from spans…");
    else status.textContent = "Refreshing…";
    try {
      await load(state, mine.signal);
      status.textContent = `Updated ${new Date().toLocaleTimeString()}`;
    } catch (e) {
      if (e.name === "AbortError" || mine.signal.aborted) return;
      status.textContent = "";
      showError(content, `Could not load: ${e.message}`);
    }
  }
  function restartTimer() {
    stopTimer();
    stopTimer = every(refresh === "off" ? 0 : parseDuration(refresh), () => run(false));
  }
  const tools = el("div.toolbar",
    windowPicker(window_, (w) => { window_ = w; setState({ window: w }, { push: true }); run(true); }),
    kindPicker(kind, (k) => { kind = k; setState({ kind: k }, { push: true }); run(true); }),
    extraTools,
    refreshPicker(refresh, (r) => { refresh = r; setState({ refresh: r === "off" ? "" : r }); restartTimer(); }),
    el("button", { type: "button", onclick: () => run(false) }, "Refresh"),
    status);
  root.replaceChildren(title, intro, tools, content);
  run(true);
  restartTimer();
  return { state, rerun: () => run(true), cleanup: () => { stopTimer(); if (ctrl) ctrl.abort(); } };
}

// ------------------------------------------------------------------------------------------------ list
function renderList(root, ctx) {
  let data = null;
  let filter = getState().get("q") || "";
  const filterInput = el("input", { type: "search", value: filter, placeholder: "name contains…", "aria-label": "Filter services",
    oninput: () => { filter = filterInput.value; setState({ q: filter }); draw(); } });
  const f = frame(root, el("h1", "Services"),
    el("p.muted.intro", "Rate, errors and duration of every service, from its spans. Click a service for its operations."),
    el("label.field", el("span", "Filter"), filterInput),
    async (state, signal) => {
      const p = { since: state.window, spanKind: spanKindParam(state.kind) };
      const [red, series] = await Promise.all([api("/api/red", p, { signal }), api("/api/red/series", p, { signal })]);
      data = { red, series, window: state.window, kind: state.kind };
      draw();
    });

  function draw() {
    if (!data) return;
    const { red, series, window: w } = data;
    const content = f.state.content;
    if (!red.data.length) {
      emptyState(content, `No spans in the last ${w}.`,
        data.kind === "all" ? "Send traces over OTLP (:4318 or :4317), or pick a longer window."
          : "Only server and consumer spans count here: pick \"All spans\", a longer window, or send traces over OTLP (:4318).");
      return;
    }
    const times = grid(series);
    const bySvc = new Map(series.series.map((s) => [s.service, s.points]));
    const needle = filter.trim().toLowerCase();
    const rows = red.data.filter((r) => !needle || r.service.toLowerCase().includes(needle));
    const st = getState();
    const href = (r) => `/services/${encodeURIComponent(r.service)}?${new URLSearchParams({ window: w, ...(data.kind ? { kind: data.kind } : {}) })}`;
    const columns = [
      { key: "service", title: "Service", defaultDir: "asc", value: (r) => r.service,
        cell: (r) => el("a.service-link", { href: href(r) }, r.service) },
      { key: "health", title: "Health", value: (r) => (r.requests ? (r.errorRate >= 0.1 ? 3 : r.errorRate > 0 ? 2 : 1) : 0),
        cell: (r) => health(r.errorRate, r.requests) },
      ...RED_COLUMNS,
      { key: "trend", title: "Trend (req/s, errors/s)", sortable: false,
        cell: (r) => sparkline(bySvc.get(r.service) || [], times, `${r.service}: requests and errors per second over the last ${w}`) },
    ];
    const table = sortableTable(columns, rows, {
      sort: st.get("sort") || "service", dir: st.get("dir") || (st.get("sort") ? "desc" : "asc"),
      onSort: (key, dir) => { setState({ sort: key, dir }, { push: false }); draw(); },
      rowAttrs: (r) => ({ class: "clickable", dataset: { service: r.service },
        onclick: (ev) => { if (!ev.target.closest("a, button")) ctx.navigate(href(r)); } }),
    });
    const note = el("p.muted.small", `${rows.length} of ${red.data.length} services · rates over the last ${w}` +
      (data.kind === "all" ? " · every span counted" : " · server and consumer spans"));
    content.replaceChildren(rows.length ? table : el("div.empty", el("strong", `No service name contains "${filter}".`), el("p", "Clear the filter to see all services.")), note);
  }
  return f.cleanup;
}

// ------------------------------------------------------------------------------------------------ one service
function statCard(label, value, extra) {
  return el("div.card.stat", el("div.stat-label", label), el("div.stat-value", value), extra || null);
}

function renderService(root, ctx, name) {
  let data = null;
  const back = el("a", { href: `/services?${new URLSearchParams({ window: readWindow() })}` }, "← All services");
  const links = el("span.links");
  const f = frame(root, el("h1", el("span.muted", "Service "), name),
    el("p.intro", back, links),
    null,
    async (state, signal) => {
      const p = { since: state.window, spanKind: spanKindParam(state.kind), service: name };
      const [red, series, ops, opSeries, logSvcs] = await Promise.all([
        api("/api/red", p, { signal }),
        api("/api/red/series", p, { signal }),
        api("/api/red", { ...p, by: "operation" }, { signal }),
        api("/api/red/series", { ...p, by: "operation" }, { signal }),
        // only to phrase the logs link: without it the link still works for apps that log under their own name
        api("/loki/api/v1/label/service_name/values", { since: state.window }, { signal }).then((r) => r.data || [], () => null),
      ]);
      data = { red, series, ops, opSeries, logSvcs, window: state.window, kind: state.kind };
      draw();
    });

  function draw() {
    const { red, series, ops, opSeries, logSvcs, window: w } = data;
    const content = f.state.content;
    back.setAttribute("href", `/services?${new URLSearchParams({ window: w })}`);
    const logQuery = serviceLogQuery(name, logSvcs);
    const tracesHref = (op) => `/traces?${new URLSearchParams({ service: name, ...(op ? { operation: op } : {}), lookback: w })}`;
    const logsHref = `/logs?${new URLSearchParams({ query: logQuery, since: w })}`;
    links.replaceChildren(" · ", el("a.traces-link", { href: tracesHref("") }, "Traces"), " · ",
      el("a.logs-link", { href: logsHref }, "Logs"), " · ", el("a", { href: "/graph" }, "Graph"));
    const row = red.data[0];
    if (!row) {
      emptyState(content, `No ${data.kind === "all" ? "" : "server or consumer "}spans from ${name} in the last ${w}.`,
        data.kind === "all" ? "Pick a longer window, or check the service name."
          : "Pick \"All spans\" if this service only sends client spans, or a longer window.");
      return;
    }
    const times = grid(series);
    const pts = (series.series[0] && series.series[0].points) || [];
    const byT = new Map(pts.map((p) => [p.t, p]));
    const stats = el("div.stats",
      statCard("Requests/s", fmtNumber(row.rate, 2), el("div.muted.small", `${fmtNumber(row.requests, 1)} in ${w}`)),
      statCard("Error rate", fmtPercent(row.errorRate), health(row.errorRate, row.requests)),
      statCard("p50", fmtDurationMs(row.p50Ms)), statCard("p95", fmtDurationMs(row.p95Ms)), statCard("p99", fmtDurationMs(row.p99Ms)));
    const charts = el("div.grid.charts",
      el("div.card", timeChart([{ name: "requests/s", points: filled(pts, times, (p) => p.rate) }],
        { title: "Request rate (per second)", unit: "" })),
      el("div.card", timeChart([{ name: "errors/s", color: color(1), points: filled(pts, times, (p) => p.rate * p.errorRate) }],
        { title: "Errors (per second)", bars: true })),
      el("div.card", timeChart(["p50Ms", "p95Ms", "p99Ms"].map((k, i) => ({
        name: k.slice(0, 3), color: color([2, 3, 1][i]),
        points: times.filter((t) => byT.has(t)).map((t) => [t * 1000, byT.get(t)[k]]) })), // no requests: no percentile

      { title: "Duration percentiles (ms)", unit: "ms" })));

    const opTimes = grid(opSeries);
    const opPts = new Map(opSeries.series.map((s) => [s.operation, s.points]));
    const st = getState();
    const columns = [
      { key: "operation", title: "Operation", defaultDir: "asc", value: (r) => r.operation,
        cell: (r) => el("a.op-traces", { href: tracesHref(r.operation), title: "Traces of this operation" }, r.operation) },
      ...RED_COLUMNS,
      { key: "trend", title: "Trend", sortable: false,
        cell: (r) => sparkline(opPts.get(r.operation) || [], opTimes, `${r.operation}: requests and errors per second`) },
      { key: "links", title: "", sortable: false,
        cell: (r) => el("span.row-links", el("a.traces-link", { href: tracesHref(r.operation) }, "Traces"), " ",
          el("a.logs-link", { href: logsHref }, "Logs")) },
    ];
    const table = ops.data.length ? sortableTable(columns, ops.data, {
      sort: st.get("sort") || "rate", dir: st.get("dir") || "desc",
      onSort: (key, dir) => { setState({ sort: key, dir }); draw(); },
      rowAttrs: (r) => ({ dataset: { operation: r.operation } }),
    }) : el("div.empty", el("strong", "No operations in this window."));
    content.replaceChildren(stats, charts, el("h2", `Operations (${ops.data.length})`), table);
  }
  return f.cleanup;
}
