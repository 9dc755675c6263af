"""A server-rendered SVG of a Kiali graph document (``model.Graph.to_kiali_json()``), without dependencies.

Why render on the server: the CLI and a plain ``<img>`` get a readable picture, and the UI gets the same picture
with ``data-*`` attributes on every node and edge group to make it interactive, without a layout library.

Layout is a small Sugiyama: cycles broken by a deterministic DFS, longest-path layering from the roots (left to
right), dummy nodes on long edges, crossing reduction by barycenter sweeps (keeping the best order seen), then
columns and rows. Shapes and colours follow Kiali: app rect, workload ellipse, service rhombus, service entry
trapezoid, unknown a grey rhombus; edges green/orange/red by health, blue for TCP, grey without traffic; a lock for
mTLS. Every user-supplied string passes through ``_esc``; the output is a pure function of the document.
"""
from __future__ import annotations

import re

# Kiali / PatternFly colours
COLORS = {
    "Healthy": "#3e8635",
    "Degraded": "#f0ab00",
    "Failure": "#c9190b",
    "tcp": "#0066cc",
    "idle": "#8a8d90",
    "NA": "#8a8d90",
}
SHAPES = {"app": "rect", "workload": "ellipse", "service": "rhombus", "unknown": "rhombus", "aggregate": "hexagon"}
ROW_H = 96
DUMMY_GAP = 30         # vertical room of a long edge passing through a column
EDGE_GAP = 210          # room between columns for edge labels
MARGIN = 40
SHAPE_W, SHAPE_H = 46, 34
CHAR_W = 6.6            # node label width estimate at 11px sans-serif
LABEL_CHAR_W = 5.5      # edge label width estimate at 10px
PARALLEL_GAP = 17       # vertical distance between edges of one node pair (labels must not overlap)
MAX_LABEL = 34
SWEEPS = 12

_INVALID_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _esc(value) -> str:
    """Text or attribute value → XML: entities for & < > " ', and characters XML 1.0 forbids replaced."""
    text = _INVALID_XML.sub("\ufffd", str(value))
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;").replace("'", "&#39;"))


def _kebab(name: str) -> str:
    """``httpIn5xx`` → ``http-in5xx`` so that ``element.dataset.httpIn5xx`` reads it back."""
    return re.sub(r"([A-Z])", lambda m: "-" + m.group(1).lower(), name)


def _f(x: float) -> str:
    s = f"{x:.1f}"
    return s[:-2] if s.endswith(".0") else s


def _trunc(text: str, n: int = MAX_LABEL) -> str:
    return text if len(text) <= n else text[: n - 1] + "\u2026"


# ------------------------------------------------------------------------------------------- labels
def node_label(d: dict, graph_type: str = "") -> str:
    """The name Kiali prints under a node."""
    t = d.get("nodeType")
    if t == "unknown":
        return "unknown"
    if t == "service":
        se = d.get("isServiceEntry")
        if se and se.get("hosts") and d.get("service") in (None, "", "unknown"):
            return se["hosts"][0]
        return d.get("service") or "unknown"
    if t == "app":
        app = d.get("app") or ""
        if graph_type == "versionedApp" and d.get("version") not in (None, "", "unknown", "latest"):
            return f"{app} {d['version']}"
        return app
    if t == "aggregate":
        return d.get("aggregate", "")
    return d.get("workload") or d.get("app") or d.get("service") or d.get("id", "")[:12]


def node_health(d: dict) -> str:
    hd = d.get("healthData") or {}
    st = hd.get("status") if isinstance(hd, dict) else None
    return (st or {}).get("status", "NA") if isinstance(st, dict) else "NA"


def _ms(rt: str | None) -> str:
    if not rt:
        return "-"
    v = float(rt)
    return f"{v:.0f}ms" if v < 1000 else f"{v / 1000:.2f}s"


