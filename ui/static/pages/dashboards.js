// Dashboards: JSON definitions from the dashboards folder (GET /api/dashboards, /api/dashboards/<id>) rendered as
// a grid of panels, each running its own PromQL or LogQL query against the same HTTP APIs scripts use.
//
//   /dashboards               the list
//   /dashboards/<id>          one dashboard; URL state: window (e.g. 1h), var-<name> per variable, refresh
//
// The format (also in dashboards/README.md):
//
//   { "title": "Mesh overview",               required
//     "description": "...",                   optional, shown under the title and in the list
//     "window": "1h",                         optional default window (the URL's ?window= wins)
//     "refresh": "30s",                       optional default auto refresh: off, 10s, 30s, 1m, 5m
//     "variables": [ {
//        "name": "service",                   used in queries as $service or ${service}
//        "label": "Service",                  optional, shown next to the picker
//        "type": "query",                     "query" (default), "custom" (fixed "values") or "textbox" (free text)
//        "query": "label_values(istio_requests_total, destination_service_name)",
//                 label_values(<label>) | label_values(<PromQL selector>, <label>)   Prometheus label values
//                 log_label_values(<label>) | log_label_values(<LogQL selector>, <label>)   Loki label values
//                 services()                                                          traced services (/api/services)
//        "values": ["a", "b"],                for type custom
//        "includeAll": true, "allValue": ".*",  an "All" choice that substitutes allValue (default .*): use =~
//        "default": "productpage" } ],        the choice when the URL names none ("__all" for All); else the first
//     "panels": [ {
//        "title": "Request rate",             required
//        "type": "timeseries",                timeseries | stat | table | logs
//        "datasource": "promql",              promql | logql (logs panels: logql log queries only)
//        "query": "sum(rate(x{a=\"$var\"}[$__rate_interval]))",
//        "legend": "{{destination_service_name}}",   optional series name template ({{label}})
//        "queries": [{"query": "...", "legend": "p95"}],   instead of query/legend: several queries in one panel
//        "unit": "req/s",                     ratio (0..1 shown as %), percent, ms, s, bytes, bytes/s, or any suffix
//        "span": 6,                           width in twelfths of the row (default 6; 12 = full width)
//        "bars": false, "stacked": false,     timeseries drawing
//        "colors": {"error": "#ef4444"},      timeseries: colour per series name (after the legend template)
//        "thresholds": [0.01, 0.1],           stat: warn and bad levels (colours the value)
//        "limit": 100,                        logs: lines to show
//        "description": "..." } ] }
//
// Variables are substituted as text, escaped for a double-quoted string, so use them inside quotes:
// {service_name="$service"}. Built-ins: $__interval (the step of a range query), $__rate_interval (max(4×15s,
// step+15s), a safe rate() range for 15s scrapes), $__range (the window). A panel whose query fails shows the
// server's message in that panel only; the rest of the dashboard keeps working.
import {
  api, getState, setState, el, loading, showError, emptyState, windowPicker, parseDuration, fmtNumber, fmtTime,
  fmtDurationMs, nsToMs, timeChart, promSeries, every,
} from "/static/lib.js";

const DEFAULT_WINDOW = "1h";
const REFRESH_CHOICES = ["off", "10s", "30s", "1m", "5m"];
const SCRAPE_S = 15;
const ALL = "__all";
const MAX_POINTS = 120; // per series: enough for a 600px chart, cheap for the server

export async function render(root, ctx) {
  if (ctx.rest.length) return renderDashboard(root, ctx.rest[0]);
  return renderList(root);
}

