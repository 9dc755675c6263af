"""The SVG renderer: well-formed XML, Kiali's shapes and colours, data attributes for the UI, escaping of names
that come from user data, deterministic output, and a left-to-right layered layout."""
from __future__ import annotations

import random
import xml.etree.ElementTree as ET

import pytest

from meshscope.query.graph.model import GraphOptions, build_graph
from meshscope.query.graph.svg import COLORS, Layout, edge_label, layout_columns, render_svg
from meshscope.query.graph.types import EdgeStats, NodeIdentity

SVG = "{http://www.w3.org/2000/svg}"
W = 600.0


def wl(name, app=None, ns="bookinfo", service=None, **kw):
    app = app or name.rsplit("-", 1)[0]
    return NodeIdentity(cluster="east", namespace=ns, workload=name, app=app, version="v1",
                        service=service or app, **kw)


def http(src, dst, codes, **kw):
    return EdgeStats(src, dst, "http", W, requests=sum(codes.values()), responses=dict(codes), **kw)


PP, RV, RT, DT = wl("productpage-v1"), wl("reviews-v1"), wl("ratings-v1"), wl("details-v1")
DB = NodeIdentity(cluster="east", namespace="bookinfo", service="mysql", kind="service", virtual="db")
EXT = NodeIdentity(cluster="east", namespace="bookinfo", service="api.example.com", kind="service", virtual="host")


def mesh_edges():
    return [
        http(NodeIdentity(kind="unknown"), PP, {"200": 600}),
        http(PP, RV, {"200": 1140, "503": 60}, latency_ms={"p95": 12.0}, mtls_requests=1200),
        http(PP, DT, {"200": 600, "404": 150}, latency_ms={"p95": 1500.0}),
        http(RV, RT, {"200": 600}, latency_ms={"p95": 3.0}),
        EdgeStats(RT, DB, "tcp", W, requests=10, bytes_sent=600 * 2048),
        http(DT, EXT, {"200": 60}),
    ]


def render(edges=None, **opts):
    doc = build_graph(mesh_edges() if edges is None else edges, GraphOptions(**opts)).to_kiali_json()
    return doc, render_svg(doc)


def groups(root, cls):
    return [g for g in root.iter(f"{SVG}g") if cls in (g.get("class") or "").split()]


def test_well_formed_with_a_group_per_node_and_edge():
    doc, svg = render()
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    assert root.get("data-graph-type") == "workload"
    nodes, edges = groups(root, "ms-node"), groups(root, "ms-edge")
    assert len(nodes) == len(doc["elements"]["nodes"]) == 7
    assert len(edges) == len(doc["elements"]["edges"]) == 6
    for g in nodes + edges:
        assert g.find(f"{SVG}title") is not None and g.find(f"{SVG}title").text


def test_shapes_per_node_type():
    edges = mesh_edges() + [http(PP, RV, {"200": 1})]
    doc = build_graph(edges, GraphOptions(graph_type="versionedApp", inject_service_nodes=True)).to_kiali_json()
    root = ET.fromstring(render_svg(doc))
    shape_of = {}
    for g in groups(root, "ms-node"):
        shape = [c for c in g if c.get("class") == "ms-shape"][0]
        shape_of[(g.get("data-node-type"), g.get("data-is-service-entry"))] = (shape.tag[len(SVG):],
                                                                              len((shape.get("points") or "").split()))
    assert shape_of[("app", None)] == ("rect", 0)
    assert shape_of[("service", None)] == ("polygon", 4)        # rhombus
    assert shape_of[("service", "true")] == ("polygon", 4)      # trapezoid
    assert shape_of[("unknown", None)] == ("polygon", 4)
    doc = build_graph(mesh_edges(), GraphOptions(graph_type="workload")).to_kiali_json()
    root = ET.fromstring(render_svg(doc))
    wl_shapes = {[c for c in g if c.get("class") == "ms-shape"][0].tag[len(SVG):]
                 for g in groups(root, "ms-node") if g.get("data-node-type") == "workload"}
    assert wl_shapes == {"ellipse"}
    # the service entry is a trapezoid: its top edge is shorter than its bottom edge
    se = [g for g in groups(root, "ms-node") if g.get("data-is-service-entry")][0]
    pts = [tuple(map(float, p.split(","))) for p in se.find(f"{SVG}polygon").get("points").split()]
    assert pts[1][0] - pts[0][0] < pts[2][0] - pts[3][0]


