// Traces page, Jaeger UI-like: /traces is a search form with a result list and a duration-over-time scatter;
// /traces/<traceId> is the trace's waterfall with span details and the trace's logs.
// Data: /api/services, /api/operations, /api/search/traces (summaries), /api/traces/<id> (Jaeger JSON),
// /api/traces/<id>/logs. Every bit of state (search fields, sort, selected span) lives in the URL.
import {
  api, ApiError, getState, setState, el, loading, showError, emptyState, windowPicker, WINDOWS,
  fmtTime, fmtDurationMs, color, quote,
} from "/static/lib.js";

// The search fields carried from the result list to a trace and back again.
const SEARCH_KEYS = ["service", "operation", "tags", "minDuration", "maxDuration", "lookback", "limit", "sort"];
const DEFAULT_LOOKBACK = "1h";
const DEFAULT_LIMIT = "20";
const LOG_PAD_MS = 5 * 60 * 1000; // logs are often written a little after their span ends (the API pads the same)
const SORTS = {
  recent: ["Most recent", null],
  longest: ["Longest first", (a, b) => b.durationMs - a.durationMs],
  shortest: ["Shortest first", (a, b) => a.durationMs - b.durationMs],
  spans: ["Most spans", (a, b) => b.spanCount - a.spanCount],
  errors: ["Most errors", (a, b) => b.errorCount - a.errorCount],
};

export async function render(root, ctx) {
  injectStyle();
  // The router registers our cleanup only after render returns, so render returns at once and every async step
  // checks the signal before it touches the page (another page may own `root` by then).
  const ctl = new AbortController();
  if (ctx.rest.length) traceView(root, ctx, ctx.rest[0], ctl.signal);
  else searchView(root, ctx, ctl.signal);
  return () => ctl.abort();
}

const aborted = (e, signal) => signal.aborted || (e && e.name === "AbortError");

function searchQueryString(state = getState()) {
  const q = new URLSearchParams();
  for (const k of SEARCH_KEYS) if (state.get(k)) q.set(k, state.get(k));
  const s = q.toString();
  return s ? `?${s}` : "";
}

// ------------------------------------------------------------------------------------------------ search
// Jaeger UI's tag syntax: logfmt-like `key=value key2="quoted value"`. Returns [[key, value], ...] or throws.
export function parseTags(text) {
  const out = [];
  const s = String(text || "");
  let i = 0;
  while (i < s.length) {
    if (/\s/.test(s[i])) { i++; continue; }
    const eq = s.indexOf("=", i);
    const ws = s.slice(i).search(/\s/);
    const tokenEnd = ws < 0 ? s.length : i + ws;
    if (eq < 0 || eq > tokenEnd || eq === i) {
      throw new Error(`tags: expected key=value, got ${JSON.stringify(s.slice(i, tokenEnd))} ` +
        `(e.g. http.status_code=500 error=true; quote values with spaces: key="a b")`);
    }
    const key = s.slice(i, eq);
    i = eq + 1;
    let value = "";
    if (s[i] === '"') {
      i++;
      let closed = false;
      while (i < s.length) {
        if (s[i] === "\\" && i + 1 < s.length) { value += s[i + 1]; i += 2; continue; }
        if (s[i] === '"') { closed = true; i++; break; }
        value += s[i++];
      }
      if (!closed) throw new Error(`tags: missing closing quote in the value of ${JSON.stringify(key)}`);
    } else {
      while (i < s.length && !/\s/.test(s[i])) value += s[i++];
    }
    out.push([key, value]);
  }
  return out;
}

