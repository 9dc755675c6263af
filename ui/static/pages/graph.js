// The service graph: the server-rendered SVG (/api/graph.svg) made interactive — pan (drag), zoom (wheel, buttons),
// hover highlight, click a node or edge for a side panel (/api/graph/node, /api/graph/edge: RED, health, top
// errors, links to its logs and traces). /api/graph (Kiali JSON) gives the summary and the node list,
// /api/graph/namespaces the namespace picker. Every choice lives in the URL:
//   /graph?namespaces=bookinfo&graphType=versionedApp&duration=10m&refresh=30s&node=<id>   (or &edge=<id>)
import {
  api, ApiError, getState, setState, el, loading, showError, emptyState, fmtNumber, fmtPercent, fmtDurationMs,
  every, parseDuration, nsToMs, fmtTime, svg,
} from "/static/lib.js";

const GRAPH_TYPES = [["versionedApp", "Versioned app"], ["app", "App"], ["workload", "Workload"], ["service", "Service"]];
const WINDOWS = ["1m", "5m", "10m", "15m", "30m", "1h", "3h", "6h", "12h", "24h", "7d"];
const REFRESH = [["", "Off"], ["10s", "Every 10s"], ["30s", "Every 30s"], ["1m", "Every 1m"]];
const DEFAULTS = { graphType: "versionedApp", duration: "10m" };
const HEALTH_CLASS = { Healthy: "ok", Degraded: "warn", Failure: "bad" };
const MIN_ZOOM = 0.1, MAX_ZOOM = 8; // viewBox width relative to the fitted one: 1/8 .. 10x
const DRAG_PX = 4;                   // a pointer that moves more than this is a pan, not a click

// ---- URL state ----
function readState() {
  const st = getState();
  return {
    namespaces: st.get("namespaces") || "",
    graphType: st.get("graphType") || DEFAULTS.graphType,
    duration: st.get("duration") || DEFAULTS.duration,
    refresh: st.get("refresh") || "",
    node: st.get("node") || "",
    edge: st.get("edge") || "",
  };
}

function graphParams(s) {
  return { namespaces: s.namespaces, graphType: s.graphType, duration: s.duration };
}

// A window in seconds as the Logs and Traces pages take it (10m, 1h, 2d).
function windowText(seconds) {
  if (seconds >= 172800 && seconds % 86400 === 0) return `${seconds / 86400}d`;
  if (seconds % 3600 === 0) return `${seconds / 3600}h`;
  if (seconds % 60 === 0) return `${seconds / 60}m`;
  return `${seconds}s`;
}

// Tags as the Traces page's field reads them: key=value, quoted when needed.
function tagsText(tags) {
  return Object.entries(tags || {}).map(([k, v]) =>
    `${k}=${/[\s"\\]/.test(v) || v === "" ? `"${String(v).replace(/[\\"]/g, (c) => `\\${c}`)}"` : v}`).join(" ");
}

function logsHref(query, seconds) {
  return `/logs?${new URLSearchParams({ query, since: windowText(seconds) })}`;
}

function tracesHref(traces, seconds, extraTags = {}) {
  const p = new URLSearchParams({ service: traces.service, lookback: windowText(seconds) });
  const tags = tagsText({ ...(traces.tags || {}), ...extraTags });
  if (tags) p.set("tags", tags);
  return `/traces?${p}`;
}

// ---- fetching the SVG (text, not JSON) with the same error handling as api() ----
async function fetchText(path, params, signal) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(params)) if (v) url.searchParams.set(k, v);
  let resp;
  try {
    resp = await fetch(url, { signal });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, `cannot reach meshscope: ${e.message}`);
  }
  const text = await resp.text();
  if (!resp.ok) throw new ApiError(resp.status, text.trim() || `HTTP ${resp.status}`);
  return text;
}

// Parse the server's SVG as XML and import it: names inside are data, so nothing is ever parsed as HTML, and
// anything active (scripts, event handlers, foreign HTML) is dropped even though our renderer never emits it.
function importSvg(text) {
  const doc = new DOMParser().parseFromString(text, "image/svg+xml");
  const root = doc.documentElement;
  if (!root || root.localName !== "svg" || doc.getElementsByTagName("parsererror").length) {
    throw new Error("the server's graph SVG could not be parsed");
  }
  for (const bad of root.querySelectorAll("script, foreignObject, iframe")) bad.remove();
  for (const node of root.querySelectorAll("*")) {
    for (const a of [...node.attributes]) {
      if (/^on/i.test(a.name) || (/href$/i.test(a.name) && /^\s*javascript:/i.test(a.value))) node.removeAttribute(a.name);
    }
  }
  return document.importNode(root, true);
}