def test_data_attributes_for_the_ui():
    doc, svg = render()
    root = ET.fromstring(svg)
    by_wl = {g.get("data-workload"): g for g in groups(root, "ms-node")}
    pp = by_wl["productpage-v1"]
    ids = {n["data"].get("workload"): n["data"]["id"] for n in doc["elements"]["nodes"]}
    assert pp.get("data-id") == ids["productpage-v1"]
    assert pp.get("data-node-type") == "workload"
    assert pp.get("data-namespace") == "bookinfo" and pp.get("data-cluster") == "east"
    assert pp.get("data-app") == "productpage"
    assert pp.get("data-health") in ("Healthy", "Degraded", "Failure")
    assert pp.get("data-rate-http-out") == "3.25"
    assert pp.get("data-layer") == "1"
    unknown = [g for g in groups(root, "ms-node") if g.get("data-node-type") == "unknown"][0]
    assert unknown.get("data-is-root") == "true" and unknown.get("data-is-inaccessible") == "true"
    assert unknown.get("data-layer") == "0"
    e = [g for g in groups(root, "ms-edge") if g.get("data-target") == ids["reviews-v1"]][0]
    assert e.get("data-source") == ids["productpage-v1"]
    assert e.get("data-protocol") == "http"
    assert e.get("data-rate") == "2.00" and e.get("data-rate-http5xx") == "0.10"
    assert e.get("data-percent-err") == "5.0" and e.get("data-percent-req") == "61.5"
    assert e.get("data-response-time") == "12" and e.get("data-is-mtls") == "100"
    assert e.get("data-health") == "Degraded"
    assert e.get("id") and e.get("data-id") == [d["data"]["id"] for d in doc["elements"]["edges"]
                                                if d["data"]["target"] == ids["reviews-v1"]][0]


def test_edge_labels_colours_and_lock():
    doc, svg = render()
    root = ET.fromstring(svg)
    ids = {n["data"].get("workload") or n["data"].get("service"): n["data"]["id"] for n in doc["elements"]["nodes"]}
    by_target = {g.get("data-target"): g for g in groups(root, "ms-edge")}

    def parts(g):
        line = [c for c in g if c.get("class") == "ms-edge-line"][0]
        text = [c for c in g if c.get("class") == "ms-edge-label"][0].text
        return line.get("stroke"), text, bool(groups(g, "ms-lock")), line.get("marker-end")

    stroke, text, lock, marker = parts(by_target[ids["reviews-v1"]])
    assert (stroke, text, lock) == (COLORS["Degraded"], "2.00rps / 5.0% / 12ms", True)
    assert marker == "url(#ms-arrow-degraded)"
    assert root.find(f".//{SVG}marker[@id='ms-arrow-degraded']") is not None
    stroke, text, lock, _ = parts(by_target[ids["details-v1"]])
    assert (stroke, text, lock) == (COLORS["Failure"], "1.25rps / 20.0% / 1.50s", False)  # 4xx 20 % fails
    stroke, text, lock, _ = parts(by_target[ids["ratings-v1"]])
    assert (stroke, text) == (COLORS["Healthy"], "1.00rps / 0% / 3ms")
    stroke, text, lock, _ = parts(by_target[ids["mysql"]])
    assert (stroke, text) == (COLORS["tcp"], "2.00kps")
    stroke, text, _, _ = parts(by_target[ids["api.example.com"]])
    assert text == "0.10rps / 0% / -"


def test_node_colours_follow_health():
    doc, svg = render()
    root = ET.fromstring(svg)
    for g in groups(root, "ms-node"):
        shape = [c for c in g if c.get("class") == "ms-shape"][0]
        if g.get("data-node-type") == "unknown":
            assert shape.get("stroke") == COLORS["NA"]
        else:
            assert shape.get("stroke") == COLORS[g.get("data-health")]


@pytest.mark.parametrize("evil", [
    '<script>alert(1)</script>', 'a"b\'c&d', ']]><x/>', "\x00\x07\x1b[31m", "\ud800", "</g></svg><svg onload=x>",
])
def test_names_cannot_inject_markup(evil):
    src = NodeIdentity(cluster="east", namespace=evil, workload=evil, app=evil, version=evil, service=evil)
    dst = NodeIdentity(cluster=evil, namespace="ns" + evil, workload="w" + evil, app="a" + evil, version="v1",
                       service="s" + evil)
    doc = build_graph([http(src, dst, {"200": 60, "503": 1}, flags={"503": {evil: 1}},
                            hosts={"200": {evil: 60}})], GraphOptions()).to_kiali_json()
    svg = render_svg(doc)
    root = ET.fromstring(svg)  # well-formed despite the names
    assert "<script" not in svg and "<x/>" not in svg and "<svg onload" not in svg
    assert not any(el.tag.endswith("script") for el in root.iter())
    allowed = {"svg", "title", "defs", "marker", "path", "g", "rect", "ellipse", "polygon", "text"}
    assert {el.tag[len(SVG):] for el in root.iter()} <= allowed
    for el in root.iter():
        assert not any(k.lower().startswith("on") for k in el.attrib)
    texts = "".join(root.itertext())
    clean = evil.replace("\x00", "\ufffd").replace("\x07", "\ufffd").replace("\x1b", "\ufffd")
    if "\ud800" not in evil:
        assert clean[:8] in texts  # the name is shown, as text
    workloads = {g.get("data-workload") for g in groups(root, "ms-node")}
    if "\ud800" not in evil:
        assert clean in workloads  # and round-trips through the attribute