function searchView(root, ctx, signal) {
  const st = getState();
  const lookback = st.get("lookback") || DEFAULT_LOOKBACK;
  const choices = WINDOWS.includes(lookback) ? WINDOWS : [lookback, ...WINDOWS];

  const serviceSel = el("select", { name: "service", "aria-label": "Service" }, el("option", { value: "" }, "All services"));
  const opSel = el("select", { name: "operation", "aria-label": "Operation" }, el("option", { value: "" }, "All operations"));
  const tagsIn = el("input", { name: "tags", type: "text", value: st.get("tags") || "", spellcheck: "false",
    placeholder: "http.status_code=500 error=true", "aria-label": "Tags" });
  const minIn = el("input.tr-dur", { name: "minDuration", type: "text", value: st.get("minDuration") || "",
    placeholder: "e.g. 100ms", "aria-label": "Min duration" });
  const maxIn = el("input.tr-dur", { name: "maxDuration", type: "text", value: st.get("maxDuration") || "",
    placeholder: "e.g. 1.5s", "aria-label": "Max duration" });
  let lookbackValue = lookback;
  const lookbackField = windowPicker(lookback, (v) => { lookbackValue = v; }, { label: "Lookback", choices });
  const limitIn = el("input.tr-limit", { name: "limit", type: "number", min: "1", max: "1500",
    value: st.get("limit") || DEFAULT_LIMIT, "aria-label": "Limit" });
  const findBtn = el("button.primary", { type: "submit" }, "Find traces");
  setSelect(serviceSel, st.get("service") || "");
  setSelect(opSel, st.get("operation") || "");

  const form = el("form.toolbar.tr-search", { onsubmit: (ev) => { ev.preventDefault(); submit(); } },
    el("label.field", el("span", "Service"), serviceSel),
    el("label.field", el("span", "Operation"), opSel),
    el("label.field.tr-tags", el("span", "Tags"), tagsIn),
    el("label.field", el("span", "Min duration"), minIn),
    el("label.field", el("span", "Max duration"), maxIn),
    lookbackField,
    el("label.field", el("span", "Limit"), limitIn),
    findBtn);

  const idIn = el("input.mono", { name: "traceId", type: "text", placeholder: "trace id (hex)", spellcheck: "false",
    "aria-label": "Trace ID" });
  const lookup = el("form.tr-lookup", {
    onsubmit: (ev) => {
      ev.preventDefault();
      const id = idIn.value.trim();
      if (id) ctx.navigate(`/traces/${encodeURIComponent(id)}${searchQueryString()}`);
    },
  }, el("label.field", el("span", "Look up a trace by id"), idIn), el("button", { type: "submit" }, "Open"));

  const results = el("section.tr-results", { "aria-label": "Search results" });
  root.replaceChildren(el("div.tr-head", el("h1", "Traces"), lookup), form, results);

  let searchCtl = null;
  let lastTraces = null;
  let serviceCount = null; // 0: the store has no spans at all, which the empty state says

  async function loadServices() {
    try {
      const doc = await api("/api/services", {}, { signal });
      const names = doc.data || [];
      const cur = serviceSel.value; // the URL's, or what the user picked while the list loaded
      serviceSel.replaceChildren(el("option", { value: "" }, "All services"),
        ...names.map((n) => el("option", { value: n }, n)));
      setSelect(serviceSel, cur);
      serviceCount = names.length;
      if (lastTraces && !(lastTraces.traces || []).length) showResults(lastTraces);
    } catch (e) {
      if (aborted(e, signal)) return;
      showError(results, `Cannot list services: ${e.message}`, { replace: false });
    }
  }

  async function loadOperations(service, keep) {
    opSel.replaceChildren(el("option", { value: "" }, "All operations"));
    setSelect(opSel, keep);
    if (!service) return;
    try {
      const doc = await api("/api/operations", { service }, { signal });
      if (serviceSel.value !== service) return; // the user picked another service meanwhile
      const names = [...new Set((doc.data || []).map((o) => o.name))].sort();
      opSel.replaceChildren(el("option", { value: "" }, "All operations"), ...names.map((n) => el("option", { value: n }, n)));
      setSelect(opSel, keep);
    } catch (e) {
      if (!aborted(e, signal)) showError(results, `Cannot list operations of ${service}: ${e.message}`, { replace: false });
    }
  }
  serviceSel.addEventListener("change", () => loadOperations(serviceSel.value, ""));

  function submit() {
    setState({
      service: serviceSel.value, operation: opSel.value, tags: tagsIn.value.trim(), minDuration: minIn.value.trim(),
      maxDuration: maxIn.value.trim(), lookback: lookbackValue, limit: limitIn.value.trim(),
    }, { push: true });
    search();
  }

  async function search() {
    const s = getState();
    let tags;
    try {
      tags = parseTags(s.get("tags"));
    } catch (e) {
      results.dataset.search = searchQueryString(s);
      showError(results, e.message);
      return;
    }
    if (searchCtl) searchCtl.abort();
    searchCtl = new AbortController();
    const mine = searchCtl;
    const onPageAbort = () => mine.abort();
    signal.addEventListener("abort", onPageAbort, { once: true });
    delete results.dataset.search; // set to the search's URL query once its answer is shown (tests wait on it)
    loading(results, "Searching traces…");
    findBtn.disabled = true;
    try {
      const doc = await api("/api/search/traces", {
        service: s.get("service"), operation: s.get("operation"), tag: tags.map(([k, v]) => `${k}=${v}`),
        minDuration: s.get("minDuration"), maxDuration: s.get("maxDuration"),
        lookback: s.get("lookback") || DEFAULT_LOOKBACK, limit: s.get("limit") || DEFAULT_LIMIT,
      }, { signal: mine.signal });
      lastTraces = doc;
      results.dataset.search = searchQueryString(s);
      showResults(doc);
    } catch (e) {
      if (aborted(e, mine.signal)) return;
      results.dataset.search = searchQueryString(s);
      showError(results, `Search failed: ${e.message}`);
    } finally {
      signal.removeEventListener("abort", onPageAbort);
      if (searchCtl === mine) findBtn.disabled = false;
    }
  }

  function showResults(doc) {
    const traces = doc.traces || [];
    if (!traces.length) {
      if (serviceCount === 0) {
        emptyState(results, "No traces stored yet.",
          "Send spans over OTLP to port 4318 (or Zipkin v2 to 9411), or start meshscope serve --demo.");
      } else {
        emptyState(results, "No traces match.", "Widen the lookback or remove filters.");
      }
      return;
    }
    const sortKey = SORTS[getState().get("sort")] ? getState().get("sort") : "recent";
    const sorted = SORTS[sortKey][1] ? [...traces].sort(SORTS[sortKey][1]) : traces;
    const sortSel = el("select", { "aria-label": "Sort", onchange: () => { setState({ sort: sortSel.value === "recent" ? "" : sortSel.value }); showResults(doc); } },
      Object.entries(SORTS).map(([k, [label]]) => el("option", { value: k, selected: k === sortKey }, label)));
    const limit = Number(doc.limit) || traces.length;
    const maxDur = Math.max(...traces.map((t) => t.durationMs), 0.001);
    const qs = searchQueryString();
    results.replaceChildren(
      scatter(traces, doc, qs),
      el("div.tr-results-bar",
        el("strong", `${traces.length} trace${traces.length === 1 ? "" : "s"}`),
        traces.length >= limit ? el("span.muted", ` (the limit: raise it or narrow the search for more)`) : null,
        el("label.tr-sort", "Sort ", sortSel)),
      el("ol.tr-list", sorted.map((t) => el("li", resultItem(t, maxDur, qs)))));
  }

  loadServices();
  loadOperations(st.get("service") || "", st.get("operation") || "");
  // The newest traces right away: an empty form searches every service.
  search();
}

