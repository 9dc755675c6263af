// The Logs page (Grafana Explore for Loki, in small): a LogQL editor validated as you type, a log-volume histogram
// per level, lines with their labels and expandable structured metadata, metric queries drawn as charts, and live
// tail over Loki's WebSocket. Everything comes from Loki's HTTP API, so a script sees exactly what the page shows.
// URL state: query, since (or start+end as unix ms or RFC3339, which win over since), limit, direction, tail=1,
// line=<id of an expanded line>.
import {
  api, ApiError, getState, setState, el, loading, showError, emptyState, windowPicker, WINDOWS,
  fmtTime, fmtNumber, nsToMs, parseDuration, timeChart, promSeries, quote,
} from "/static/lib.js";

const LOKI = "/loki/api/v1";
// Stream labels apart from structured metadata and parsed labels (Loki's third value element).
const CATEGORIZE = { "X-Loki-Response-Encoding-Flags": "categorize-labels" };
const LIMITS = [100, 500, 1000, 5000];
const DEFAULT_SINCE = "1h";
const MAX_ROWS = 5000 + 2000; // a long live tail drops its oldest rows beyond this
const VALIDATE_MS = 350;
const TRACE_KEYS = ["trace_id", "traceid", "traceID", "traceId", "TraceId"];
const LEVEL_KEYS = ["level", "detected_level", "severity", "severity_text", "lvl"];
const LEVEL_COLORS = {
  fatal: "#7c3aed", critical: "#7c3aed", crit: "#7c3aed", error: "#dc2626", err: "#dc2626",
  warn: "#d97706", warning: "#d97706", info: "#16a34a", information: "#16a34a",
  debug: "#2563eb", trace: "#0891b2", unknown: "#9ca3af",
};
// Volume histogram: at most ~80 bars, on steps a person would choose.
const STEPS_S = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400];