// ------------------------------------------------------------------------------------------------ list
async function renderList(root) {
  root.replaceChildren(el("h1", "Dashboards"));
  const body = el("div");
  root.append(body);
  loading(body, "Loading dashboards…");
  let data;
  try {
    data = await api("/api/dashboards");
  } catch (e) {
    showError(body, `Could not list dashboards: ${e.message}`);
    return;
  }
  if (!data.dashboards.length) {
    emptyState(body, "No dashboards yet.", "Put dashboard JSON files in meshscope's dashboards folder (see dashboards/README.md) and reload.");
    return;
  }
  body.replaceChildren(el("div.dash-list", data.dashboards.map((d) => el("div.card.dashboard-card", { dataset: { id: d.id } },
    el("h2", el("a", { href: `/dashboards/${encodeURIComponent(d.id)}` }, d.title)),
    d.description ? el("p.muted", d.description) : null,
    el("span.badge", `${d.panels} panel${d.panels === 1 ? "" : "s"}`)))));
}

// ------------------------------------------------------------------------------------------------ helpers
function fmtSeconds(s) {
  // Prometheus/Loki duration text for a number of seconds
  s = Math.max(1, Math.round(s));
  if (s % 3600 === 0) return `${s / 3600}h`;
  if (s % 60 === 0) return `${s / 60}m`;
  return `${s}s`;
}

function stepFor(windowS) {
  const raw = Math.max(10, windowS / MAX_POINTS);
  const nice = [10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400];
  return nice.find((n) => n >= raw) || Math.ceil(raw);
}

function escapeValue(v) { return String(v).replace(/\\/g, "\\\\").replace(/"/g, '\\"'); }

// Replace $name / ${name} of declared variables (escaped for a "..." literal) and the built-ins (raw durations).
// Unknown names stay as written, so the query's parser says what is wrong.
export function substitute(text, values, builtins) {
  return String(text).replace(/\$\{(\w+)\}|\$(\w+)/g, (m, a, b) => {
    const name = a || b;
    if (Object.prototype.hasOwnProperty.call(builtins, name)) return builtins[name];
    if (Object.prototype.hasOwnProperty.call(values, name)) return escapeValue(values[name]);
    return m;
  });
}

// label_values(...), log_label_values(...), services(): the argument split at its last top-level comma.
function parseVarQuery(q) {
  const m = String(q || "").trim().match(/^(label_values|log_label_values|services)\s*\(([\s\S]*)\)$/);
  if (!m) throw new Error(`unknown variable query ${JSON.stringify(q)}: use label_values(...), log_label_values(...) or services()`);
  const arg = m[2].trim();
  if (m[1] === "services") return { fn: m[1] };
  let depth = 0, inStr = false, cut = -1;
  for (let i = 0; i < arg.length; i++) {
    const c = arg[i];
    if (inStr) { if (c === "\\") i++; else if (c === inStr) inStr = false; continue; }
    if (c === '"' || c === "'" || c === "`") inStr = c;
    else if ("({[".includes(c)) depth++;
    else if (")}]".includes(c)) depth--;
    else if (c === "," && depth === 0) cut = i;
  }
  const label = (cut >= 0 ? arg.slice(cut + 1) : arg).trim();
  const selector = cut >= 0 ? arg.slice(0, cut).trim() : "";
  if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(label)) throw new Error(`variable query ${JSON.stringify(q)}: "${label}" is not a label name`);
  return { fn: m[1], label, selector };
}

async function variableOptions(v, values, builtins, range, signal) {
  if (v.type === "custom") return (v.values || []).map(String);
  const q = parseVarQuery(substitute(v.query, values, builtins));
  if (q.fn === "services") return (await api("/api/services", {}, { signal })).data || [];
  if (q.fn === "label_values") {
    const r = await api(`/api/v1/label/${encodeURIComponent(q.label)}/values`,
      { "match[]": q.selector || undefined, start: range.start, end: range.end }, { signal });
    return r.data || [];
  }
  const r = await api(`/loki/api/v1/label/${encodeURIComponent(q.label)}/values`,
    { query: q.selector || undefined, start: `${range.start}000000000`, end: `${range.end}000000000` }, { signal });
  return r.data || [];
}

// Units: "ratio" (0..1, shown as %), "percent", "s" (shown as ms), "ms", "bytes", "bytes/s"; any other text is
// a suffix ("req/s", "rows").
const BYTE_STEPS = [[1e9, "GB"], [1e6, "MB"], [1e3, "kB"], [1, "B"]];

function fmtValue(v, unit) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  if (!Number.isFinite(v)) return String(v);
  switch (unit) {
    case "ratio": return `${fmtNumber(v * 100, 2)}%`;
    case "percent": return `${fmtNumber(v, 2)}%`;
    case "s": return fmtDurationMs(v * 1000);
    case "ms": return fmtDurationMs(v);
    case "bytes": case "bytes/s": {
      const [k, u] = BYTE_STEPS.find(([n]) => Math.abs(v) >= n) || [1, "B"];
      return `${fmtNumber(v / k, 2)} ${u}${unit === "bytes/s" ? "/s" : ""}`;
    }
    default: return unit ? `${fmtNumber(v, 2)}${/^[/%]/.test(unit) ? "" : " "}${unit}` : fmtNumber(v, 2);
  }
}