function setSelect(sel, value) {
  if (value && ![...sel.options].some((o) => o.value === value)) {
    sel.append(el("option", { value }, value)); // a value from the URL that the store does not list (yet)
  }
  sel.value = value;
}

function resultItem(t, maxDur, qs) {
  const startMs = Number(BigInt(t.startTimeUnixNano) / 1000000n);
  const name = `${t.rootServiceName || "?"}: ${t.rootTraceName || "?"}`;
  return el("a.tr-item", { href: `/traces/${t.traceID}${qs}`, dataset: { traceId: t.traceID } },
    el("div.tr-item-head",
      el("span.tr-item-name", name),
      t.errorCount ? el("span.badge.bad", `${t.errorCount} error${t.errorCount === 1 ? "" : "s"}`) : null,
      t.rootMissing ? el("span.badge.warn", { title: "no span without a parent was received" }, "root span missing") : null,
      el("span.tr-item-dur", fmtDurationMs(t.durationMs))),
    el("div.tr-item-track", el("div.tr-item-fill", { style: { width: `${Math.max(0.5, (t.durationMs / maxDur) * 100)}%` } })),
    el("div.tr-item-meta",
      el("span", `${t.spanCount} span${t.spanCount === 1 ? "" : "s"}`),
      el("span.tr-item-services", (t.services || []).map((s) =>
        el(`span.badge${s.errors ? ".bad" : ""}`, { title: s.errors ? `${s.errors} error span(s)` : null }, `${s.name} (${s.spans})`))),
      el("span.tr-item-time", el("time", { datetime: new Date(startMs).toISOString() }, fmtTime(startMs)),
        el("span.muted", ` · ${ago(startMs)}`)),
      el("code.tr-item-id.muted", t.traceID.slice(0, 16))));
}

function ago(ms) {
  const s = Math.max(0, (Date.now() - ms) / 1000);
  if (s < 60) return `${Math.round(s)}s ago`;
  if (s < 3600) return `${Math.round(s / 60)}m ago`;
  if (s < 86400) return `${(s / 3600).toFixed(1)}h ago`;
  return `${(s / 86400).toFixed(1)}d ago`;
}

// Duration over time, one dot per trace (red with errors). Dots are positioned HTML links, so they stay round at
// any width and open the trace like the list does.
function scatter(traces, doc, qs) {
  const starts = traces.map((t) => Number(BigInt(t.startTimeUnixNano) / 1000000n));
  let t0 = doc.start ? Number(BigInt(doc.start) / 1000000n) : Math.min(...starts);
  let t1 = doc.end ? Number(BigInt(doc.end) / 1000000n) : Math.max(...starts);
  // Zoom to the traces found when they cover a small part of the lookback, as Jaeger does.
  t0 = Math.max(t0, Math.min(...starts) - 0.05 * (Math.max(...starts) - Math.min(...starts) || 60000));
  t1 = Math.min(t1, Math.max(...starts) + 0.05 * (Math.max(...starts) - Math.min(...starts) || 60000));
  if (t1 <= t0) { t0 -= 30000; t1 += 30000; }
  const ymax = Math.max(...traces.map((t) => t.durationMs), 0.001) * 1.1;
  const plot = el("div.tr-scatter-plot", { role: "img", "aria-label": "Trace duration over time" });
  for (const frac of [0, 0.5, 1]) {
    plot.append(el("span.tr-scatter-y", { style: { bottom: `${frac * 100}%` } }, fmtDurationMs((ymax * frac))));
  }
  traces.forEach((t, i) => {
    const x = ((starts[i] - t0) / (t1 - t0)) * 100;
    const y = (t.durationMs / ymax) * 100;
    plot.append(el(`a.tr-dot${t.errorCount ? ".err" : ""}`, {
      href: `/traces/${t.traceID}${qs}`, style: { left: `${x}%`, bottom: `${y}%` },
      title: `${t.rootServiceName}: ${t.rootTraceName}\n${fmtDurationMs(t.durationMs)}, ${t.spanCount} spans` +
        `${t.errorCount ? `, ${t.errorCount} errors` : ""}\n${fmtTime(starts[i])}`,
      "aria-label": `trace ${t.traceID}`,
    }));
  });
  // Clock time; with milliseconds when the traces found span only a few seconds.
  const hhmm = (ms) => fmtTime(ms).slice(11, t1 - t0 < 10000 ? 23 : 19);
  return el("figure.tr-scatter.card",
    el("figcaption", "Duration over time"),
    plot,
    el("div.tr-scatter-x", el("span", hhmm(t0)), el("span", hhmm((t0 + t1) / 2)), el("span", hhmm(t1))));
}

// ------------------------------------------------------------------------------------------------ one trace
function tagValue(tags, key) {
  const t = (tags || []).find((x) => x.key === key);
  return t ? t.value : undefined;
}