def test_deterministic_output():
    edges = mesh_edges()
    _, a = render(edges)
    shuffled = list(edges)
    random.Random(7).shuffle(shuffled)
    _, b = render(shuffled)
    assert a == b
    assert render_svg(build_graph(edges, GraphOptions()).to_kiali_json()) == a


def _random_dag(seed: int, n: int = 14, m: int = 24):
    rnd = random.Random(seed)
    names = [wl(f"w{i:02d}-v1", app=f"w{i:02d}") for i in range(n)]
    edges = []
    for _ in range(m):
        a, b = sorted(rnd.sample(range(n), 2))
        edges.append(http(names[a], names[b], {"200": 60}))
    return edges


@pytest.mark.parametrize("seed", range(6))
def test_layout_is_left_to_right_for_a_dag(seed):
    doc = build_graph(_random_dag(seed), GraphOptions()).to_kiali_json()
    cols = layout_columns(doc)
    for e in doc["elements"]["edges"]:
        assert cols[e["data"]["source"]] < cols[e["data"]["target"]]
    root = ET.fromstring(render_svg(doc))
    layer = {g.get("data-id"): int(g.get("data-layer")) for g in groups(root, "ms-node")}
    assert layer == cols
    # x grows with the column
    xs = {}
    for g in groups(root, "ms-node"):
        t = [c for c in g if c.get("class") == "ms-node-label"][0]
        xs[g.get("data-id")] = float(t.get("x"))
    for e in doc["elements"]["edges"]:
        assert xs[e["data"]["source"]] < xs[e["data"]["target"]]


def test_longest_path_layering_and_cycles():
    lay = Layout(["a", "b", "c", "d"], [("a", "b"), ("b", "c"), ("a", "c"), ("c", "d"), ("d", "b"), ("c", "c")])
    assert lay.layer["a"] == 0
    # one edge of the b->c->d->b cycle is reversed; every remaining forward edge goes right
    for i, (s, t) in enumerate(lay.edges):
        if s == t:
            continue
        a, b = (t, s) if i in lay.reversed else (s, t)
        assert lay.layer[a] < lay.layer[b]
    assert len(lay.reversed) == 1
    # long edges get dummy nodes, one per skipped layer
    lay2 = Layout(["a", "b", "c"], [("a", "b"), ("b", "c"), ("a", "c")])
    assert lay2.layer == {"a": 0, "b": 1, "c": 2, **{k: v for k, v in lay2.layer.items() if k.startswith("\x00")}}
    assert len(lay2.chains[2]) == 3


def test_barycenter_removes_avoidable_crossings():
    # a1->b2, a2->b1 drawn in input order crosses; the sweeps must untangle it
    lay = Layout(["a1", "a2", "b1", "b2", "c"], [("a1", "b2"), ("a2", "b1"), ("b2", "c"), ("b1", "c")])
    assert lay.crossings == 0


def test_cyclic_graph_renders():
    a, b = wl("a-v1"), wl("b-v1")
    doc = build_graph([http(a, b, {"200": 60}), http(b, a, {"200": 60})], GraphOptions()).to_kiali_json()
    root = ET.fromstring(render_svg(doc))
    assert len(groups(root, "ms-edge")) == 2


def test_empty_graph_renders_a_message():
    root = ET.fromstring(render_svg(build_graph([], GraphOptions()).to_kiali_json()))
    assert "no traffic" in "".join(root.itertext())


def test_parallel_edges_do_not_share_a_label_position():
    edges = [http(PP, RV, {"200": 60}), EdgeStats(PP, RV, "grpc", W, requests=60, responses={"0": 60})]
    _, svg = render(edges)
    root = ET.fromstring(svg)
    ys = sorted(float([c for c in g if c.get("class") == "ms-edge-label"][0].get("y"))
                for g in groups(root, "ms-edge"))
    assert ys[1] - ys[0] >= 14


def test_edge_label_function():
    assert edge_label({"traffic": {"protocol": "grpc", "rates": {"grpc": "1.00", "grpcPercentErr": "3.0"}},
                       "responseTime": "999"}) == "1.00rps / 3.0% / 999ms"
    assert edge_label({"traffic": {"protocol": "tcp", "rates": {"tcp": "100.00"}}}) == "100.00bps"
    assert edge_label({"traffic": {"protocol": "http"}}) == "0.00rps / 0% / -"