// How a chart shows a unit: a factor for the values, a short suffix for the axis (the chart's margin is narrow)
// and the unit's name for the panel header when the suffix would not fit.
function chartUnit(unit, maxAbs) {
  switch (unit) {
    case "ratio": return { k: 100, axis: "%", label: "" };
    case "percent": return { k: 1, axis: "%", label: "" };
    case "s": return { k: 1000, axis: "ms", label: "" };
    case "ms": return { k: 1, axis: "ms", label: "" };
    case "bytes": case "bytes/s": {
      const [n, u] = BYTE_STEPS.find(([x]) => maxAbs >= x) || [1, "B"];
      return { k: 1 / n, axis: u === "B" ? "B" : "", label: unit === "bytes/s" ? `${u}/s` : u };
    }
    default: return { k: 1, axis: "", label: unit || "" };
  }
}

function legendFn(template) {
  if (!template) return undefined;
  return (metric) => template.replace(/\{\{\s*(\w+)\s*\}\}/g, (_, n) => metric[n] ?? "");
}

function targets(panel) {
  if (Array.isArray(panel.queries)) return panel.queries.map((q) => ({ query: q.query, legend: q.legend }));
  return [{ query: panel.query, legend: panel.legend }];
}

// ------------------------------------------------------------------------------------------------ panels
async function runRange(panel, query, range, signal) {
  if (panel.datasource === "logql") {
    const r = await api("/loki/api/v1/query_range", { query, start: `${range.start}000000000`, end: `${range.end}000000000`,
      step: `${range.step}s` }, { signal });
    if (r.data.resultType === "streams") throw new Error("this query returns log lines: use a metric query (e.g. count_over_time) or a logs panel");
    return r.data.result;
  }
  const r = await api("/api/v1/query_range", { query, start: range.start, end: range.end, step: range.step }, { signal });
  return r.data.result;
}

async function runInstant(panel, query, range, signal) {
  const r = panel.datasource === "logql"
    ? await api("/loki/api/v1/query", { query, time: `${range.end}000000000` }, { signal })
    : await api("/api/v1/query", { query, time: range.end }, { signal });
  const d = r.data;
  if (d.resultType === "streams") throw new Error("this query returns log lines: use a metric query or a logs panel");
  if (d.resultType === "scalar") return [{ metric: {}, value: d.result }];
  if (d.resultType === "matrix") return d.result.map((s) => ({ metric: s.metric, value: s.values[s.values.length - 1] }));
  return d.result;
}