def edge_rate_text(traffic: dict) -> str:
    """Kiali's trafficRate label unit: rps for requests, bps/kps for TCP bytes."""
    proto = traffic.get("protocol", "")
    rates = traffic.get("rates") or {}
    if proto == "tcp":
        v = float(rates.get("tcp", 0) or 0)
        return f"{v / 1024:.2f}kps" if v >= 1024 else f"{v:.2f}bps"
    return f"{float(rates.get(proto, 0) or 0):.2f}rps"


def edge_label(d: dict) -> str:
    """``rate / err% / response time`` (TCP: the byte rate only)."""
    traffic = d.get("traffic") or {}
    proto = traffic.get("protocol", "")
    rate = edge_rate_text(traffic)
    if proto == "tcp":
        return rate
    err = (traffic.get("rates") or {}).get(f"{proto}PercentErr") or "0"
    return f"{rate} / {err}% / {_ms(d.get('responseTime'))}"


def edge_color(d: dict) -> str:
    traffic = d.get("traffic") or {}
    proto = traffic.get("protocol", "")
    total = float((traffic.get("rates") or {}).get(proto, 0) or 0)
    if total <= 0:
        return COLORS["idle"]
    if proto == "tcp":
        return COLORS["tcp"]
    status = d.get("healthStatus")
    return COLORS[status] if status in ("Failure", "Degraded") else COLORS["Healthy"]


MARKERS = {"healthy": COLORS["Healthy"], "degraded": COLORS["Degraded"], "failure": COLORS["Failure"],
           "tcp": COLORS["tcp"], "idle": COLORS["idle"]}


def _color_key(color: str) -> str:
    return next((k for k, v in MARKERS.items() if v == color), "idle")