// Jaeger JSON -> a tree in display order: roots (spans without a parent in this trace) by start time, the true
// root first; children by start time.
export function buildTree(trace) {
  const spans = trace.spans.map((s) => {
    const parentRef = (s.references || []).find((r) => r.refType === "CHILD_OF");
    const proc = trace.processes[s.processID] || { serviceName: "?", tags: [] };
    const status = tagValue(s.tags, "otel.status_code");
    const errTag = tagValue(s.tags, "error");
    return {
      raw: s, id: s.spanID, parentId: parentRef ? parentRef.spanID : "", service: proc.serviceName, process: proc,
      start: s.startTime, duration: s.duration, kind: tagValue(s.tags, "span.kind") || "",
      status: status || "UNSET", statusMessage: tagValue(s.tags, "otel.status_description") || "",
      error: status === "ERROR" || errTag === true || errTag === "true", children: [], depth: 0,
    };
  });
  const byId = new Map(spans.map((s) => [s.id, s]));
  const roots = [];
  for (const s of spans) {
    const p = s.parentId && s.parentId !== s.id ? byId.get(s.parentId) : null;
    if (p) p.children.push(s); else roots.push(s);
  }
  const byStart = (a, b) => a.start - b.start || (a.id < b.id ? -1 : 1);
  roots.sort((a, b) => (a.parentId ? 1 : 0) - (b.parentId ? 1 : 0) || byStart(a, b));
  const order = [];
  const seen = new Set();
  const walk = (top) => { // depth-first without recursion: a long chain of spans must not blow the stack
    const stack = [[top, 0]];
    while (stack.length) {
      const [s, depth] = stack.pop();
      if (seen.has(s.id)) continue; // a cycle in bad data: show each span once
      seen.add(s.id);
      s.depth = depth;
      order.push(s);
      s.children.sort(byStart);
      for (let i = s.children.length - 1; i >= 0; i--) stack.push([s.children[i], depth + 1]);
    }
  };
  for (const r of roots) walk(r);
  for (const s of spans) if (!seen.has(s.id)) walk(s); // left over from a cycle
  return { spans: order, byId, roots };
}

function traceView(root, ctx, traceId, signal) {
  const backHref = `/traces${searchQueryString()}`;
  const back = el("a.tr-back", { href: backHref }, "← Search");
  const body = el("div");
  root.replaceChildren(back, body);
  loading(body, `Loading trace ${traceId}…`);

  (async () => {
    let doc;
    try {
      doc = await api(`/api/traces/${encodeURIComponent(traceId)}`, {}, { signal });
    } catch (e) {
      if (aborted(e, signal)) return;
      if (e instanceof ApiError && e.status === 404) {
        showError(body, `trace ${traceId} not found (it may be older than the retention or not sent yet)`);
      } else {
        showError(body, e.message);
      }
      return;
    }
    const trace = doc.data && doc.data[0];
    if (!trace || !trace.spans || !trace.spans.length) {
      showError(body, `trace ${traceId} not found (it may be older than the retention or not sent yet)`);
      return;
    }
    renderTrace(body, ctx, trace, signal);
  })().catch((e) => { if (!aborted(e, signal)) showError(body, `The trace view failed: ${e.message}`); });
}