const RENDERERS = {
  async timeseries(panel, qs, range, signal) {
    const results = await Promise.all(qs.map((t) => runRange(panel, t.query, range, signal)));
    const raw = results.flatMap((res, i) => promSeries(res, legendFn(qs[i].legend)));
    if (!raw.length) return noData(panel);
    const maxAbs = Math.max(0, ...raw.flatMap((s) => s.points.map((p) => (Number.isFinite(p[1]) ? Math.abs(p[1]) : 0))));
    const u = chartUnit(panel.unit, maxAbs);
    const colors = panel.colors || {};
    const series = raw.map((s) => ({ ...s, color: colors[s.name], points: s.points.map(([t, v]) => [t, v * u.k]) }));
    const fig = timeChart(series, { unit: u.axis, bars: !!panel.bars, stacked: !!panel.stacked });
    if (u.label) fig.prepend(el("figcaption", u.label));
    return fig;
  },
  async stat(panel, qs, range, signal) {
    const results = await Promise.all(qs.map((t) => runInstant(panel, t.query, range, signal)));
    const items = results.flatMap((res, i) => res.map((s) => ({ s, legend: legendFn(qs[i].legend) })));
    if (!items.length) return noData(panel);
    const [warn, bad] = panel.thresholds || [];
    return el("div.stat-list", items.slice(0, 12).map(({ s, legend }) => {
      const v = Number(s.value[1]);
      const cls = bad !== undefined && v >= bad ? "err-text" : warn !== undefined && v >= warn ? "warn-text" : null;
      const name = legend ? legend(s.metric) : Object.entries(s.metric).filter(([n]) => n !== "__name__").map(([n, x]) => `${n}=${x}`).join(", ");
      return el("div.stat", el(cls ? `div.stat-value.${cls}` : "div.stat-value", fmtValue(v, panel.unit)), name ? el("div.stat-label", name) : null);
    }));
  },
  async table(panel, qs, range, signal) {
    const results = await Promise.all(qs.map((t) => runInstant(panel, t.query, range, signal)));
    const rows = results.flat();
    if (!rows.length) return noData(panel);
    const labels = [...new Set(rows.flatMap((r) => Object.keys(r.metric)))].filter((n) => n !== "__name__").sort();
    rows.sort((a, b) => Number(b.value[1]) - Number(a.value[1]));
    return el("div.table-wrap", el("table.data",
      el("thead", el("tr", labels.map((n) => el("th", n)), el("th.num", "Value"))),
      el("tbody", rows.slice(0, 200).map((r) => el("tr", labels.map((n) => el("td", r.metric[n] ?? "")),
        el("td.num", fmtValue(Number(r.value[1]), panel.unit)))))));
  },
  async logs(panel, qs, range, signal) {
    if (panel.datasource !== "logql") throw new Error("a logs panel needs datasource logql");
    const limit = Math.min(Number(panel.limit) || 100, 1000);
    const r = await api("/loki/api/v1/query_range", { query: qs[0].query, start: `${range.start}000000000`,
      end: `${range.end}000000000`, limit, direction: "backward" }, { signal });
    if (r.data.resultType !== "streams") throw new Error("this query returns samples, not log lines: use a timeseries panel");
    const lines = r.data.result.flatMap((s) => s.values.map(([ts, line]) => ({ ts, line, labels: s.stream })))
      .sort((a, b) => (BigInt(b.ts) > BigInt(a.ts) ? 1 : BigInt(b.ts) < BigInt(a.ts) ? -1 : 0)).slice(0, limit);
    if (!lines.length) return noData(panel, "No log lines match in this window.");
    return el("ul.logs-list", lines.map((l) => {
      const tid = l.labels.trace_id;
      const level = l.labels.level;
      return el("li",
        el("span.muted", fmtTime(nsToMs(l.ts))), " ",
        level ? el(level === "error" || level === "fatal" ? "span.badge.bad" : level === "warn" ? "span.badge.warn" : "span.badge", level) : null, " ",
        l.labels.service_name ? el("span.muted", l.labels.service_name) : null, " ",
        l.line,
        tid ? [" ", el("a.trace-link", { href: `/traces/${encodeURIComponent(tid)}`, title: "Open this trace" }, "trace")] : null);
    }));
  },
};

function noData(panel, text) {
  return el("div.chart-empty", text || "No data in this window.");
}