export async function render(root, ctx) {
  const st = getState();
  const state = {
    query: st.get("query") || "",
    since: st.get("since") || DEFAULT_SINCE,
    start: st.get("start") || "",
    end: st.get("end") || "",
    limit: readLimit(st.get("limit")),
    direction: st.get("direction") === "forward" ? "forward" : "backward",
    tail: st.get("tail") === "1",
    line: st.get("line") || "",
  };
  let disposed = false;
  let runCtl = null; // aborts the running query when a new one starts or the page closes
  let checkCtl = null; // aborts a pending validation
  let checkTimer = null;
  let tail = null; // {ws, stoppedByUser}
  let last = null; // the last successful run: {query, canonical, isLog, win}
  let rows = null; // {list, entries: Map id -> entry, common, summary, live}
  let ranQuery = null; // the text of the last run, to tell a new query from a new window
  const expanded = new Set(state.line ? [state.line] : []);

  // ---------------------------------------------------------------- the editor and its toolbar
  const editor = el("textarea.query#logql", {
    rows: 3, spellcheck: "false", autocapitalize: "off", autocomplete: "off", "aria-label": "LogQL query",
    placeholder: '{service_name="productpage"} |= "error"    (Ctrl+Enter runs the query)',
    value: state.query,
  });
  const queryError = el("div.logs-query-error", { role: "alert", "aria-live": "polite" });
  const queryKind = el("span.muted.logs-kind");
  const runBtn = el("button.primary#logs-run", { type: "button", title: "Run (Ctrl+Enter)" }, "Run query");
  const limitSel = el("select#logs-limit", { "aria-label": "Line limit" },
    [...new Set([...LIMITS, state.limit])].sort((a, b) => a - b).map((n) => el("option", { value: n, selected: n === state.limit }, String(n))));
  const dirSel = el("select#logs-direction", { "aria-label": "Order" },
    el("option", { value: "backward", selected: state.direction === "backward" }, "Newest first"),
    el("option", { value: "forward", selected: state.direction === "forward" }, "Oldest first"));
  const tailBtn = el("button#logs-tail", { type: "button", "aria-pressed": "false", title: "Stream new lines as they arrive" }, "Live tail");
  const tailStatus = el("span.logs-tail-status", { role: "status" });
  const rangeBox = el("span.logs-range");
  const windowBox = el("span.logs-window");
  const labelHint = el("div.logs-labels-hint.muted");
  const browserBody = el("div.logs-browser-body");
  const labelBrowser = el("details.logs-browser", el("summary", "Label browser"), browserBody);

  const volumeBox = el("section.card.logs-volume", { "aria-label": "Log volume" });
  const resultsBox = el("section.logs-results", { "aria-label": "Results" });

  root.replaceChildren(
    el("h1", "Logs"),
    el("div.card.logs-editor",
      el("label.field", { for: "logql" }, el("span", "LogQL"), editor),
      el("div.logs-under-editor", queryError, queryKind),
      el("div.toolbar.logs-toolbar",
        windowBox, rangeBox,
        el("label.field", el("span", "Limit"), limitSel),
        el("label.field", el("span", "Order"), dirSel),
        runBtn, tailBtn, tailStatus),
      labelHint, labelBrowser),
    volumeBox, resultsBox);

  function drawWindowPicker() {
    const choices = WINDOWS.includes(state.since) ? WINDOWS : [state.since, ...WINDOWS];
    windowBox.replaceChildren(windowPicker(state.since, (v) => {
      state.since = v; state.start = ""; state.end = "";
      run({ push: true });
    }, { choices }));
    rangeBox.replaceChildren();
    if (state.start || state.end) {
      const w = windowOf();
      rangeBox.append(el("span.badge", w.error ? "bad time range" : `${fmtTime(w.startMs)} – ${fmtTime(w.endMs)}`), " ",
        el("button.logs-relative", { type: "button", onclick: () => { state.start = ""; state.end = ""; run({ push: true }); } },
          `Back to last ${state.since}`));
    }
  }

  // ---------------------------------------------------------------- time window
  function parseTime(v) {
    if (!v) return NaN;
    if (/^\d+$/.test(v)) return Number(v); // unix milliseconds
    return Date.parse(v); // RFC3339
  }

  function windowOf() {
    if (state.start || state.end) {
      const s = parseTime(state.start), e = state.end ? parseTime(state.end) : Date.now();
      if (!Number.isFinite(s) || !Number.isFinite(e)) {
        return {
          error: `Cannot read the time range start=${state.start || "(missing)"} end=${state.end || "(now)"}: `
            + "use unix milliseconds or RFC3339 (2024-05-01T10:00:00Z).",
        };
      }
      if (e <= s) return { error: "The time range ends before it starts: pick the range again." };
      return { startMs: s, endMs: e, relative: false, label: `between ${fmtTime(s)} and ${fmtTime(e)}` };
    }
    const secs = parseDuration(state.since);
    if (!secs) return { error: `since=${state.since} is not a duration like 15m, 1h or 7d.` };
    const endMs = Date.now();
    return { startMs: endMs - secs * 1000, endMs, relative: true, label: `in the last ${state.since}` };
  }

  const ns = (ms) => (BigInt(Math.round(ms)) * 1000000n).toString();

  function saveState(push) {
    if (disposed) return;
    const abs = Boolean(state.start || state.end);
    setState({
      // since stays beside start/end (which win, as in Loki's API) so "Back to last …" survives a reload
      query: state.query, since: state.since, start: abs ? state.start : "", end: abs ? state.end : "",
      limit: state.limit, direction: state.direction, tail: state.tail ? "1" : "", line: state.line,
    }, { push });
  }

  // ---------------------------------------------------------------- validation as the user types
  // The server's message, and for a parse error the offending line with a caret under the column it names.
  function showQueryError(msg, q = "") {
    queryError.replaceChildren();
    if (!msg) return;
    const box = el("div.error", el("div", msg));
    const m = /^parse error at line (\d+), col (\d+)/.exec(msg);
    const src = m && q.split("\n")[Number(m[1]) - 1];
    if (src !== undefined && src !== null && src !== "") {
      box.append(el("pre.logs-caret", `${src}\n${" ".repeat(Math.max(0, Number(m[2]) - 1))}^`));
    }
    queryError.append(box);
  }

  function describe(canonical) {
    const isLog = canonical.trimStart().startsWith("{");
    queryKind.textContent = isLog ? "Log query" : "Metric query: drawn as a chart";
    return isLog;
  }

  async function validate() {
    const q = editor.value.trim();
    if (checkCtl) checkCtl.abort();
    if (!q) { showQueryError(""); queryKind.textContent = ""; return; }
    checkCtl = new AbortController();
    try {
      const r = await api(`${LOKI}/format_query`, { query: q }, { signal: checkCtl.signal });
      if (disposed || editor.value.trim() !== q) return;
      showQueryError("");
      describe(r.data);
    } catch (e) {
      if (e.name === "AbortError" || disposed || editor.value.trim() !== q) return;
      queryKind.textContent = "";
      showQueryError(e.message, q);
    }
  }

  editor.addEventListener("input", () => {
    clearTimeout(checkTimer);
    checkTimer = setTimeout(validate, VALIDATE_MS);
  });
  editor.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) {
      ev.preventDefault();
      run({ push: true });
    }
  });
  runBtn.addEventListener("click", () => run({ push: true }));
  limitSel.addEventListener("change", () => { state.limit = Number(limitSel.value); run({ push: true }); });
  dirSel.addEventListener("change", () => { state.direction = dirSel.value; run({ push: true }); });
  tailBtn.addEventListener("click", () => {
    if (state.tail) {
      state.tail = false;
      stopTail("stopped");
      saveState(false);
    } else {
      state.tail = true;
      if (state.start || state.end) { state.start = ""; state.end = ""; run({ push: true }); return; } // tail is about now
      saveState(false);
      if (last && last.isLog) startTail();
      else run({ push: false });
    }
    drawTailButton();
  });

  function drawTailButton() {
    tailBtn.setAttribute("aria-pressed", state.tail ? "true" : "false");
    tailBtn.classList.toggle("primary", state.tail);
    tailBtn.textContent = state.tail ? "■ Stop tail" : "Live tail";
  }

  // ---------------------------------------------------------------- running a query
  async function run({ push = false } = {}) {
    if (disposed) return;
    clearTimeout(checkTimer);
    if (checkCtl) checkCtl.abort(); // the run reports on this text itself; a late validation must not clear that
    if (runCtl) runCtl.abort();
    const ctl = runCtl = new AbortController();
    const signal = ctl.signal;
    if (ranQuery !== null && editor.value.trim() !== ranQuery) { state.line = ""; expanded.clear(); } // other lines now
    state.query = ranQuery = editor.value.trim();
    stopTail(null);
    drawWindowPicker();
    drawTailButton();
    if (!state.query) {
      saveState(push);
      showQueryError("");
      volumeBox.hidden = true;
      emptyState(resultsBox, "Type a LogQL query to search the logs",
        'Start with a stream selector such as {service_name="productpage"}, add |= "text" to filter lines, then press '
        + "Run or Ctrl+Enter. The label browser above lists the labels you can select on.");
      return;
    }
    saveState(push);
    const win = windowOf();
    if (win.error) {
      volumeBox.hidden = true;
      showError(resultsBox, win.error);
      return;
    }
    loading(resultsBox, "Running query…");
    let canonical;
    try {
      canonical = (await api(`${LOKI}/format_query`, { query: state.query }, { signal })).data;
    } catch (e) {
      if (e.name === "AbortError" || disposed) return;
      queryKind.textContent = "";
      showQueryError(e.message, state.query);
      volumeBox.hidden = true;
      showError(resultsBox, `The query cannot run: ${e.message}`);
      return;
    }
    if (signal.aborted || disposed) return;
    showQueryError("");
    const isLog = describe(canonical);
    last = { query: state.query, canonical, isLog, win };
    tailBtn.disabled = !isLog;
    tailBtn.title = isLog ? "Stream new lines as they arrive" : "Live tail needs a log query, not a metric query";
    if (isLog) {
      volumeBox.hidden = false;
      await Promise.all([runVolume(canonical, win, signal), runLines(win, signal)]);
      if (!signal.aborted && !disposed && state.tail) startTail();
    } else {
      volumeBox.hidden = true;
      if (state.tail) { state.tail = false; saveState(false); drawTailButton(); }
      await runMetric(win, signal);
    }
  }

  // Errors of the query itself go where the results would be, and (when the query is at fault: a 400 such as a
  // bad regexp, which only running it finds) also under the editor.
  function queryFailed(e, box, what) {
    if (e.name === "AbortError" || disposed) return;
    const msg = e.message || String(e);
    if (box === resultsBox && e instanceof ApiError && e.status === 400) showQueryError(msg, state.query);
    showError(box, `${what}: ${msg}`);
  }

  async function runLines(win, signal) {
    let resp;
    try {
      resp = await api(`${LOKI}/query_range`, {
        query: state.query, start: ns(win.startMs), end: ns(win.endMs), limit: state.limit, direction: state.direction,
      }, { signal, headers: CATEGORIZE });
    } catch (e) {
      queryFailed(e, resultsBox, "The query failed");
      return;
    }
    if (signal.aborted || disposed) return;
    const data = resp.data || {};
    if (data.resultType !== "streams") { drawMetric(data, win); return; }
    const entries = toEntries(data.result);
    sortEntries(entries);
    drawLines(entries, win, data.stats);
  }

  async function runVolume(canonical, win, signal) {
    const spanS = (win.endMs - win.startMs) / 1000;
    const step = STEPS_S.find((s) => s >= spanS / 80) || 86400;
    const stepMs = step * 1000;
    const vStart = Math.floor(win.startMs / stepMs) * stepMs;
    const vEnd = Math.ceil(win.endMs / stepMs) * stepMs;
    // The whole query (parsers and label filters too), as Grafana's log volume does, so bars match the lines.
    const q = `sum by (level) (count_over_time(${canonical} [${step}s]))`;
    loading(volumeBox, "Counting lines…");
    let resp;
    try {
      // a bar at t counts (t - step, t]: the first one ends a step after the aligned start
      resp = await api(`${LOKI}/query_range`, { query: q, start: ns(vStart + stepMs), end: ns(vEnd), step }, { signal });
    } catch (e) {
      queryFailed(e, volumeBox, "Log volume unavailable");
      return;
    }
    if (signal.aborted || disposed) return;
    const result = (resp.data && resp.data.result) || [];
    const series = promSeries(result, (m) => m.level || "unknown");
    series.sort((a, b) => levelRank(a.name) - levelRank(b.name));
    for (const s of series) s.color = levelColor(s.name);
    const total = series.reduce((n, s) => n + s.points.reduce((m, p) => m + p[1], 0), 0);
    if (series.length) {
      // zero-height points at both ends so the axis spans the whole window, not just where lines are
      series[0].points = [[vStart, 0], ...series[0].points, [vEnd, 0]];
    }
    const chart = timeChart(series, {
      bars: true, stacked: true, height: 120,
      title: `Log volume by level: ${fmtNumber(total, 0)} lines ${win.label}, ${fmtStep(step)} bars`
        + (series.length ? " (drag across the bars to zoom in)" : ""),
      onSelect: (t0, t1) => {
        state.start = String(Math.floor(t0)); state.end = String(Math.ceil(t1));
        if (state.tail) { state.tail = false; tailStatus.textContent = "tail stopped: a fixed time range is shown"; }
        run({ push: true });
      },
    });
    volumeBox.replaceChildren(chart);
  }

  async function runMetric(win, signal) {
    let resp;
    try {
      resp = await api(`${LOKI}/query_range`, { query: state.query, start: ns(win.startMs), end: ns(win.endMs) }, { signal });
    } catch (e) {
      queryFailed(e, resultsBox, "The query failed");
      return;
    }
    if (signal.aborted || disposed) return;
    drawMetric(resp.data || {}, win);
  }

  function drawMetric(data, win) {
    rows = null;
    const result = Array.isArray(data.result) ? data.result : [];
    if (data.resultType === "scalar") {
      resultsBox.replaceChildren(el("div.card", el("h2", "Scalar"), el("p.mono", String(result[1]))));
      return;
    }
    if (!result.length) {
      emptyState(resultsBox, `The query returned no series ${win.label}.`,
        "Widen the window, or check the selector and filters with a log query first (the same query without the function around it).");
      return;
    }
    const series = promSeries(result);
    const table = el("table.data.logs-series",
      el("thead", el("tr", el("th", "Series"), el("th.num", "Last"), el("th.num", "Max"), el("th.num", "Points"))),
      el("tbody", series.map((s) => {
        const vals = s.points.map((p) => p[1]).filter(Number.isFinite);
        return el("tr", el("td.mono", s.name), el("td.num", fmtNumber(vals[vals.length - 1])),
          el("td.num", fmtNumber(vals.length ? Math.max(...vals) : NaN)), el("td.num", String(s.points.length)));
      })));
    resultsBox.replaceChildren(
      el("div.card.logs-metric", timeChart(series, { height: 220, title: `${result.length} series ${win.label}` })),
      el("div.table-wrap", table));
  }

  // ---------------------------------------------------------------- lines
  function toEntries(streams) {
    const out = [];
    for (const s of streams || []) {
      for (const v of s.values || []) out.push(makeEntry(s.stream || {}, v));
    }
    return out;
  }

  function makeEntry(stream, v) {
    const extra = v[2] || {};
    const meta = extra.structuredMetadata || {};
    const parsed = extra.parsed || {};
    const labelsKey = Object.keys(stream).sort().map((k) => `${k}=${stream[k]}`).join(",");
    const metaKey = Object.keys(meta).sort().map((k) => `${k}=${meta[k]}`).join(",");
    return {
      id: `${v[0]}-${fnv(`${labelsKey}\u0000${metaKey}\u0000${v[1]}`)}`,
      ts: String(v[0]), ms: nsToMs(v[0]), line: String(v[1]), stream, meta, parsed,
    };
  }

  function sortEntries(entries) {
    const cmp = (a, b) => (a.ts.length - b.ts.length) || (a.ts < b.ts ? -1 : a.ts > b.ts ? 1 : 0);
    entries.sort(state.direction === "forward" ? cmp : (a, b) => cmp(b, a));
  }

  function drawLines(entries, win, stats) {
    if (!entries.length) {
      rows = { list: el("div.logs-list"), entries: new Map(), common: {}, count: 0, live: 0, summary: el("div.logs-summary") };
      emptyState(resultsBox, `No lines matched ${win.label}.`,
        win.relative ? "Widen the window or relax the filter (remove line filters, or use a broader selector such as a namespace)."
          : "Widen the time range (Back to last …) or relax the filter.");
      return;
    }
    const common = commonLabels(entries);
    const summary = el("div.logs-summary");
    const list = el("div.logs-list", { role: "list" });
    rows = { list, entries: new Map(), common, count: 0, live: 0, summary, stats, win };
    for (const e of entries) addRow(e, "end");
    // Labels every line shares, shown once; folded on a narrow screen where they would push the lines down.
    const commonBox = Object.keys(common).length
      ? el("details.logs-common", { open: window.innerWidth > 800 },
        el("summary.muted", `Common labels (${Object.keys(common).length})`),
        Object.keys(common).sort().map((k) => el("span.badge.logs-label", `${k}=${common[k]}`)))
      : null;
    resultsBox.replaceChildren(...[summary, commonBox, list].filter(Boolean));
    drawSummary();
    if (state.line) {
      const row = list.querySelector(`[data-id="${CSS.escape(state.line)}"]`);
      if (row) row.scrollIntoView({ block: "center" });
    }
  }

  function drawSummary() {
    if (!rows || !rows.summary) return;
    const n = rows.count;
    const parts = [`${fmtNumber(n, 0)} line${n === 1 ? "" : "s"}`, state.direction === "forward" ? "oldest first" : "newest first"];
    if (rows.live) parts.push(`${rows.live} from live tail`);
    const exec = rows.stats && rows.stats.summary && rows.stats.summary.execTime;
    if (exec) parts.push(`${(exec * 1000).toFixed(0)} ms`);
    const kids = [el("span", parts.join(" · "))];
    if (n - rows.live >= state.limit) {
      kids.push(el("span.muted", ` · the limit of ${state.limit} was reached: raise the limit or narrow the window to see the rest`));
    }
    if (state.line && !rows.entries.has(state.line)) {
      kids.push(el("span.muted", " · the linked line is not among these results (widen the window or raise the limit)"));
    }
    rows.summary.replaceChildren(...kids);
  }

  function commonLabels(entries) {
    const first = entries[0].stream;
    const common = { ...first };
    for (const e of entries) {
      for (const k of Object.keys(common)) if (e.stream[k] !== common[k]) delete common[k];
    }
    if (entries.length === 1) return {};
    return common;
  }

  function addRow(entry, where) {
    if (rows.entries.has(entry.id)) return false;
    rows.entries.set(entry.id, entry);
    rows.count++;
    const row = buildRow(entry);
    if (where === "start") rows.list.prepend(row); else rows.list.append(row);
    return true;
  }

  function levelOf(entry) {
    for (const src of [entry.stream, entry.meta, entry.parsed]) {
      for (const k of LEVEL_KEYS) if (src[k]) return String(src[k]).toLowerCase();
    }
    return "";
  }

  function traceIdOf(entry) {
    for (const src of [entry.meta, entry.stream, entry.parsed]) {
      for (const k of TRACE_KEYS) {
        const v = src[k];
        if (v && /^([0-9a-f]{32}|[0-9a-f]{16})$/i.test(v) && !/^0+$/.test(v)) return v.toLowerCase();
      }
    }
    return "";
  }

  function buildRow(entry) {
    const level = levelOf(entry);
    const traceId = traceIdOf(entry);
    const isOpen = expanded.has(entry.id);
    const toggle = el("button.logs-toggle", {
      type: "button", "aria-expanded": isOpen ? "true" : "false", "aria-label": "Show details", title: "Show labels and metadata",
    }, isOpen ? "▾" : "▸");
    const unique = Object.keys(entry.stream).sort(byLabelPriority).filter((k) => k !== "level" && rows.common[k] !== entry.stream[k]);
    const head = el("div.logs-head",
      toggle,
      el("time.logs-time", { datetime: new Date(entry.ms).toISOString(), title: `${entry.ts} ns` }, fmtTime(entry.ms)),
      el("span.logs-level", { style: { color: levelColor(level || "unknown") } }, level || "–"),
      unique.length ? el("span.logs-unique", { title: unique.map((k) => `${k}=${entry.stream[k]}`).join("\n") },
        unique.map((k) => `${k}=${entry.stream[k]}`).join(" ")) : null,
      el("span.logs-line", entry.line),
      traceId ? el("a.trace-link", { href: `/traces/${traceId}`, title: `Open trace ${traceId}` }, "trace") : null);
    const row = el("div.logs-row", { role: "listitem", dataset: { id: entry.id, level: level || "unknown" } }, head);
    row.style.borderLeftColor = levelColor(level || "unknown");
    const setOpen = (open) => {
      if (open) expanded.add(entry.id); else expanded.delete(entry.id);
      toggle.setAttribute("aria-expanded", open ? "true" : "false");
      toggle.textContent = open ? "▾" : "▸";
      row.classList.toggle("open", open);
      const old = row.querySelector(".logs-details");
      if (old) old.remove();
      if (open) row.append(buildDetails(entry, traceId));
      state.line = open ? entry.id : (state.line === entry.id ? "" : state.line);
      saveState(false);
    };
    head.addEventListener("click", (ev) => {
      if (ev.target.closest("a") || (ev.target.closest("button") && ev.target.closest("button") !== toggle)) return;
      if (ev.target !== toggle && String(window.getSelection && window.getSelection()).length) return; // selecting text
      setOpen(!expanded.has(entry.id));
    });
    if (isOpen) { row.classList.add("open"); row.append(buildDetails(entry, traceId)); }
    return row;
  }

  function buildDetails(entry, traceId) {
    const section = (title, obj, filterable, emptyHint) => {
      const keys = Object.keys(obj).sort();
      return el("div.logs-kv",
        el("h3", title),
        keys.length ? el("table.data.logs-kv-table", el("tbody", keys.map((k) => el("tr",
          el("th", { scope: "row" }, k),
          el("td.mono", String(obj[k])),
          el("td.logs-filters", filterable && last && last.isLog ? [
            el("button.logs-filter", { type: "button", title: `Only lines with ${k}=${obj[k]}`, onclick: () => addFilter(k, obj[k], "=") }, "+"),
            el("button.logs-filter", { type: "button", title: `Without lines with ${k}=${obj[k]}`, onclick: () => addFilter(k, obj[k], "!=") }, "−"),
          ] : null))))) : el("p.muted", emptyHint));
    };
    return el("div.logs-details",
      el("div.logs-detail-actions",
        el("span.muted", `timestamp ${entry.ts} ns`),
        traceId ? el("a.trace-link", { href: `/traces/${traceId}` }, `Open trace ${traceId}`) : el("span.muted", "no trace id on this line"),
        traceId ? el("a.logs-trace-logs", { href: traceLogsHref(traceId) }, "All logs of this trace") : null),
      el("pre.logs-full", entry.line),
      section("Stream labels", entry.stream, true, "No stream labels."),
      section("Structured metadata", entry.meta, true, "No structured metadata."),
      section("Parsed fields", entry.parsed, true, "None: add a parser such as | json or | logfmt to the query to extract fields from the line."));
  }

  // Every line of the trace, from any service, oldest first.
  function traceLogsHref(traceId) {
    const q = `{service_name=~".+"} | trace_id=${quote(traceId)}`;
    return `/logs?${new URLSearchParams({ query: q, since: state.since, limit: state.limit, direction: "forward" })}`;
  }

  function addFilter(k, v, op) {
    editor.value = `${editor.value.trim()} | ${k}${op}${quote(v)}`;
    run({ push: true });
  }

  // ---------------------------------------------------------------- live tail
  function startTail() {
    stopTail(null);
    if (!last || !last.isLog || disposed) return;
    const params = new URLSearchParams({
      query: last.query, limit: String(Math.min(state.limit, 1000)), start: tailStart(), encodingFlags: "categorize-labels",
    });
    const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${LOKI}/tail?${params}`;
    const ws = new WebSocket(url);
    const t = tail = { ws, stoppedByUser: false, received: 0 };
    tailStatus.textContent = "connecting…";
    tailStatus.className = "logs-tail-status connecting";
    ws.onopen = () => {
      if (tail !== t) return;
      tailStatus.textContent = "live: waiting for new lines";
      tailStatus.className = "logs-tail-status live";
    };
    ws.onmessage = (ev) => {
      if (tail !== t || disposed) return;
      let frame;
      try { frame = JSON.parse(ev.data); } catch (_) { return; }
      const fresh = toEntries(frame.streams);
      sortEntries(fresh);
      const added = insertLive(fresh);
      t.received += added;
      tailStatus.textContent = `live: ${t.received} new line${t.received === 1 ? "" : "s"}`;
    };
    ws.onclose = (ev) => {
      if (tail !== t) return;
      tail = null;
      if (disposed || t.stoppedByUser) return;
      state.tail = false;
      saveState(false);
      drawTailButton();
      tailStatus.textContent = `closed${ev.reason ? `: ${ev.reason}` : ev.code === 1006 ? ": connection lost" : ""} (code ${ev.code})`;
      tailStatus.className = "logs-tail-status closed";
    };
  }

  // Where the tail begins (ns): right after what is shown, so lines the store took after the query ran still come
  // (repeats of shown lines are dropped by id). A fixed range or a list cut short by an oldest-first limit: now.
  function tailStart() {
    if (!last.win || !last.win.relative) return ns(Date.now());
    if (!rows || !rows.count) return ns(last.win.startMs);
    if (state.direction === "forward" && rows.count >= state.limit) return ns(last.win.endMs);
    let newest = 0n;
    for (const e of rows.entries.values()) { const t = BigInt(e.ts); if (t > newest) newest = t; }
    return newest.toString();
  }

  function stopTail(reason) {
    if (tail) {
      tail.stoppedByUser = true;
      try { tail.ws.close(1000, "tail stopped"); } catch (_) { /* already closing */ }
      tail = null;
    }
    if (reason && !disposed) {
      tailStatus.textContent = reason === "stopped" ? "tail stopped" : reason;
      tailStatus.className = "logs-tail-status closed";
    }
  }

  // New lines go where "newest" is: on top when newest first, at the bottom when oldest first.
  function insertLive(fresh) {
    if (!fresh.length) return 0;
    if (!rows || !rows.list.isConnected) {
      const common = rows && rows.common ? rows.common : {};
      const summary = el("div.logs-summary");
      const list = el("div.logs-list", { role: "list" });
      rows = { list, entries: new Map(), common, count: 0, live: 0, summary };
      resultsBox.replaceChildren(summary, list);
    }
    let added = 0;
    const backward = state.direction !== "forward";
    // fresh is sorted in display order; prepend in reverse so the newest ends on top
    const seq = backward ? [...fresh].reverse() : fresh;
    for (const e of seq) {
      if (addRow(e, backward ? "start" : "end")) {
        added++;
        const row = rows.list.querySelector(`[data-id="${CSS.escape(e.id)}"]`);
        if (row) row.classList.add("live");
      }
    }
    rows.live += added;
    while (rows.list.children.length > MAX_ROWS) {
      const gone = backward ? rows.list.lastElementChild : rows.list.firstElementChild;
      rows.entries.delete(gone.dataset.id);
      rows.count--;
      gone.remove();
    }
    drawSummary();
    return added;
  }

  // ---------------------------------------------------------------- labels: hint and browser
  async function loadLabelNames() {
    const w = windowOf();
    const params = w.error ? {} : { start: ns(w.startMs), end: ns(w.endMs) };
    return (await api(`${LOKI}/labels`, params)).data || [];
  }

  async function fillHint() {
    try {
      const names = await loadLabelNames();
      if (disposed) return;
      labelHint.replaceChildren(names.length
        ? el("span", "Labels to select on: ", names.map((n, i) => [i ? ", " : "", el("code", n)]), ". Ctrl+Enter runs the query.")
        : el("span", "No labels yet: no logs were stored in this window. Send logs over OTLP (port 4318) or Loki push, or run meshscope serve --demo."));
    } catch (e) {
      if (!disposed) labelHint.replaceChildren(el("span", `Labels unavailable: ${e.message}`));
    }
  }

  let browserLoaded = false;
  labelBrowser.addEventListener("toggle", async () => {
    if (!labelBrowser.open || browserLoaded) return;
    browserLoaded = true;
    loading(browserBody, "Loading labels…");
    try {
      const names = await loadLabelNames();
      if (disposed) return;
      const values = el("div.logs-browser-values");
      browserBody.replaceChildren(
        el("div.logs-browser-names", names.length ? names.map((n) => el("button.logs-chip", { type: "button", onclick: () => showValues(n, values) }, n))
          : el("span.muted", "No labels in this window.")),
        values);
    } catch (e) {
      browserLoaded = false;
      if (!disposed) showError(browserBody, `Labels unavailable: ${e.message}`);
    }
  });

  async function showValues(name, box) {
    loading(box, `Loading values of ${name}…`);
    const w = windowOf();
    try {
      const vals = (await api(`${LOKI}/label/${encodeURIComponent(name)}/values`, w.error ? {} : { start: ns(w.startMs), end: ns(w.endMs) })).data || [];
      if (disposed) return;
      box.replaceChildren(el("div.muted", `${name}: click a value to query its streams`),
        ...vals.slice(0, 200).map((v) => el("button.logs-chip", {
          type: "button", onclick: () => { editor.value = `{${name}=${quote(v)}}`; run({ push: true }); },
        }, v)));
    } catch (e) {
      if (!disposed) showError(box, `Values unavailable: ${e.message}`);
    }
  }

  // ---------------------------------------------------------------- start
  drawWindowPicker();
  drawTailButton();
  fillHint();
  (async () => {
    if (!state.query) {
      // No query in the URL: start on one of the services that sent logs, so the page shows something useful.
      loading(resultsBox, "Looking for services that sent logs…");
      try {
        const w = windowOf();
        const svcs = (await api(`${LOKI}/label/service_name/values`, w.error ? {} : { start: ns(w.startMs), end: ns(w.endMs) })).data || [];
        if (disposed) return;
        const pick = svcs.includes("productpage") ? "productpage" : svcs[0];
        if (pick && !editor.value.trim()) editor.value = `{service_name=${quote(pick)}}`;
      } catch (e) {
        if (disposed) return;
        showError(resultsBox, `Cannot list services: ${e.message}`);
        return;
      }
    }
    await run({ push: false });
  })().catch((e) => { if (!disposed) showError(resultsBox, `The logs page failed: ${e.message}`); });

  return () => {
    disposed = true;
    clearTimeout(checkTimer);
    if (runCtl) runCtl.abort();
    if (checkCtl) checkCtl.abort();
    stopTail(null);
  };
}

// Any positive whole number up to the server's 5000 (a hand-edited URL may carry e.g. 250), else 100.
function readLimit(raw) {
  const n = Number(raw);
  return Number.isInteger(n) && n > 0 ? Math.min(n, 5000) : 100;
}

// The labels that tell lines apart first (the service, then its workload), the rest by name.
const FIRST_LABELS = ["service_name", "k8s_deployment_name", "k8s_namespace_name", "k8s_pod_name"];
function byLabelPriority(a, b) {
  const ia = FIRST_LABELS.indexOf(a), ib = FIRST_LABELS.indexOf(b);
  if (ia !== ib) return (ia < 0 ? FIRST_LABELS.length : ia) - (ib < 0 ? FIRST_LABELS.length : ib);
  return a < b ? -1 : a > b ? 1 : 0;
}

function levelRank(name) {
  const order = ["fatal", "critical", "error", "warn", "warning", "info", "debug", "trace"];
  const i = order.indexOf(name);
  return i < 0 ? order.length : i;
}

function levelColor(level) {
  return LEVEL_COLORS[level] || LEVEL_COLORS.unknown;
}

function fmtStep(s) {
  if (s % 86400 === 0) return `${s / 86400}d`;
  if (s % 3600 === 0) return `${s / 3600}h`;
  if (s % 60 === 0) return `${s / 60}m`;
  return `${s}s`;
}

// FNV-1a: a short, stable id for a line (timestamp alone is not unique), for line=<id> in the URL.
function fnv(s) {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return (h >>> 0).toString(16).padStart(8, "0");
}