function renderTrace(body, ctx, trace, signal) {
  const tree = buildTree(trace);
  const spans = tree.spans;
  const t0 = Math.min(...spans.map((s) => s.start));
  const t1 = Math.max(...spans.map((s) => s.start + s.duration));
  const total = Math.max(1, t1 - t0); // µs
  const rootSpan = spans[0];
  const services = [...new Set(spans.map((s) => s.service))];
  const svcColor = new Map(services.map((s, i) => [s, color(i)]));
  const depth = Math.max(...spans.map((s) => s.depth)) + 1;
  const errors = spans.filter((s) => s.error).length;
  const name = `${rootSpan.service}: ${rootSpan.raw.operationName}`;
  const startMs = t0 / 1000, endMs = t1 / 1000;
  document.title = `${name} · Traces · meshscope`;

  const logql = `{service_name=~".+"} | trace_id=${quote(trace.traceID)}`;
  const logsHref = `/logs?${new URLSearchParams({ query: logql, start: String(Math.floor(startMs - LOG_PAD_MS)), end: String(Math.ceil(endMs + LOG_PAD_MS)) })}`;

  const collapsed = new Set();
  let selected = null; // span id
  const rows = new Map(); // span id -> {row, detail}

  const fact = (label, value) => el("div.tr-fact", el("span.muted", label), el("strong", value));
  const header = el("header.tr-trace-head",
    el("h1.tr-trace-name", el("span.swatch", { style: { background: svcColor.get(rootSpan.service) } }), name,
      rootSpan.parentId ? el("span.badge.warn", { title: "the span without a parent was not received" }, "root span missing") : null),
    el("div.tr-facts",
      fact("Trace ID", el("code", trace.traceID)),
      fact("Start", fmtTime(startMs)),
      fact("Duration", fmtDurationMs(total / 1000)),
      fact("Services", String(services.length)),
      fact("Depth", String(depth)),
      fact("Spans", String(spans.length)),
      fact("Errors", errors ? el("span.badge.bad", String(errors)) : "0")),
    el("div.toolbar.tr-actions",
      el("button", { type: "button", onclick: () => { collapsed.clear(); applyVisibility(); } }, "Expand all"),
      el("button", { type: "button", onclick: () => { for (const s of spans) if (s.children.length) collapsed.add(s.id); applyVisibility(); } }, "Collapse all"),
      el("a.button.tr-logs-link", { href: logsHref, title: logql }, "Logs for this trace"),
      el("a.button", { href: `/api/traces/${trace.traceID}`, target: "_blank", rel: "noopener" }, "JSON")));
  const warnings = (trace.warnings || []).map((w) => el("div.tr-warning", { role: "note" }, w));
  const legend = el("ul.legend.tr-legend", services.map((s) =>
    el("li", el("span.swatch", { style: { background: svcColor.get(s) } }), s)));

  const ticks = [0, 0.25, 0.5, 0.75, 1];
  const ruler = el("div.tr-ruler",
    el("div.tr-name-col", "Service · operation"),
    el("div.tr-timeline", ticks.map((f) => el(`span.tr-tick${f === 0.25 || f === 0.75 ? ".tr-tick-minor" : ""}`, { style: f === 1 ? { right: "0" } : { left: `${f * 100}%` } },
      fmtDurationMs((total * f) / 1000)))));
  const wf = el("div.waterfall", { role: "tree", "aria-label": "Spans" }, ruler);

  for (const s of spans) {
    const left = ((s.start - t0) / total) * 100;
    const width = Math.max(0.2, (s.duration / total) * 100);
    const toggle = s.children.length
      ? el("button.tr-toggle", { type: "button", "aria-expanded": "true", "aria-label": `collapse the ${s.children.length} children`,
        title: `${countDescendants(s)} spans below`, onclick: (ev) => { ev.stopPropagation(); toggleCollapse(s.id); } }, "▾")
      : el("span.tr-toggle-gap");
    // The duration label goes after the bar, before it, or inside it when the bar spans nearly the whole trace.
    const labelAt = left + width < 72 ? { left: `calc(${left + width}% + 4px)` }
      : left > 15 ? { right: `calc(${100 - left}% + 4px)` } : { left: `calc(${left}% + 4px)`, color: "#fff", textShadow: "0 0 2px rgba(0, 0, 0, .6)" };
    const row = el(`div.span-row${s.error ? ".span-error" : ""}`, {
      role: "treeitem", tabindex: "0", "aria-selected": "false",
      dataset: { spanId: s.id, parentId: s.parentId, depth: String(s.depth), service: s.service },
      onclick: () => select(selected === s.id ? null : s.id),
      onkeydown: (ev) => {
        if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); select(selected === s.id ? null : s.id); }
      },
    },
    el("div.tr-name-col", { style: `--depth: ${Math.min(s.depth, 24)}`, title: `${s.service}: ${s.raw.operationName}` },
      toggle,
      el("span.tr-svc", { style: { borderColor: svcColor.get(s.service) } }, s.service),
      el("span.tr-op", s.raw.operationName),
      s.error ? el("span.tr-err", { title: s.statusMessage || "error" }, "!") : null),
    el("div.tr-timeline",
      el("div.tr-bar", { style: { left: `${left}%`, width: `${width}%`, background: svcColor.get(s.service) } }),
      el("span.tr-bar-label", { style: labelAt },
        fmtDurationMs(s.duration / 1000))));
    const detail = el("div.tr-detail", { hidden: true });
    rows.set(s.id, { row, detail, span: s });
    wf.append(row, detail);
  }

  const logsSection = el("section.tr-trace-logs", el("h2", "Logs of this trace"), el("p.loading", "Loading logs…"));
  body.replaceChildren(header, ...warnings, legend, wf, logsSection);

  let traceLogs = null;

  function toggleCollapse(id) {
    if (collapsed.has(id)) collapsed.delete(id); else collapsed.add(id);
    applyVisibility();
  }

  function applyVisibility() {
    const hidden = new Set();
    for (const s of spans) {
      const under = s.parentId && (hidden.has(s.parentId) || collapsed.has(s.parentId));
      const r = rows.get(s.id);
      if (under) hidden.add(s.id);
      r.row.hidden = !!under;
      r.detail.hidden = !!under || selected !== s.id;
      const t = r.row.querySelector(".tr-toggle");
      if (t) {
        const isCollapsed = collapsed.has(s.id);
        t.textContent = isCollapsed ? "▸" : "▾";
        t.setAttribute("aria-expanded", String(!isCollapsed));
        t.setAttribute("aria-label", `${isCollapsed ? "expand" : "collapse"} the ${s.children.length} children`);
      }
    }
  }

  function select(id, { scroll = false } = {}) {
    if (selected && rows.has(selected)) {
      const prev = rows.get(selected);
      prev.row.classList.remove("selected");
      prev.row.setAttribute("aria-selected", "false");
      prev.detail.hidden = true;
      prev.detail.replaceChildren();
    }
    selected = id && rows.has(id) ? id : null;
    setState({ span: selected || "" });
    if (!selected) return;
    // Make sure the span is visible: open its collapsed ancestors.
    let p = tree.byId.get(selected).parentId;
    for (let n = 0; p && tree.byId.has(p) && n < spans.length; n++, p = tree.byId.get(p).parentId) collapsed.delete(p);
    applyVisibility();
    const r = rows.get(selected);
    r.row.classList.add("selected");
    r.row.setAttribute("aria-selected", "true");
    r.detail.replaceChildren(spanDetail(r.span, trace, t0, traceLogs, () => select(null)));
    r.detail.hidden = false;
    if (scroll) r.row.scrollIntoView({ block: "center" });
  }

  const want = getState().get("span");
  if (want) {
    if (rows.has(want)) select(want, { scroll: true });
    else wf.before(el("div.tr-warning", { role: "note" }, `span ${want} is not in this trace`));
  }

  loadTraceLogs();

  async function loadTraceLogs() {
    logsSection.replaceChildren(el("h2", "Logs of this trace"), el("p.loading", { role: "status" }, "Loading logs…"));
    let doc;
    try {
      doc = await api(`/api/traces/${trace.traceID}/logs`, { limit: 1000 }, { signal });
    } catch (e) {
      if (aborted(e, signal)) return;
      logsSection.replaceChildren(el("h2", "Logs of this trace"), el("div.error", { role: "alert" }, `Cannot load logs: ${e.message}`));
      return;
    }
    traceLogs = doc.logs || [];
    const head = el("h2", `Logs of this trace (${traceLogs.length}${traceLogs.length >= 1000 ? "+" : ""})`);
    if (!traceLogs.length) {
      logsSection.replaceChildren(head, el("div.empty",
        el("strong", "No log line carries this trace id."),
        el("p", "Logs need the trace id (OTLP LogRecord.trace_id) to show up here; recent logs may still be arriving. "),
        el("button", { type: "button", onclick: loadTraceLogs }, "Reload logs")));
      return;
    }
    const table = el("table.data.tr-log-table",
      el("thead", el("tr", el("th.num", "Offset"), el("th", "Service"), el("th", "Level"), el("th", "Line"))),
      el("tbody", traceLogs.map((l) => {
        const tsUs = Number(BigInt(l.timestamp) / 1000n);
        const sp = tree.byId.get(l.spanID);
        const svc = l.serviceName || (sp ? sp.service : "") || l.attributes.pod || "–";
        const lvl = (l.severityText || "").toLowerCase();
        return el(`tr${sp ? ".clickable" : ""}`, {
          title: sp ? `span ${l.spanID}: ${sp.raw.operationName} (click to show)` : fmtTime(tsUs / 1000),
          onclick: sp ? () => select(l.spanID, { scroll: true }) : null,
        },
        el("td.num.mono", fmtOffset((tsUs - t0) / 1000)),
        el("td", svc),
        el("td", lvl ? el(`span.badge${lvl.startsWith("err") || lvl.startsWith("fatal") ? ".bad" : lvl.startsWith("warn") ? ".warn" : ""}`, lvl) : "–"),
        el("td.mono.tr-log-line", l.body));
      })));
    logsSection.replaceChildren(head,
      el("p.muted", "Every log record that carries this trace id (access logs included). ",
        el("a", { href: logsHref }, "Search them in Logs"), " with ", el("code", logql), "."),
      el("div.table-wrap", table));
    if (selected) { // the open span's details gain its logs
      const r = rows.get(selected);
      r.detail.replaceChildren(spanDetail(r.span, trace, t0, traceLogs, () => select(null)));
    }
  }
}