# ------------------------------------------------------------------------------------------- layout
class Layout:
    """Positions of real nodes (id → (x, y, layer)) and edge routes (edge index → points)."""

    def __init__(self, node_ids: list[str], edges: list[tuple[str, str]]):
        self.ids = list(node_ids)
        self.index = {n: i for i, n in enumerate(self.ids)}
        self.edges = edges
        self.layer: dict[str, int] = {}
        self.order: list[list[str]] = []
        self.reversed: set[int] = set()
        self.chains: dict[int, list[str]] = {}   # edge index → node ids from layer-lower end to layer-higher end
        self._run()

    def _run(self) -> None:
        succ: dict[str, list[tuple[str, int]]] = {n: [] for n in self.ids}
        indeg = {n: 0 for n in self.ids}
        for i, (s, t) in enumerate(self.edges):
            if s == t:
                continue
            succ[s].append((t, i))
            indeg[t] += 1
        for n in succ:
            succ[n].sort(key=lambda x: (self.index[x[0]], x[1]))
        # 1. break cycles: DFS from sources first, back edges get reversed
        state: dict[str, int] = {}
        dfs_order: list[str] = []
        starts = [n for n in self.ids if indeg[n] == 0] + [n for n in self.ids if indeg[n] > 0]
        for root in starts:
            if root in state:
                continue
            stack = [(root, iter(succ[root]))]
            state[root] = 1
            dfs_order.append(root)
            while stack:
                node, it = stack[-1]
                nxt = next(it, None)
                if nxt is None:
                    state[node] = 2
                    stack.pop()
                    continue
                t, ei = nxt
                if state.get(t) == 1:
                    self.reversed.add(ei)
                elif t not in state:
                    state[t] = 1
                    dfs_order.append(t)
                    stack.append((t, iter(succ[t])))
        dag: dict[str, list[str]] = {n: [] for n in self.ids}
        dag_edges: list[tuple[str, str, int]] = []
        for i, (s, t) in enumerate(self.edges):
            if s == t:
                continue
            a, b = (t, s) if i in self.reversed else (s, t)
            dag[a].append(b)
            dag_edges.append((a, b, i))
        # 2. longest-path layering from the roots (Kahn order)
        indeg2 = {n: 0 for n in self.ids}
        for a, b, _ in dag_edges:
            indeg2[b] += 1
        ready = [n for n in self.ids if indeg2[n] == 0]
        layer = {n: 0 for n in self.ids}
        while ready:
            ready.sort(key=lambda n: self.index[n])
            n = ready.pop(0)
            for b in dag[n]:
                layer[b] = max(layer[b], layer[n] + 1)
                indeg2[b] -= 1
                if indeg2[b] == 0:
                    ready.append(b)
        self.layer = dict(layer)
        # 3. dummy nodes so every DAG edge spans one layer
        n_layers = max(layer.values(), default=0) + 1
        layers: list[list[str]] = [[] for _ in range(n_layers)]
        pos_hint = {n: i for i, n in enumerate(dfs_order)}
        for n in sorted(self.ids, key=lambda n: pos_hint[n]):
            layers[layer[n]].append(n)
        self.adj_up: dict[str, list[str]] = {n: [] for n in self.ids}    # predecessors (layer - 1)
        self.adj_down: dict[str, list[str]] = {n: [] for n in self.ids}  # successors (layer + 1)
        for a, b, i in sorted(dag_edges, key=lambda x: x[2]):
            chain = [a]
            for k in range(layer[a] + 1, layer[b]):
                dummy = f"\x00d{i}_{k}"
                self.layer[dummy] = k
                self.adj_up[dummy], self.adj_down[dummy] = [], []
                layers[k].append(dummy)
                chain.append(dummy)
            chain.append(b)
            for u, v in zip(chain, chain[1:]):
                self.adj_down[u].append(v)
                self.adj_up[v].append(u)
            self.chains[i] = chain
        # 4. crossing reduction: barycenter sweeps, keep the best
        best = [list(l) for l in layers]
        best_cross = self._crossings(best)
        cur = [list(l) for l in layers]
        for sweep in range(SWEEPS):
            if best_cross == 0:
                break
            if sweep % 2 == 0:
                for k in range(1, n_layers):
                    cur[k] = self._barycenter(cur[k], cur[k - 1], self.adj_up)
            else:
                for k in range(n_layers - 2, -1, -1):
                    cur[k] = self._barycenter(cur[k], cur[k + 1], self.adj_down)
            c = self._crossings(cur)
            if c < best_cross:
                best, best_cross = [list(l) for l in cur], c
        self.order = best
        self.crossings = best_cross

    def rows(self, real_gap: float = ROW_H, dummy_gap: float = DUMMY_GAP, iterations: int = 12) -> dict[str, float]:
        """Vertical positions: each node pulled toward the mean of its neighbours, keeping the layer's order and
        minimum gaps (a least-squares fit per layer, solved exactly by pool-adjacent-violators); long edges'
        dummies take little room, so chains straighten."""
        def gap(a: str, b: str) -> float:
            return ((dummy_gap if a.startswith("\x00") else real_gap) + (dummy_gap if b.startswith("\x00")
                                                                          else real_gap)) / 2
        y: dict[str, float] = {}
        for col in self.order:
            acc = 0.0
            for i, n in enumerate(col):
                if i:
                    acc += gap(col[i - 1], n)
                y[n] = acc
        n_layers = len(self.order)
        for it in range(iterations):
            ks = range(n_layers) if it % 2 == 0 else range(n_layers - 1, -1, -1)
            for k in ks:
                col = self.order[k]
                if not col:
                    continue
                desired = []
                for n in col:
                    nb = self.adj_up[n] + self.adj_down[n]
                    desired.append(sum(y[m] for m in nb) / len(nb) if nb else y[n])
                offsets = [0.0]
                for a, b in zip(col, col[1:]):
                    offsets.append(offsets[-1] + gap(a, b))
                fit = _isotonic([d - o for d, o in zip(desired, offsets)])
                for n, f, o in zip(col, fit, offsets):
                    y[n] = f + o
        low = min(y.values(), default=0.0)
        return {n: v - low for n, v in y.items()}

    @staticmethod
    def _barycenter(layer: list[str], fixed: list[str], adj: dict[str, list[str]]) -> list[str]:
        pos = {n: i for i, n in enumerate(fixed)}
        keyed = []
        for i, n in enumerate(layer):
            ns = [pos[m] for m in adj[n] if m in pos]
            bc = sum(ns) / len(ns) if ns else float(i)
            keyed.append((bc, i, n))
        keyed.sort()
        return [n for _, _, n in keyed]

    def _crossings(self, layers: list[list[str]]) -> int:
        """Sum over adjacent layers of edge crossings (inversions of target positions, counted with a BIT)."""
        total = 0
        for k in range(len(layers) - 1):
            upper = {n: i for i, n in enumerate(layers[k])}
            lower = {n: i for i, n in enumerate(layers[k + 1])}
            pairs = sorted((upper[u], lower[v]) for u in layers[k] for v in self.adj_down.get(u, ()) if v in lower)
            size = len(layers[k + 1]) + 1
            tree = [0] * (size + 1)
            seen = 0
            for _, lv in pairs:
                # count earlier edges whose lower end is strictly right of lv
                i, le = lv + 1, 0
                while i > 0:
                    le += tree[i]
                    i -= i & -i
                total += seen - le
                i = lv + 1
                while i <= size:
                    tree[i] += 1
                    i += i & -i
                seen += 1
        return total