function healthBadge(status) {
  return el(`span.badge${HEALTH_CLASS[status] ? "." + HEALTH_CLASS[status] : ""}.graph-health`, status || "NA");
}

// The legend's small copies of the node shapes the server draws (query/graph/svg.py).
function shapeIcon(kind) {
  const common = { fill: "#fff", stroke: "#4f5255", "stroke-width": 1.5 };
  const shape = kind === "rect" ? svg("rect", { x: 2, y: 3, width: 14, height: 10, rx: 2, ...common })
    : kind === "ellipse" ? svg("ellipse", { cx: 9, cy: 8, rx: 7, ry: 5, ...common })
      : kind === "rhombus" ? svg("polygon", { points: "9,1 16,8 9,15 2,8", ...common })
        : svg("polygon", { points: "5,3 13,3 16,13 2,13", ...common });
  return svg("svg", { width: 18, height: 16, viewBox: "0 0 18 16", class: "graph-shape-icon", "aria-hidden": "true" }, shape);
}

// replaceChildren() would print a null as "null": drop the parts a panel leaves out.
function put(node, ...children) {
  node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false && c !== ""));
}

function rate(x) { return x === null || x === undefined ? "–" : `${fmtNumber(x)}/s`; }
function bytesRate(x) {
  if (!x) return "–";
  if (x >= 1048576) return `${(x / 1048576).toFixed(2)} MiB/s`;
  if (x >= 1024) return `${(x / 1024).toFixed(2)} KiB/s`;
  return `${x.toFixed(1)} B/s`;
}