function countDescendants(s) {
  let n = 0;
  const stack = [...s.children];
  while (stack.length) { const c = stack.pop(); n++; stack.push(...c.children); }
  return n;
}

function fmtOffset(ms) { return (ms < 0 ? "-" : "+") + fmtDurationMs(Math.abs(ms)); }

const HIDDEN_TAGS = new Set(["span.kind", "otel.status_code", "otel.status_description", "otel.scope.name", "otel.scope.version"]);

function kvTable(tags, caption) {
  if (!tags || !tags.length) return el("p.muted", `No ${caption}.`);
  return el("div.table-wrap", el("table.data.tr-kv", { "aria-label": caption },
    el("tbody", tags.map((t) => el("tr",
      el("th", t.key),
      el("td.mono", typeof t.value === "object" ? JSON.stringify(t.value) : String(t.value)))))));
}

function spanDetail(s, trace, t0, traceLogs, close) {
  const raw = s.raw;
  const attrs = raw.tags.filter((t) => !HIDDEN_TAGS.has(t.key));
  const scope = [tagValue(raw.tags, "otel.scope.name"), tagValue(raw.tags, "otel.scope.version")].filter(Boolean).join(" ");
  const links = (raw.references || []).filter((r) => r.refType !== "CHILD_OF" || r.spanID !== s.parentId);
  const statusBadge = s.error ? "bad" : s.status === "OK" ? "ok" : "";
  const item = (label, value) => [el("dt", label), el("dd", value)];
  const spanLogs = (traceLogs || []).filter((l) => l.spanID === s.id);
  return el("div.tr-detail-inner",
    el("div.tr-detail-head",
      el("strong", raw.operationName),
      el("span.muted", ` · ${s.service}`),
      el("button.tr-close", { type: "button", "aria-label": "Close span details", onclick: close }, "×")),
    el("dl.tr-dl",
      item("Kind", s.kind || "unspecified"),
      item("Status", [el(`span.badge${statusBadge ? "." + statusBadge : ""}`, s.status), s.statusMessage ? ` ${s.statusMessage}` : ""]),
      item("Start", `${fmtOffset((s.start - t0) / 1000)} (${fmtTime(s.start / 1000)})`),
      item("Duration", fmtDurationMs(s.duration / 1000)),
      item("Span ID", el("code", s.id)),
      item("Parent", s.parentId ? el("code", s.parentId) : "none (root)"),
      scope ? item("Scope", scope) : null),
    el("h3", `Attributes (${attrs.length})`), kvTable(attrs, "attributes"),
    el("h3", `Process: ${s.service} (${(s.process.tags || []).length})`), kvTable(s.process.tags, "resource attributes"),
    el("h3", `Events (${(raw.logs || []).length})`),
    (raw.logs || []).length
      ? el("ol.tr-events", raw.logs.map((e) => el("li",
        el("span.mono.muted", fmtOffset((e.timestamp - t0) / 1000)), " ",
        el("strong", String(tagValue(e.fields, "event") ?? "event")),
        kvTable(e.fields.filter((f) => f.key !== "event"), "event attributes"))))
      : el("p.muted", "No events."),
    links.length ? [el("h3", `Links (${links.length})`), el("ul.tr-links", links.map((r) => el("li",
      el("span.muted", `${r.refType} `),
      el("a", { href: `/traces/${encodeURIComponent(r.traceID)}?span=${encodeURIComponent(r.spanID)}` }, `${r.traceID.slice(0, 16)}… / ${r.spanID}`))))] : null,
    traceLogs ? [el("h3", `Logs of this span (${spanLogs.length})`),
      spanLogs.length ? el("ul.tr-span-logs", spanLogs.map((l) => el("li.mono",
        el("span.muted", fmtOffset((Number(BigInt(l.timestamp) / 1000n) - t0) / 1000) + " "), l.body)))
        : el("p.muted", "No log line carries this span id.")] : null);
}