def _isotonic(values: list[float]) -> list[float]:
    """The non-decreasing sequence closest (least squares) to ``values``: pool adjacent violators."""
    blocks: list[list[float]] = []  # [sum, count]
    for v in values:
        blocks.append([v, 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            s2, c2 = blocks.pop()
            blocks[-1][0] += s2
            blocks[-1][1] += c2
    out: list[float] = []
    for total, count in blocks:
        out.extend([total / count] * int(count))
    return out


# ------------------------------------------------------------------------------------------- rendering
def _shape(kind: str, cx: float, cy: float, stroke: str, fill: str, dashed: bool) -> str:
    dash = ' stroke-dasharray="4 3"' if dashed else ""
    common = f'fill="{fill}" stroke="{stroke}" stroke-width="2.5"{dash}'
    w, h = SHAPE_W, SHAPE_H
    if kind == "rect":
        return (f'<rect class="ms-shape" x="{_f(cx - w / 2)}" y="{_f(cy - h / 2)}" width="{w}" height="{h}" '
                f'rx="5" {common}/>')
    if kind == "ellipse":
        return f'<ellipse class="ms-shape" cx="{_f(cx)}" cy="{_f(cy)}" rx="{_f(w / 2)}" ry="{_f(h / 2)}" {common}/>'
    if kind == "rhombus":
        hh = h / 2 + 5
        pts = [(cx, cy - hh), (cx + w / 2, cy), (cx, cy + hh), (cx - w / 2, cy)]
    elif kind == "trapezoid":
        d = 9
        pts = [(cx - w / 2 + d, cy - h / 2), (cx + w / 2 - d, cy - h / 2), (cx + w / 2, cy + h / 2),
               (cx - w / 2, cy + h / 2)]
    else:  # hexagon
        d = 10
        pts = [(cx - w / 2 + d, cy - h / 2), (cx + w / 2 - d, cy - h / 2), (cx + w / 2, cy),
               (cx + w / 2 - d, cy + h / 2), (cx - w / 2 + d, cy + h / 2), (cx - w / 2, cy)]
    return f'<polygon class="ms-shape" points="{" ".join(f"{_f(x)},{_f(y)}" for x, y in pts)}" {common}/>'


def _lock(x: float, y: float, color: str) -> str:
    """A 9×11 padlock whose body's top-left corner is at (x, y)."""
    return (f'<g class="ms-lock" aria-label="mTLS"><path d="M{_f(x + 2)} {_f(y)} v-2.5 a2.5 2.5 0 0 1 5 0 v2.5" '
            f'fill="none" stroke="{color}" stroke-width="1.4"/>'
            f'<rect x="{_f(x)}" y="{_f(y)}" width="9" height="7" rx="1" fill="{color}"/></g>')


def _bezier_point(p: tuple[float, float], q: tuple[float, float], t: float) -> tuple[float, float]:
    """Point at ``t`` on the segment ``_path`` draws from p to q (horizontal tangents at both ends)."""
    dx = (q[0] - p[0]) / 2
    c1, c2 = (p[0] + dx, p[1]), (q[0] - dx, q[1])
    u = 1 - t
    x = u ** 3 * p[0] + 3 * u * u * t * c1[0] + 3 * u * t * t * c2[0] + t ** 3 * q[0]
    y = u ** 3 * p[1] + 3 * u * u * t * c1[1] + 3 * u * t * t * c2[1] + t ** 3 * q[1]
    return x, y


def _place_label(pts: list[tuple[float, float]], box_w: float,
                 placed: list[tuple[float, float, float, float]]) -> tuple[float, float]:
    """Where an edge's label goes: the first spot along the path, middle segments first, whose box overlaps no
    node and no label placed before; the path's middle when every spot is taken."""
    segs = list(range(len(pts) - 1))
    middle = (len(pts) - 2) / 2
    segs.sort(key=lambda j: (abs(j - middle), j))
    first = None
    for j in segs:
        for t in (0.5, 0.35, 0.65, 0.2, 0.8):
            x, y = _bezier_point(pts[j], pts[j + 1], t)
            y -= 6
            if first is None:
                first = (x, y)
            box = (x - box_w / 2, y - 10, x + box_w / 2, y + 4)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
                return x, y
    return first  # type: ignore[return-value]


def _path(points: list[tuple[float, float]]) -> str:
    (x0, y0) = points[0]
    out = [f"M{_f(x0)} {_f(y0)}"]
    for (px, py), (qx, qy) in zip(points, points[1:]):
        dx = (qx - px) / 2
        out.append(f"C{_f(px + dx)} {_f(py)} {_f(qx - dx)} {_f(qy)} {_f(qx)} {_f(qy)}")
    return " ".join(out)


def _node_title(d: dict, label: str) -> str:
    lines = [f"{d.get('nodeType', '')} {label}"]
    ns = d.get("namespace")
    if ns:
        lines[0] += f" ({ns})"
    for k in ("workload", "app", "version", "service"):
        if d.get(k):
            lines.append(f"{k}: {d[k]}")
    for t in d.get("traffic") or []:
        rates = ", ".join(f"{k} {v}" for k, v in sorted((t.get("rates") or {}).items()))
        lines.append(f"{t.get('protocol')}: {rates}")
    lines.append(f"health: {node_health(d)}")
    for flag in ("isRoot", "isOutside", "isInaccessible"):
        if d.get(flag):
            lines.append(flag)
    return "\n".join(lines)


def _edge_title(d: dict, src_label: str, dst_label: str) -> str:
    traffic = d.get("traffic") or {}
    lines = [f"{src_label} \u2192 {dst_label} ({traffic.get('protocol', '')})"]
    rates = traffic.get("rates") or {}
    if rates:
        lines.append(", ".join(f"{k} {v}" for k, v in sorted(rates.items())))
    if d.get("responseTime"):
        lines.append(f"response time: {d['responseTime']} ms")
    if d.get("throughput"):
        lines.append(f"throughput: {d['throughput']} B/s")
    if d.get("isMTLS"):
        lines.append(f"mTLS: {d['isMTLS']}%")
    for code, detail in sorted((traffic.get("responses") or {}).items()):
        flags = ", ".join(f"{f} {p}%" for f, p in sorted((detail.get("flags") or {}).items()))
        lines.append(f"{code}: {flags}")
    lines.append(f"health: {d.get('healthStatus', 'NA')}")
    return "\n".join(lines)


def _data_attrs(pairs: list[tuple[str, object]]) -> str:
    return "".join(f' data-{name}="{_esc(v)}"' for name, v in pairs if not (v is None or v == "" or v is False))


def render_svg(doc: dict) -> str:
    """The SVG text of a Kiali graph document."""
    graph_type = doc.get("graphType", "")
    elements = doc.get("elements") or {}
    nodes = [w["data"] for w in elements.get("nodes") or [] if w.get("data", {}).get("nodeType") != "box"]
    by_id = {d["id"]: d for d in nodes}
    labels = {d["id"]: node_label(d, graph_type) for d in nodes}
    namespaces = {d.get("namespace") for d in nodes if d.get("namespace") not in (None, "", "unknown")}
    show_ns = len(namespaces) > 1
    nodes.sort(key=lambda d: (not d.get("isRoot", False), d.get("namespace", ""), labels[d["id"]], d["id"]))
    edges = [w["data"] for w in elements.get("edges") or []
             if w.get("data", {}).get("source") in by_id and w["data"].get("target") in by_id]
    edges.sort(key=lambda d: (d["source"], d["target"], (d.get("traffic") or {}).get("protocol", ""), d["id"]))

    root_attrs = _data_attrs([("graph-type", graph_type), ("duration", doc.get("duration")),
                              ("timestamp", doc.get("timestamp"))])
    if not nodes:
        w, h = 360, 120
        return (f'<svg xmlns="http://www.w3.org/2000/svg" class="meshscope-graph" width="{w}" height="{h}" '
                f'viewBox="0 0 {w} {h}"{root_attrs}><title>service graph</title>'
                f'<text x="{w // 2}" y="{h // 2}" text-anchor="middle" font-family="sans-serif" font-size="13" '
                f'fill="#6a6e73">no traffic in this window</text></svg>\n')

    layout = Layout([d["id"] for d in nodes], [(e["source"], e["target"]) for e in edges])
    # columns: width from the widest label in the layer
    half = []
    for col in layout.order:
        widths = [min(len(labels[n]), MAX_LABEL) * CHAR_W for n in col if n in by_id]
        half.append(max([SHAPE_W] + widths) / 2)
    xs, x = [], MARGIN
    for k, hw in enumerate(half):
        x += hw if k == 0 else half[k - 1] + EDGE_GAP + hw
        xs.append(x)
    ys = layout.rows()
    pos: dict[str, tuple[float, float]] = {}
    for k, col in enumerate(layout.order):
        for n in col:
            pos[n] = (xs[k], round(MARGIN + 10 + SHAPE_H / 2 + ys[n], 1))
    width = int(xs[-1] + half[-1] + MARGIN)
    height = int(MARGIN * 2 + max(ys.values(), default=0.0) + ROW_H)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="meshscope-graph" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif"{root_attrs}>',
           "<title>service graph</title>", "<defs>"]
    for key, color in MARKERS.items():
        out.append(f'<marker id="ms-arrow-{key}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
                   f'markerHeight="7" orient="auto-start-reverse"><path d="M0 0 L10 5 L0 10 z" fill="{color}"/>'
                   f"</marker>")
    out.append("</defs>")

    # edges first, so nodes paint over their ends
    out.append('<g class="ms-edges">')
    pair_count: dict[tuple[str, str], int] = {}
    for e in edges:
        key = tuple(sorted((e["source"], e["target"])))
        pair_count[key] = pair_count.get(key, 0) + 1
    pair_seen: dict[tuple[str, str], int] = {}
    # label boxes placed so far, starting with the nodes' shapes and names, so labels avoid both
    placed: list[tuple[float, float, float, float]] = []
    for n, (cx, cy) in pos.items():
        if n in by_id:
            hw = max(SHAPE_W, min(len(labels[n]), MAX_LABEL) * CHAR_W) / 2
            placed.append((cx - hw, cy - SHAPE_H / 2 - 5, cx + hw, cy + SHAPE_H / 2 + 22))
    for i, e in enumerate(edges):
        s, t = e["source"], e["target"]
        key = tuple(sorted((s, t)))
        nth = pair_seen.get(key, 0)
        pair_seen[key] = nth + 1
        shift = (nth - (pair_count[key] - 1) / 2) * PARALLEL_GAP
        color = edge_color(e)
        traffic = e.get("traffic") or {}
        rates = traffic.get("rates") or {}
        proto = traffic.get("protocol", "")
        sx, sy = pos[s]
        tx, ty = pos[t]
        if s == t:
            pts = None
            d_attr = (f"M{_f(sx + 10)} {_f(sy - SHAPE_H / 2)} C{_f(sx + 40)} {_f(sy - SHAPE_H - 30)} "
                      f"{_f(sx - 40)} {_f(sy - SHAPE_H - 30)} {_f(sx - 10)} {_f(sy - SHAPE_H / 2 - 2)}")
            lx, ly = sx, sy - SHAPE_H - 24
        else:
            chain = layout.chains[i]
            if i in layout.reversed:
                chain = list(reversed(chain))
            forward = layout.layer[t] > layout.layer[s]
            sign = 1 if forward else -1
            pts = [(sx + sign * SHAPE_W / 2, sy + shift)]
            pts += [(pos_d[0], pos_d[1] + shift) for pos_d in (pos[c] for c in chain[1:-1])]
            pts.append((tx - sign * (SHAPE_W / 2 + 2), ty + shift))
            if not forward and len(pts) == 2 and layout.layer[t] == layout.layer[s]:
                # same column (cannot happen after layering, kept for safety): bow out to the right
                pts.insert(1, ((sx + tx) / 2 + 60, (sy + ty) / 2))
            d_attr = _path(pts)
        label = edge_label(e)
        mtls = float(e.get("isMTLS") or 0) > 0
        text_w = len(label) * LABEL_CHAR_W
        lock_w = 13 if mtls else 0
        box_w = text_w + lock_w + 6
        if pts is not None:
            lx, ly = _place_label(pts, box_w, placed)
        placed.append((lx - box_w / 2, ly - 10, lx + box_w / 2, ly + 4))
        attrs = _data_attrs([
            ("id", e["id"]), ("source", s), ("target", t), ("protocol", proto),
            ("health", e.get("healthStatus", "NA")), ("rate", rates.get(proto, "0")),
            ("percent-err", rates.get(f"{proto}PercentErr", "0") if proto != "tcp" else None),
            ("percent-req", rates.get(f"{proto}PercentReq")), ("response-time", e.get("responseTime")),
            ("throughput", e.get("throughput")), ("is-mtls", e.get("isMTLS")),
            ("source-label", labels[s]), ("target-label", labels[t]),
        ] + [(f"rate-{_kebab(k)}", v) for k, v in sorted(rates.items())])
        out.append(f'<g class="ms-edge ms-edge-{_color_key(color)}" id="edge-{_esc(e["id"][:16])}"{attrs}>')
        out.append(f"<title>{_esc(_edge_title(e, labels[s], labels[t]))}</title>")
        out.append(f'<path class="ms-edge-line" d="{d_attr}" fill="none" stroke="{color}" stroke-width="2" '
                   f'marker-end="url(#ms-arrow-{_color_key(color)})"/>')
        bx0 = lx - box_w / 2
        out.append(f'<rect class="ms-edge-label-bg" x="{_f(bx0)}" y="{_f(ly - 10)}" width="{_f(box_w)}" '
                   f'height="14" rx="3" fill="#ffffff" fill-opacity="0.85"/>')
        if mtls:
            out.append(_lock(bx0 + 3, ly - 7, "#4f5255"))
        out.append(f'<text class="ms-edge-label" x="{_f(bx0 + 3 + lock_w)}" y="{_f(ly + 1)}" font-size="10" '
                   f'fill="#151515">{_esc(label)}</text>')
        out.append("</g>")
    out.append("</g>")

    # nodes
    out.append('<g class="ms-nodes">')
    for d in nodes:
        nid = d["id"]
        cx, cy = pos[nid]
        health = node_health(d)
        ntype = d.get("nodeType", "")
        kind = "trapezoid" if ntype == "service" and d.get("isServiceEntry") else SHAPES.get(ntype, "ellipse")
        stroke = COLORS.get(health, COLORS["NA"]) if ntype != "unknown" else COLORS["NA"]
        fill = "#f0f0f0" if ntype == "unknown" or d.get("isInaccessible") else "#ffffff"
        traffic_attrs = []
        for t in d.get("traffic") or []:
            for k, v in sorted((t.get("rates") or {}).items()):
                traffic_attrs.append((f"rate-{_kebab(k)}", v))
        attrs = _data_attrs([
            ("id", nid), ("node-type", ntype), ("cluster", d.get("cluster")), ("namespace", d.get("namespace")),
            ("workload", d.get("workload")), ("app", d.get("app")), ("version", d.get("version")),
            ("service", d.get("service")), ("label", labels[nid]), ("health", health),
            ("is-root", "true" if d.get("isRoot") else None),
            ("is-outside", "true" if d.get("isOutside") else None),
            ("is-inaccessible", "true" if d.get("isInaccessible") else None),
            ("is-service-entry", "true" if d.get("isServiceEntry") else None),
            ("is-gateway", "true" if d.get("isGateway") else None),
            ("layer", layout.layer[nid]),
        ] + traffic_attrs)
        out.append(f'<g class="ms-node ms-node-{_esc(ntype)} ms-health-{_esc(health.lower().replace(" ", "-"))}" '
                   f'id="node-{_esc(nid[:16])}"{attrs}>')
        out.append(f"<title>{_esc(_node_title(d, labels[nid]))}</title>")
        out.append(_shape(kind, cx, cy, stroke, fill, bool(d.get("isInaccessible") or d.get("isOutside"))))
        if d.get("isRoot"):
            out.append(f'<path class="ms-root" d="M{_f(cx - 5)} {_f(cy - 5)} L{_f(cx + 5)} {_f(cy)} '
                       f'L{_f(cx - 5)} {_f(cy + 5)} z" fill="#4f5255"/>')
        ty = cy + SHAPE_H / 2 + 17
        out.append(f'<text class="ms-node-label" x="{_f(cx)}" y="{_f(ty)}" text-anchor="middle" font-size="11" '
                   f'fill="#151515">{_esc(_trunc(labels[nid]))}</text>')
        if (show_ns or d.get("isOutside")) and d.get("namespace") not in (None, "", "unknown"):
            out.append(f'<text class="ms-node-ns" x="{_f(cx)}" y="{_f(ty + 13)}" text-anchor="middle" '
                       f'font-size="10" fill="#6a6e73">{_esc(_trunc(d["namespace"]))}</text>')
        out.append("</g>")
    out.append("</g>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


def layout_columns(doc: dict) -> dict[str, int]:
    """Node id → column (layer) of the layout ``render_svg`` uses; for tests and clients that lay out alike."""
    nodes = [w["data"] for w in (doc.get("elements") or {}).get("nodes") or []
             if w.get("data", {}).get("nodeType") != "box"]
    ids = {d["id"] for d in nodes}
    graph_type = doc.get("graphType", "")
    labels = {d["id"]: node_label(d, graph_type) for d in nodes}
    nodes.sort(key=lambda d: (not d.get("isRoot", False), d.get("namespace", ""), labels[d["id"]], d["id"]))
    edges = [w["data"] for w in (doc.get("elements") or {}).get("edges") or []
             if w.get("data", {}).get("source") in ids and w["data"].get("target") in ids]
    edges.sort(key=lambda d: (d["source"], d["target"], (d.get("traffic") or {}).get("protocol", ""), d["id"]))
    layout = Layout([d["id"] for d in nodes], [(e["source"], e["target"]) for e in edges])
    return {n: layout.layer[n] for n in ids}


__all__ = ["render_svg", "layout_columns", "node_label", "edge_label", "Layout"]