// ------------------------------------------------------------------------------------------------ one dashboard
async function renderDashboard(outer, id) {
  // Everything goes into our own node: if the user leaves while the definition loads, the router empties `outer`
  // for the next page and we notice that our node is gone.
  const root = el("div.dashboard");
  outer.replaceChildren(root);
  loading(root, "Loading dashboard…");
  let dash;
  try {
    dash = await api(`/api/dashboards/${encodeURIComponent(id)}`);
  } catch (e) {
    if (!root.isConnected) return;
    root.replaceChildren(el("h1", "Dashboards"));
    showError(root, e.status === 404 ? `No dashboard named "${id}". Pick one from the list.` : `Could not load dashboard "${id}": ${e.message}`, { replace: false });
    root.append(el("p", el("a", { href: "/dashboards" }, "← All dashboards")));
    return;
  }
  if (!root.isConnected) return;
  const vars = Array.isArray(dash.variables) ? dash.variables : [];
  const panels = Array.isArray(dash.panels) ? dash.panels : [];
  const st = getState();
  let window_ = st.get("window") && parseDuration(st.get("window")) ? st.get("window") : (dash.window && parseDuration(dash.window) ? dash.window : DEFAULT_WINDOW);
  let refresh = REFRESH_CHOICES.includes(st.get("refresh")) ? st.get("refresh") : (REFRESH_CHOICES.includes(dash.refresh) ? dash.refresh : "off");
  const current = {}; // variable name -> chosen value (ALL for All)
  let ctrl = null;
  let stopTimer = () => {};

  const varBar = el("span.variables");
  const varErrors = el("div.var-errors");
  const status = el("span.muted.status", { role: "status" });
  const grid = el("div.panels");
  const panelEls = panels.map((p, i) => {
    const body = el("div.panel-body");
    const explore = el("span.panel-links");
    const card = el("section.card.panel", { dataset: { panel: String(i), type: p.type || "" }, style: { gridColumn: `span ${Math.min(12, Math.max(1, Number(p.span) || 6))}` } },
      el("h3", el("span.panel-title", { title: p.description || null }, p.title || "(untitled)"), explore), body);
    grid.append(card);
    return { panel: p, card, body, explore };
  });

  function range() {
    const windowS = parseDuration(window_);
    const step = stepFor(windowS);
    // aligned to the step, as Grafana does: every refresh asks for the same grid, which the server's results
    // cache then answers but for the new and fresh steps
    const end = Math.floor(Date.now() / 1000 / step) * step;
    return { start: end - Math.ceil(windowS / step) * step, end, step, windowS };
  }
  function builtins(r) {
    return { __interval: fmtSeconds(r.step), __rate_interval: fmtSeconds(Math.max(4 * SCRAPE_S, r.step + SCRAPE_S)), __range: fmtSeconds(r.windowS) };
  }
  function valuesForQueries() {
    const out = {};
    for (const v of vars) out[v.name] = current[v.name] === ALL ? (v.allValue ?? ".*") : current[v.name] ?? "";
    return out;
  }

  // Pickers for every variable, options loaded in order so a variable can use the ones before it.
  async function loadVariables(signal) {
    varErrors.replaceChildren();
    const r = range();
    const fields = [];
    for (const v of vars) {
      const fromUrl = getState().get(`var-${v.name}`);
      const label = v.label || v.name;
      if (v.type === "textbox") {
        current[v.name] = fromUrl ?? (v.default ?? "");
        const input = el("input", { type: "text", value: current[v.name], "aria-label": label, name: `var-${v.name}`, placeholder: v.placeholder || "",
          onchange: () => choose(v.name, input.value) });
        fields.push(el("label.field", el("span", label), input));
        continue;
      }
      let opts = [];
      try {
        opts = await variableOptions(v, valuesForQueries(), builtins(r), r, signal);
      } catch (e) {
        if (e.name === "AbortError") throw e;
        varErrors.append(el("div.error", `Variable ${label}: ${e.message}`));
      }
      const choices = (v.includeAll ? [ALL] : []).concat(opts);
      const wanted = fromUrl ?? v.default;
      current[v.name] = wanted !== undefined && wanted !== null && (choices.includes(wanted) || fromUrl !== null) ? wanted : (choices[0] ?? wanted ?? "");
      if (!choices.includes(current[v.name]) && current[v.name] !== "") choices.push(current[v.name]); // a shared URL's value not seen (yet)
      const sel = el("select", { "aria-label": label, name: `var-${v.name}`, onchange: () => choose(v.name, sel.value) },
        choices.map((c) => el("option", { value: c, selected: c === current[v.name] }, c === ALL ? "All" : c)));
      if (!choices.length) sel.append(el("option", { value: "" }, "(no values)"));
      fields.push(el("label.field", el("span", label), sel));
    }
    varBar.replaceChildren(...fields);
  }

  function choose(name, value) {
    current[name] = value;
    setState({ [`var-${name}`]: value === "" ? "" : value }, { push: true });
    // variables after this one may depend on it
    refreshAll(true, true);
  }

  async function runPanel(p, r, b, vals, signal, first) {
    const qs = targets(p.panel).map((t) => ({ ...t, query: substitute(t.query || "", vals, b) }));
    p.explore.replaceChildren();
    if (p.panel.datasource === "logql" && qs[0].query) {
      p.explore.append(el("a.small", { href: `/logs?${new URLSearchParams({ query: qs[0].query, since: window_ })}`, title: "Open this query on the Logs page" }, "Logs ↗"));
    }
    if (first) loading(p.body, "Loading…");
    else p.card.classList.add("refreshing");
    try {
      const render = RENDERERS[p.panel.type];
      if (!render) throw new Error(`unknown panel type ${JSON.stringify(p.panel.type)}: use timeseries, stat, table or logs`);
      if (!qs.every((t) => t.query.trim())) throw new Error("this panel has no query");
      const node = await render(p.panel, qs, r, signal);
      if (signal.aborted) return;
      p.body.replaceChildren(node);
      p.card.classList.remove("has-error");
    } catch (e) {
      if (e.name === "AbortError" || signal.aborted) return;
      p.card.classList.add("has-error");
      showError(p.body, e.message || String(e));
    } finally {
      p.card.classList.remove("refreshing");
    }
  }

  async function refreshAll(first, reloadVars) {
    if (ctrl) ctrl.abort();
    ctrl = new AbortController();
    const signal = ctrl.signal;
    status.textContent = first ? "" : "Refreshing…";
    try {
      if (reloadVars) await loadVariables(signal);
    } catch (e) {
      if (e.name === "AbortError" || signal.aborted) return;
    }
    const r = range();
    const b = builtins(r);
    const vals = valuesForQueries();
    await Promise.all(panelEls.map((p) => runPanel(p, r, b, vals, signal, first)));
    if (!signal.aborted) status.textContent = `Updated ${new Date().toLocaleTimeString()}`;
  }

  function restartTimer() {
    stopTimer();
    stopTimer = every(refresh === "off" ? 0 : parseDuration(refresh), () => refreshAll(false, false));
  }

  const tools = el("div.toolbar",
    windowPicker(window_, (w) => { window_ = w; setState({ window: w }, { push: true }); refreshAll(true, true); }),
    varBar,
    el("label.field", el("span", "Auto refresh"), (() => {
      const sel = el("select", { "aria-label": "Auto refresh", onchange: () => { refresh = sel.value; setState({ refresh: refresh === "off" ? "" : refresh }); restartTimer(); } },
        REFRESH_CHOICES.map((c) => el("option", { value: c, selected: c === refresh }, c === "off" ? "Off" : `Every ${c}`)));
      return sel;
    })()),
    el("button", { type: "button", onclick: () => refreshAll(false, true) }, "Refresh"),
    status);
  root.replaceChildren(
    el("h1", dash.title),
    el("p.intro", el("a", { href: "/dashboards" }, "← All dashboards"), dash.description ? [" · ", el("span.muted", dash.description)] : null),
    tools, varErrors,
    panels.length ? grid : el("div.empty", el("strong", "This dashboard has no panels."), el("p", "Add panels to its JSON file (see dashboards/README.md).")));
  refreshAll(true, true);
  restartTimer();
  return () => { stopTimer(); if (ctrl) ctrl.abort(); };
}