// ------------------------------------------------------------------------------------------------ styles
// Page-specific rules, kept here so the shared stylesheet stays small.
function injectStyle() {
  if (document.getElementById("traces-page-style")) return;
  document.head.append(el("style#traces-page-style", `
.tr-head { display: flex; flex-wrap: wrap; justify-content: space-between; align-items: flex-end; gap: 8px 16px; }
.tr-lookup { display: flex; gap: 6px; align-items: flex-end; margin-bottom: 12px; }
.tr-lookup input { width: 18em; max-width: 60vw; }
.tr-search .tr-tags input { width: 16em; }
.tr-search select { max-width: 14em; }
.tr-search .tr-dur { width: 7em; }
.tr-search .tr-limit { width: 5.5em; }
.tr-results-bar { display: flex; flex-wrap: wrap; gap: 8px; align-items: baseline; margin: 12px 0 8px; }
.tr-sort { margin-left: auto; font-size: 12px; color: var(--muted); }
.tr-sort select { font: inherit; padding: 2px 4px; }
.tr-scatter figcaption { font-size: 12px; color: var(--muted); margin-bottom: 4px; }
.tr-scatter { margin: 0; }
.tr-scatter-plot { position: relative; height: 120px; margin: 6px 8px 0 56px; border-left: 1px solid var(--line);
  border-bottom: 1px solid var(--line); }
.tr-scatter-y { position: absolute; left: -56px; width: 50px; text-align: right; font-size: 10px; color: var(--muted);
  transform: translateY(50%); }
.tr-scatter-x { display: flex; justify-content: space-between; margin-left: 56px; font-size: 10px; color: var(--muted); }
.tr-dot { position: absolute; width: 10px; height: 10px; margin: 0 0 -5px -5px; border-radius: 50%;
  background: rgba(37, 99, 235, .55); border: 1px solid var(--accent); }
.tr-dot.err { background: rgba(220, 38, 38, .6); border-color: var(--bad); }
.tr-dot:hover, .tr-dot:focus { transform: scale(1.5); z-index: 1; }
ol.tr-list { list-style: none; margin: 0; padding: 0; display: flex; flex-direction: column; gap: 8px; }
a.tr-item { display: block; background: var(--panel); border: 1px solid var(--line); border-radius: 8px; padding: 8px 12px;
  color: var(--ink); }
a.tr-item:hover, a.tr-item:focus { border-color: var(--accent); text-decoration: none; }
.tr-item-head { display: flex; flex-wrap: wrap; gap: 6px; align-items: baseline; }
.tr-item-name { font-weight: 600; overflow-wrap: anywhere; }
.tr-item-dur { margin-left: auto; font-variant-numeric: tabular-nums; }
.tr-item-track { height: 4px; background: var(--code); border-radius: 2px; margin: 6px 0; }
.tr-item-fill { height: 100%; background: #93c5fd; border-radius: 2px; }
.tr-item-meta { display: flex; flex-wrap: wrap; gap: 4px 12px; align-items: center; font-size: 12px; }
.tr-item-services { display: flex; flex-wrap: wrap; gap: 4px; }
.tr-item-time { margin-left: auto; color: var(--muted); }
.tr-back { display: inline-block; margin-bottom: 8px; }
.tr-trace-name { display: flex; flex-wrap: wrap; align-items: center; gap: 8px; overflow-wrap: anywhere; }
.tr-facts { display: flex; flex-wrap: wrap; gap: 6px 20px; margin-bottom: 8px; }
.tr-fact { display: flex; flex-direction: column; font-size: 12px; }
.tr-fact strong { font-size: 14px; font-weight: 600; overflow-wrap: anywhere; }
.tr-actions { margin: 8px 0; }
.tr-warning { background: #fffbeb; border: 1px solid #fde68a; color: #92400e; padding: 6px 10px; border-radius: 6px; margin: 8px 0; }
.tr-legend { margin-bottom: 8px; }
.waterfall { --tr-name-w: 34%; --tr-indent: 12px; background: var(--panel); border: 1px solid var(--line); border-radius: 8px;
  overflow: clip; /* not hidden: that would make it a scroll container, which scrollIntoView scrolls and breaks sticky */ }
.tr-ruler, .span-row { display: flex; align-items: stretch; min-height: 26px; border-bottom: 1px solid var(--line); }
.tr-ruler { background: #f9fafb; font-size: 11px; color: var(--muted); position: sticky; top: 48px; z-index: 2; }
.tr-ruler .tr-name-col { padding: 5px 8px; }
.tr-name-col { flex: 0 0 var(--tr-name-w); max-width: var(--tr-name-w); display: flex; align-items: center; gap: 4px;
  overflow: hidden; white-space: nowrap; border-right: 1px solid var(--line); font-size: 12.5px; }
.tr-timeline { position: relative; flex: 1 1 auto; min-width: 0; margin: 0 64px 0 8px;
  background-image: linear-gradient(to right, var(--line) 1px, transparent 1px); background-size: 25% 100%; }
.tr-ruler .tr-timeline { background: none; }
.tr-tick { position: absolute; top: 5px; white-space: nowrap; }
.tr-tick:first-child { left: 0; }
.span-row { cursor: pointer; }
.span-row .tr-name-col { padding-left: calc(4px + var(--depth, 0) * var(--tr-indent)); }
.span-row[hidden], .tr-detail[hidden] { display: none; }
.span-row:hover { background: #f9fafb; }
.span-row.selected { background: #eff6ff; }
.span-row:focus { outline: 2px solid var(--accent); outline-offset: -2px; }
.span-row.span-error .tr-op { color: var(--bad); }
.tr-toggle { flex: 0 0 18px; width: 18px; height: 18px; padding: 0; border: none; background: none; font-size: 12px; line-height: 1;
  color: var(--muted); }
.tr-toggle:hover { color: var(--ink); }
.tr-toggle-gap { flex: 0 0 18px; }
.tr-svc { border-left: 4px solid; padding-left: 4px; font-weight: 600; }
.tr-op { color: var(--muted); overflow: hidden; text-overflow: ellipsis; }
.tr-err { flex: 0 0 auto; background: var(--bad); color: #fff; border-radius: 50%; width: 15px; height: 15px; font-size: 10px;
  font-weight: 700; text-align: center; line-height: 15px; }
.tr-bar { position: absolute; top: 7px; height: 12px; border-radius: 2px; min-width: 2px; opacity: .9; }
.span-row.span-error .tr-bar { outline: 2px solid var(--bad); outline-offset: 1px; }
.tr-bar-label { position: absolute; top: 5px; font-size: 11px; color: var(--muted); white-space: nowrap; }
.tr-detail { border-bottom: 1px solid var(--line); background: #f8fafc; padding: 8px 12px; }
.tr-detail-inner { cursor: auto; }
.tr-detail-head { display: flex; align-items: baseline; gap: 4px; overflow-wrap: anywhere; }
.tr-close { margin-left: auto; padding: 0 8px; font-size: 16px; line-height: 1.4; }
.tr-dl { display: grid; grid-template-columns: max-content minmax(0, 1fr); gap: 2px 12px; margin: 8px 0; font-size: 13px; }
.tr-dl dt { color: var(--muted); }
.tr-dl dd { margin: 0; overflow-wrap: anywhere; }
table.tr-kv th { width: 30%; font-weight: 500; color: var(--ink); font-size: 12.5px; overflow-wrap: anywhere; }
table.tr-kv td { overflow-wrap: anywhere; word-break: break-word; }
table.tr-kv th, table.tr-kv td { padding: 3px 8px; }
ol.tr-events, ul.tr-links, ul.tr-span-logs { margin: 0; padding-left: 20px; }
ul.tr-span-logs li { overflow-wrap: anywhere; }
.tr-trace-logs { margin-top: 16px; }
.tr-log-line { white-space: pre-wrap; overflow-wrap: anywhere; }
@media (max-width: 800px) {
  .waterfall { --tr-name-w: 46%; --tr-indent: 6px; }
  .tr-timeline { margin-right: 8px; }
  .tr-bar-label { display: none; }
  .tr-search .tr-tags { flex-basis: 100%; }
  .tr-search .field { flex: 1 1 40%; }
  .tr-search .field input { width: 100%; }
  .tr-tick-minor { display: none; }
  .tr-trace-name { font-size: 16px; }
  .tr-search select { max-width: none; width: 100%; }
  .tr-lookup { width: 100%; }
  .tr-lookup .field { flex: 1; }
  .tr-lookup input { width: 100%; max-width: none; }
  .tr-item-time { margin-left: 0; }
  .tr-ruler { top: 0; position: static; }
  /* log lines: offset, service and level on one line, the line itself below at full width */
  .tr-log-table thead { display: none; }
  .tr-log-table tr { display: grid; grid-template-columns: auto minmax(0, 1fr) auto; border-bottom: 1px solid var(--line); }
  .tr-log-table td { border-bottom: none; }
  .tr-log-table td.tr-log-line { grid-column: 1 / -1; padding-top: 0; }
}
`));
}