export async function render(root, ctx) {
  let state = readState();
  const ctl = new AbortController(); // aborted when the user leaves the page
  let loadSeq = 0, panelSeq = 0;
  let stopRefresh = () => {};
  let svgEl = null, base = null, view = null, userMoved = false;
  let nodesById = new Map();

  // ---- layout ----
  const nsSelect = el("select#graph-namespace", { "aria-label": "Namespace", onchange: () => change({ namespaces: nsSelect.value }) });
  const typeSelect = el("select#graph-type", { "aria-label": "Graph type", onchange: () => change({ graphType: typeSelect.value }) },
    GRAPH_TYPES.map(([v, label]) => el("option", { value: v }, label)));
  const windowSelect = el("select#graph-window", { "aria-label": "Window", onchange: () => change({ duration: windowSelect.value }) });
  const refreshSelect = el("select#graph-refresh", { "aria-label": "Auto refresh", onchange: () => change({ refresh: refreshSelect.value }, { reload: false }) },
    REFRESH.map(([v, label]) => el("option", { value: v }, label)));
  const findSelect = el("select#graph-find", { "aria-label": "Find a node", onchange: () => { if (findSelect.value) select("node", findSelect.value, { center: true }); } });
  const status = el("span.graph-status.muted", { role: "status" });
  const toolbar = el("div.toolbar.graph-toolbar",
    el("label.field", el("span", "Namespace"), nsSelect),
    el("label.field", el("span", "Graph type"), typeSelect),
    el("label.field", el("span", "Window"), windowSelect),
    el("label.field", el("span", "Refresh"), refreshSelect),
    el("button#graph-reload", { type: "button", title: "Load the graph again now", onclick: () => load({ quiet: true }) }, "Refresh"),
    el("label.field.graph-find", el("span", "Find"), findSelect),
    status);

  const canvas = el("div.graph-canvas#graph-canvas", { tabindex: "0", "aria-label": "Service graph: drag to pan, wheel or +/- to zoom, click a node or edge for details" });
  const zoomBar = el("div.graph-zoom",
    el("button", { type: "button", title: "Zoom in", "aria-label": "Zoom in", onclick: () => zoomBy(1 / 1.3) }, "+"),
    el("button", { type: "button", title: "Zoom out", "aria-label": "Zoom out", onclick: () => zoomBy(1.3) }, "\u2212"),
    el("button", { type: "button", title: "Fit the graph", "aria-label": "Fit", onclick: () => fit() }, "Fit"));
  const summary = el("div.graph-summary.muted");
  const legend = el("ul.legend.graph-legend",
    [["#3e8635", "healthy"], ["#f0ab00", "degraded"], ["#c9190b", "failure"], ["#0066cc", "TCP"], ["#8a8d90", "no traffic"]]
      .map(([c, t]) => el("li", el("span.swatch", { style: { background: c } }), t)),
    [["app", "rect"], ["workload", "ellipse"], ["service", "rhombus"], ["service entry", "trapezoid"]]
      .map(([t, shape]) => el("li", shapeIcon(shape), t)));
  const graphCard = el("div.card.graph-card", el("div.graph-stage", canvas, zoomBar), summary, legend);
  const panel = el("aside.sidepanel.graph-panel#graph-panel", { "aria-label": "Details" });
  root.replaceChildren(el("h1", "Service graph"), toolbar, el("div.split.graph-layout", graphCard, panel));

  syncPickers();
  showHint();

  // ---- pickers and URL ----
  function syncPickers() {
    const w = WINDOWS.includes(state.duration) ? WINDOWS : [state.duration, ...WINDOWS];
    windowSelect.replaceChildren(...w.map((v) => el("option", { value: v, selected: v === state.duration }, `Last ${v}`)));
    if (![...typeSelect.options].some((o) => o.value === state.graphType)) typeSelect.append(el("option", { value: state.graphType }, state.graphType));
    typeSelect.value = state.graphType;
    refreshSelect.value = REFRESH.some(([v]) => v === state.refresh) ? state.refresh : "";
    fillNamespaces(null);
  }

  function fillNamespaces(names) {
    const known = names || [...nsSelect.options].map((o) => o.value).filter(Boolean);
    const wanted = state.namespaces ? [state.namespaces] : [];
    const all = [...new Set([...known, ...wanted])].sort();
    nsSelect.replaceChildren(el("option", { value: "" }, "All namespaces"),
      ...all.map((n) => el("option", { value: n }, n.includes(",") ? n.split(",").join(", ") : n)));
    nsSelect.value = state.namespaces;
  }

  function change(patch, { reload = true } = {}) {
    // node and edge ids depend on the graph type (an app node is not a workload node); other pickers keep them
    const clear = "graphType" in patch ? { node: "", edge: "" } : {};
    setState({ ...patch, ...clear }, { push: true });
    state = readState();
    if ("refresh" in patch) startRefresh();
    if (reload) { userMoved = false; load({}); }
  }

  function startRefresh() {
    stopRefresh();
    const secs = state.refresh ? parseDuration(state.refresh) : 0;
    stopRefresh = secs ? every(secs, () => load({ quiet: true })) : () => {};
  }

  // ---- loading ----
  async function load({ quiet = false } = {}) {
    const seq = ++loadSeq;
    const params = graphParams(state);
    if (!quiet || !svgEl) { loading(canvas, "Loading the service graph…"); noGraph(); }
    status.textContent = quiet ? "Refreshing…" : "";
    api("/api/graph/namespaces", { duration: state.duration }, { signal: ctl.signal })
      .then((doc) => { if (seq === loadSeq) fillNamespaces(doc.namespaces.map((n) => n.name)); })
      .catch(() => { /* the picker keeps what it had; the graph request reports the error */ });
    let text, doc;
    try {
      [text, doc] = await Promise.all([
        fetchText("/api/graph.svg", params, ctl.signal),
        api("/api/graph", params, { signal: ctl.signal }),
      ]);
    } catch (e) {
      if (e.name === "AbortError" || seq !== loadSeq) return;
      noGraph();
      status.textContent = "";
      showError(canvas, `Could not load the graph: ${e.message}`);
      summary.replaceChildren();
      if (state.node || state.edge) showHint();
      return;
    }
    if (seq !== loadSeq) return;
    const nodes = doc.elements.nodes.map((n) => n.data).filter((d) => d.nodeType !== "box");
    status.textContent = `Updated ${fmtTime(doc.timestamp * 1000).slice(11, 19)}`;
    if (!nodes.length) {
      noGraph();
      const where = state.namespaces ? ` in ${state.namespaces.split(",").join(", ")}` : "";
      emptyState(canvas, `No traffic${where} in the last ${windowText(doc.duration)}.`,
        `Send OTLP to :4318 or run \`meshscope serve --demo\`${where ? ", or pick All namespaces" : ""}; a longer window may find older traffic.`);
      summary.replaceChildren();
      if (state.node || state.edge) loadPanel({ quiet }); else showHint();
      return;
    }
    let fresh;
    try {
      fresh = importSvg(text);
    } catch (e) {
      showError(canvas, e.message);
      return;
    }
    mount(fresh);
    renderSummary(doc, nodes);
    if (state.node || state.edge) loadPanel({ quiet }); else showHint();
  }

  function renderSummary(doc, nodes) {
    const counts = {};
    for (const d of nodes) {
      const st = (d.healthData && d.healthData.status && d.healthData.status.status) || "NA";
      counts[st] = (counts[st] || 0) + 1;
    }
    put(summary,
      `${nodes.length} nodes · ${doc.elements.edges.length} edges · ${doc.graphType} graph of the last ${windowText(doc.duration)}`,
      counts.Failure ? el("span.badge.bad", `${counts.Failure} failing`) : null,
      counts.Degraded ? el("span.badge.warn", `${counts.Degraded} degraded`) : null);
    // the node list doubles as a keyboard- and touch-friendly way to select a node
    const labelled = nodes.map((d) => ({ id: d.id, label: (nodesById.get(d.id) || {}).label || d.workload || d.app || d.service || d.nodeType, ns: d.namespace }))
      .sort((a, b) => a.label.localeCompare(b.label));
    findSelect.replaceChildren(el("option", { value: "" }, "Select a node…"),
      ...labelled.map((n) => el("option", { value: n.id }, n.ns && n.ns !== "unknown" ? `${n.label} (${n.ns})` : n.label)));
    findSelect.value = state.node && nodesById.has(state.node) ? state.node : "";
  }

  // ---- the SVG ----
  function noGraph() {
    svgEl = null;
    zoomBar.hidden = true;
    canvas.style.height = "";
    findSelect.replaceChildren(el("option", { value: "" }, "—"));
    findSelect.disabled = true;
  }

  function mount(fresh) {
    const vb = fresh.viewBox && fresh.viewBox.baseVal;
    const nb = vb && vb.width ? { x: vb.x, y: vb.y, w: vb.width, h: vb.height } : { x: 0, y: 0, w: 600, h: 400 };
    const keep = userMoved && view && base;
    fresh.removeAttribute("width");
    fresh.removeAttribute("height");
    fresh.setAttribute("preserveAspectRatio", "xMidYMid meet");
    fresh.classList.add("graph-svg");
    fresh.setAttribute("role", "group");
    nodesById = new Map();
    for (const g of fresh.querySelectorAll("g.ms-node")) {
      const label = g.getAttribute("data-label") || "";
      nodesById.set(g.getAttribute("data-id"), { g, label });
      g.setAttribute("tabindex", "0");
      g.setAttribute("role", "button");
      g.setAttribute("aria-label", `${g.getAttribute("data-node-type") || "node"} ${label}, ${g.getAttribute("data-health") || "NA"}`);
    }
    for (const g of fresh.querySelectorAll("g.ms-edge")) {
      // a wide transparent twin of the line, so a 2px edge is easy to hover and click
      const line = g.querySelector("path.ms-edge-line");
      if (line) {
        const hit = line.cloneNode(false);
        hit.setAttribute("class", "ms-edge-hit");
        hit.removeAttribute("marker-end");
        hit.setAttribute("stroke", "transparent");
        hit.setAttribute("stroke-width", "14");
        g.insertBefore(hit, line);
      }
      g.setAttribute("tabindex", "0");
      g.setAttribute("role", "button");
      g.setAttribute("aria-label", `edge ${g.getAttribute("data-source-label")} to ${g.getAttribute("data-target-label")}, ${g.getAttribute("data-health") || "NA"}`);
    }
    svgEl = fresh;
    base = nb;
    zoomBar.hidden = false;
    findSelect.disabled = false;
    // a narrow screen gets a canvas as tall as the fitted graph needs, not an empty half-screen around it
    canvas.style.height = window.matchMedia("(max-width: 800px)").matches
      ? `${Math.round(Math.max(240, Math.min(canvas.clientWidth * (nb.h / nb.w) * 1.6 + 60, window.innerHeight * 0.55)))}px` : "";
    canvas.replaceChildren(svgEl);
    if (keep) applyView(); else fit();
    markSelection();
  }

  function fit() {
    if (!svgEl) return;
    const pad = 10;
    view = { x: base.x - pad, y: base.y - pad, w: base.w + 2 * pad, h: base.h + 2 * pad };
    userMoved = false;
    applyView();
  }

  function applyView() {
    if (svgEl && view) svgEl.setAttribute("viewBox", `${view.x} ${view.y} ${view.w} ${view.h}`);
  }

  function svgPoint(clientX, clientY) {
    const m = svgEl.getScreenCTM();
    if (!m) return { x: view.x + view.w / 2, y: view.y + view.h / 2 };
    const p = new DOMPoint(clientX, clientY).matrixTransform(m.inverse());
    return { x: p.x, y: p.y };
  }

  function zoomBy(factor, center) {
    if (!svgEl || !view) return;
    const fitW = base.w + 20;
    const w = Math.min(Math.max(view.w * factor, fitW * MIN_ZOOM), fitW * MAX_ZOOM);
    const f = w / view.w;
    const c = center || { x: view.x + view.w / 2, y: view.y + view.h / 2 };
    view = { x: c.x - (c.x - view.x) * f, y: c.y - (c.y - view.y) * f, w: view.w * f, h: view.h * f };
    userMoved = true;
    applyView();
  }

  function centerOn(id) {
    const n = nodesById.get(id);
    if (!n || !view) return;
    const b = n.g.getBBox();
    view = { ...view, x: b.x + b.width / 2 - view.w / 2, y: b.y + b.height / 2 - view.h / 2 };
    userMoved = true;
    applyView();
  }

  // pan by dragging; a click that did not move selects
  let drag = null, suppressClick = false;
  canvas.addEventListener("pointerdown", (ev) => {
    if (!svgEl || ev.button !== 0) return;
    const m = svgEl.getScreenCTM();
    drag = { x: ev.clientX, y: ev.clientY, view: { ...view }, scale: m ? m.a : 1, moving: false, id: ev.pointerId };
    suppressClick = false;
  });
  canvas.addEventListener("pointermove", (ev) => {
    if (!drag || ev.pointerId !== drag.id) return;
    const dx = ev.clientX - drag.x, dy = ev.clientY - drag.y;
    if (!drag.moving && Math.hypot(dx, dy) < DRAG_PX) return;
    if (!drag.moving) { drag.moving = true; canvas.setPointerCapture(ev.pointerId); canvas.classList.add("panning"); }
    view = { ...drag.view, x: drag.view.x - dx / drag.scale, y: drag.view.y - dy / drag.scale };
    userMoved = true;
    applyView();
  });
  const endDrag = (ev) => {
    if (!drag || ev.pointerId !== drag.id) return;
    if (drag.moving) { suppressClick = true; canvas.releasePointerCapture(ev.pointerId); }
    canvas.classList.remove("panning");
    drag = null;
  };
  canvas.addEventListener("pointerup", endDrag);
  canvas.addEventListener("pointercancel", endDrag);
  canvas.addEventListener("wheel", (ev) => {
    if (!svgEl) return;
    ev.preventDefault();
    zoomBy(Math.exp(Math.max(-1, Math.min(1, ev.deltaY * 0.0015))), svgPoint(ev.clientX, ev.clientY));
  }, { passive: false });
  canvas.addEventListener("click", (ev) => {
    if (suppressClick) { suppressClick = false; return; }
    if (!svgEl) return;
    const node = ev.target.closest && ev.target.closest("g.ms-node");
    const edge = !node && ev.target.closest && ev.target.closest("g.ms-edge");
    if (node) select("node", node.getAttribute("data-id"));
    else if (edge) select("edge", edge.getAttribute("data-id"));
    else if (ev.target.closest && ev.target.closest("svg")) select(null);
  });
  canvas.addEventListener("keydown", (ev) => {
    const g = ev.target.closest && ev.target.closest("g.ms-node, g.ms-edge");
    if (g && (ev.key === "Enter" || ev.key === " ")) {
      ev.preventDefault();
      select(g.classList.contains("ms-node") ? "node" : "edge", g.getAttribute("data-id"));
    } else if (ev.key === "+" || ev.key === "=") zoomBy(1 / 1.3);
    else if (ev.key === "-") zoomBy(1.3);
    else if (ev.key === "0") fit();
    else if (ev.key === "Escape") select(null);
  });
  // hover: the node (or edge) with its edges and neighbours stays bright, the rest fades
  canvas.addEventListener("pointerover", (ev) => {
    if (!svgEl || drag) return;
    const g = ev.target.closest && ev.target.closest("g.ms-node, g.ms-edge");
    highlight(g);
  });
  canvas.addEventListener("pointerleave", () => highlight(null));
  canvas.addEventListener("focusin", (ev) => highlight(ev.target.closest && ev.target.closest("g.ms-node, g.ms-edge")));

  function related(g) {
    const out = new Set([g]);
    const id = g.getAttribute("data-id");
    if (g.classList.contains("ms-node")) {
      for (const e of svgEl.querySelectorAll("g.ms-edge")) {
        const s = e.getAttribute("data-source"), t = e.getAttribute("data-target");
        if (s === id || t === id) {
          out.add(e);
          const other = nodesById.get(s === id ? t : s);
          if (other) out.add(other.g);
        }
      }
    } else {
      for (const end of [g.getAttribute("data-source"), g.getAttribute("data-target")]) {
        const n = nodesById.get(end);
        if (n) out.add(n.g);
      }
    }
    return out;
  }

  function highlight(g) {
    if (!svgEl) return;
    for (const x of svgEl.querySelectorAll(".graph-on")) x.classList.remove("graph-on");
    svgEl.classList.toggle("graph-hl", !!g);
    if (g) for (const x of related(g)) x.classList.add("graph-on");
  }

  function markSelection() {
    if (!svgEl) return;
    for (const x of svgEl.querySelectorAll(".graph-selected")) x.classList.remove("graph-selected");
    const id = state.node || state.edge;
    if (!id) return;
    const g = svgEl.querySelector(`g.${state.node ? "ms-node" : "ms-edge"}[data-id="${CSS.escape(id)}"]`);
    if (g) g.classList.add("graph-selected");
    if (state.node && findSelect.querySelector(`option[value="${CSS.escape(state.node)}"]`)) findSelect.value = state.node;
  }

  // ---- selection and the side panel ----
  function select(kind, id, { center = false } = {}) {
    const patch = { node: kind === "node" ? id : "", edge: kind === "edge" ? id : "" };
    if (patch.node === state.node && patch.edge === state.edge) return;
    setState(patch, { push: true });
    state = readState();
    if (kind !== "node") findSelect.value = "";
    markSelection();
    if (center && kind === "node") centerOn(id);
    if (kind) {
      loadPanel({});
      if (window.matchMedia("(max-width: 800px)").matches) panel.scrollIntoView({ block: "nearest", behavior: "smooth" });
    } else showHint();
  }

  function showHint() {
    panel.replaceChildren(
      el("h2", "Details"),
      el("p.muted", "Click a node or an edge (or pick one under Find) to see its request rate, errors, latency, health, top errors and links to its logs and traces."),
      el("p.muted.small", "Drag to pan, use the wheel or + / − to zoom, Fit to see everything. Esc closes the selection."),
      healthHelp(null));
  }

  function healthHelp(thresholds) {
    const rows = thresholds || [
      { code: "5XX", protocol: "http", degraded: 0, failure: 10 }, { code: "4XX", protocol: "http", degraded: 10, failure: 20 },
      { code: "^[1-9]$|^1[0-6]$", protocol: "grpc", degraded: 0, failure: 10 }, { code: "-", protocol: "http|grpc", degraded: 0, failure: 10 }];
    const name = (r) => r.code === "-" ? "no response" : r.protocol === "grpc" && r.code.startsWith("^") ? "gRPC errors" : `${r.protocol.toUpperCase()} ${r.code.toLowerCase()}`;
    return el("details.graph-thresholds",
      el("summary", "How health is judged"),
      el("p.small.muted", "Kiali's default tolerances, per share of requests:"),
      el("ul.small", rows.map((r) => el("li", `${name(r)}: degraded ${r.degraded ? `≥ ${r.degraded}%` : "> 0%"}, failure ≥ ${r.failure}%`))),
      el("p.small.muted", "A node takes the worst of its inbound and outbound traffic; NA means no requests in the window."));
  }

  async function loadPanel({ quiet = false } = {}) {
    const seq = ++panelSeq;
    const kind = state.node ? "node" : "edge";
    const id = state.node || state.edge;
    if (!quiet) loading(panel, "Loading details…");
    let doc;
    try {
      doc = await api(`/api/graph/${kind}`, { ...graphParams(state), [kind]: id }, { signal: ctl.signal });
    } catch (e) {
      if (e.name === "AbortError" || seq !== panelSeq) return;
      panel.replaceChildren(el("h2", "Details"), closeButton());
      showError(panel, e.message, { replace: false });
      return;
    }
    if (seq !== panelSeq) return;
    put(panel, kind === "node" ? nodePanel(doc) : edgePanel(doc));
  }

  function closeButton() {
    return el("button.graph-close", { type: "button", title: "Close (Esc)", "aria-label": "Close details", onclick: () => select(null) }, "×");
  }

  function stat(label, value, cls) {
    return el("div.graph-stat", el("div.stat-label", label), el(`div.graph-stat-value${cls ? "." + cls : ""}`, value));
  }

  function redBlock(title, r) {
    if (!r) return null;
    const hasReq = r.requestRate > 0;
    if (!hasReq && !r.tcpBytesRate) return null;
    return el("section.graph-red", el("h3", title),
      el("div.graph-stats",
        hasReq ? stat("Requests", rate(r.requestRate)) : null,
        hasReq ? stat("Errors", fmtPercent(r.errorRate), r.errorRate > 0 ? "err-text" : "") : null,
        hasReq ? stat("p50", fmtDurationMs(r.p50Ms)) : null,
        hasReq ? stat("p95", fmtDurationMs(r.p95Ms)) : null,
        hasReq ? stat("p99", fmtDurationMs(r.p99Ms)) : null,
        r.tcpBytesRate ? stat("TCP", bytesRate(r.tcpBytesRate)) : null));
  }

  function flagsText(flags) {
    const f = Object.entries(flags || {}).filter(([k]) => k !== "-");
    return f.length ? f.map(([k, v]) => `${k} ${fmtNumber(v)}/s`).join(", ") : "";
  }

  function codesTable(rows) {
    if (!rows || !rows.length) return null;
    return el("div.table-wrap", el("table.data.graph-codes",
      el("thead", el("tr", el("th", "Code"), el("th.num", "Rate"), el("th.num", "Share"), el("th", "Flags"))),
      el("tbody", rows.map((r) => el(`tr${r.error ? ".graph-err-row" : ""}`,
        el("td", `${r.protocol === "grpc" ? "gRPC " : ""}${r.code === "-" ? "no response" : r.code}`),
        el("td.num", rate(r.rate)), el("td.num", fmtPercent(r.share)), el("td", flagsText(r.flags)))))));
  }

  function traceLink(traceID) {
    return traceID ? el("a.graph-trace-link", { href: `/traces/${encodeURIComponent(traceID)}`, title: `Open trace ${traceID}` }, "trace") : null;
  }

  function topErrors(errors, duration) {
    const items = [];
    for (const c of errors.codes || []) {
      items.push(el("li",
        el("span.badge.bad", c.code === "-" ? "no response" : `${c.protocol === "grpc" ? "gRPC " : ""}${c.code}`), " ",
        `${rate(c.rate)} · ${fmtPercent(c.share)} of ${c.direction || ""} ${c.protocol}`.replace(/\s+/g, " "),
        flagsText(c.flags) ? el("span.muted", ` · flags ${flagsText(c.flags)}`) : null));
    }
    for (const s of errors.spans || []) {
      items.push(el("li",
        el("span.badge", `${s.count}×`), " ", el("code", s.operation), el("span.muted", ` (${s.spanKind}${s.code ? `, ${s.code}` : ""})`),
        s.message ? el("div.graph-err-msg", s.message) : null, " ", traceLink(s.traceID)));
    }
    for (const l of errors.logs || []) {
      items.push(el("li",
        el("span.badge", `${l.count}×`), " ", el("span.graph-err-msg.mono", l.line), " ", traceLink(l.traceID),
        l.lastNs && l.lastNs !== "0" ? el("span.muted.small", ` last ${fmtTime(nsToMs(l.lastNs)).slice(11, 19)}`) : null));
    }
    return el("section.graph-errors", el("h3", "Top errors"),
      items.length ? el("ul.graph-err-list", items) : el("p.muted", `No errors in the last ${windowText(duration)}.`),
      errors.error ? el("p.small.err-text", errors.error) : null);
  }

  function linkButtons(links, seconds, who) {
    if (!links) return [];
    const suffix = who ? ` of ${who}` : "";
    return [
      el("a.button.graph-logs-link", { href: logsHref(links.logs.query, seconds), title: links.logs.query }, `Logs${suffix}`),
      el("a.button.graph-traces-link", { href: tracesHref(links.traces, seconds), title: `service ${links.traces.service}` }, `Traces${suffix}`),
      el("a.button.graph-error-traces-link", { href: tracesHref(links.traces, seconds, { error: "true" }) }, `Error traces${suffix}`),
    ];
  }

  function neighbourList(title, rows) {
    if (!rows || !rows.length) return null;
    return el("section", el("h3", title), el("ul.graph-neighbours", rows.map((r) => el("li",
      el("a", { href: `/graph?${new URLSearchParams({ ...graphParams(state), node: r.id })}`, onclick: (ev) => { ev.preventDefault(); select("node", r.id, { center: true }); } }, r.label),
      r.nodeType === "service" ? el("span.muted", " (service)") : null,
      " ", el("span.muted", r.protocol === "tcp" ? `tcp ${bytesRate(r.rate)}` : `${r.protocol} ${rate(r.rate)}`), " ",
      el("a.small", { href: `/graph?${new URLSearchParams({ ...graphParams(state), edge: r.edge })}`, onclick: (ev) => { ev.preventDefault(); select("edge", r.edge); } }, "edge"),
      " ", healthBadge(r.health)))));
  }

  function nodePanel(d) {
    const n = d.node || {};
    const facts = [n.nodeType, n.namespace && n.namespace !== "unknown" ? `namespace ${n.namespace}` : null,
      n.workload && n.workload !== d.label ? `workload ${n.workload}` : null, n.cluster && n.cluster !== "unknown" ? `cluster ${n.cluster}` : null]
      .filter(Boolean).join(" · ");
    const h = d.health || {};
    const links = linkButtons(d.links, d.duration);
    return [
      el("div.graph-panel-head", el("h2.graph-panel-title", d.label), closeButton()),
      el("p.muted.small", facts),
      el("p.graph-health-line", healthBadge(h.status), " ",
        h.status && h.status !== "NA" ? `${fmtNumber(h.errorRatio)}% errors · ${rate(h.totalRequestRate)} requests` : "no requests in this window"),
      redBlock("Inbound", d.red.inbound),
      redBlock("Outbound", d.red.outbound),
      topErrors(d.errors, d.duration),
      links.length ? el("section", el("h3", "Explore"), el("div.graph-links", links)) : el("p.small.muted", "No logs or traces of its own: this node is seen only by its callers (a database, an external host or the unknown source)."),
      d.responses.inbound.length ? el("section", el("h3", "Inbound responses"), codesTable(d.responses.inbound)) : null,
      d.responses.outbound.length ? el("section", el("h3", "Outbound responses"), codesTable(d.responses.outbound)) : null,
      neighbourList("Called by", d.neighbours.inbound),
      neighbourList("Calls", d.neighbours.outbound),
      healthHelp(h.thresholds),
    ];
  }

  function edgePanel(d) {
    const e = d.edge || {};
    const facts = [d.protocol, d.mtlsPercent !== null && d.mtlsPercent !== undefined ? `mTLS ${d.mtlsPercent}%` : null,
      d.throughput ? `throughput ${bytesRate(d.throughput)}` : null, e.destPrincipal ? `to ${e.destPrincipal}` : null].filter(Boolean).join(" · ");
    const ends = d.links || {};
    return [
      el("div.graph-panel-head", el("h2.graph-panel-title", d.label), closeButton()),
      el("p.muted.small", facts),
      el("p.graph-health-line", healthBadge(d.health.status)),
      redBlock("Requests", d.red),
      topErrors(d.errors, d.duration),
      el("section", el("h3", "Explore"), el("div.graph-links",
        el("a.button", { href: `/graph?${new URLSearchParams({ ...graphParams(state), node: d.source.id })}`, onclick: (ev) => { ev.preventDefault(); select("node", d.source.id, { center: true }); } }, `Source: ${d.source.label}`),
        el("a.button", { href: `/graph?${new URLSearchParams({ ...graphParams(state), node: d.target.id })}`, onclick: (ev) => { ev.preventDefault(); select("node", d.target.id, { center: true }); } }, `Target: ${d.target.label}`),
        ...linkButtons(ends.source, d.duration, d.source.label).slice(0, 2),
        ...linkButtons(ends.target, d.duration, d.target.label).slice(0, 2))),
      d.responses.length ? el("section", el("h3", "Responses"), codesTable(d.responses)) : null,
      healthHelp(d.health.thresholds),
    ];
  }

  document.addEventListener("keydown", onKey);
  function onKey(ev) {
    if (ev.key === "Escape" && (state.node || state.edge) && !ev.target.closest("input, textarea, select")) select(null);
  }

  startRefresh();
  load({}).catch((e) => showError(canvas, `The graph failed: ${e.message}`));
  return () => {
    ctl.abort();
    stopRefresh();
    document.removeEventListener("keydown", onKey);
  };
}
