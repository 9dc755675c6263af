"""The Graph page in Debian's Chromium against `meshscope serve --demo`: the server's SVG with the demo's nodes,
node and edge side panels with RED numbers, links to the Logs page, pickers and selection in the URL (a reload
restores them), the server's message for a bad window, and a narrow screen."""
from __future__ import annotations

import re
import urllib.parse

import pytest

pytest.importorskip("playwright")
from playwright.sync_api import expect  # noqa: E402

NODE = 'g.ms-node[data-label="productpage v1"]'


def open_graph(ui, query: str = ""):
    page = ui.goto(f"/graph{query}")
    page.wait_for_selector(NODE)
    return page


def view_width(page) -> float:
    return float(page.locator("svg.graph-svg").get_attribute("viewBox").split()[2])


def test_graph_loads_and_a_node_opens_its_panel_which_survives_a_reload(ui):
    page = open_graph(ui, "?refresh=30s")
    # the demo's mesh, drawn by the server and made interactive here
    for label in ("productpage v1", "reviews v2", "ratings v1", "details v1"):
        expect(page.locator(f'g.ms-node[data-label="{label}"]')).to_be_visible()
    expect(page.locator(".graph-summary")).to_contain_text(re.compile(r"\d+ nodes · \d+ edges"))
    expect(page.locator("#graph-refresh")).to_have_value("30s")
    expect(page.locator("#graph-type")).to_have_value("versionedApp")
    ui.shot("loaded")

    page.locator(f"{NODE} .ms-shape").hover()
    expect(page.locator("svg.graph-svg")).to_have_class(re.compile(r"\bgraph-hl\b"))
    expect(page.locator(NODE)).to_have_class(re.compile(r"\bgraph-on\b"))

    page.locator(f"{NODE} .ms-shape").click()
    panel = page.locator("#graph-panel")
    expect(panel.locator(".graph-panel-title")).to_have_text("productpage v1")
    expect(panel.locator(".graph-red").first).to_contain_text("Requests")
    expect(panel.locator(".graph-red").first).to_contain_text(re.compile(r"\d[\d.]*/s"))
    expect(panel.locator(".graph-red").first).to_contain_text(re.compile(r"p95\s*\d[\d.]*(ms|s|µs)"))
    expect(panel.locator(".graph-health-line .graph-health")).to_have_text(re.compile(r"Healthy|Degraded|Failure"))
    expect(panel).to_contain_text("Top errors")
    expect(page.locator(NODE)).to_have_class(re.compile(r"\bgraph-selected\b"))
    node_id = page.locator(NODE).get_attribute("data-id")
    assert f"node={node_id}" in page.url and "refresh=30s" in page.url
    ui.shot("node-panel")

    page.reload(wait_until="domcontentloaded")
    expect(page.locator("#graph-panel .graph-panel-title")).to_have_text("productpage v1")
    expect(page.locator(NODE)).to_have_class(re.compile(r"\bgraph-selected\b"))
    expect(page.locator("#graph-refresh")).to_have_value("30s")

    page.keyboard.press("Escape")
    expect(page.locator("#graph-panel .graph-panel-title")).to_have_count(0)
    assert "node=" not in page.url


def test_panel_links_lead_to_the_services_logs_and_traces(ui):
    page = open_graph(ui, "?duration=15m")
    page.locator(f"{NODE} .ms-shape").click()
    logs = page.locator("#graph-panel a.graph-logs-link")
    expect(logs).to_be_visible()
    traces = urllib.parse.urlsplit(page.locator("#graph-panel a.graph-traces-link").get_attribute("href"))
    tq = urllib.parse.parse_qs(traces.query)
    assert traces.path == "/traces" and tq["service"] == ["productpage"] and tq["lookback"] == ["15m"]
    logs.click()
    page.wait_for_url(re.compile(r"/logs\?"))
    q = urllib.parse.parse_qs(urllib.parse.urlsplit(page.url).query)
    # the workload's app logs and its sidecar's access logs (labelled from the mesh identity) together
    assert q["query"] == ['{k8s_namespace_name="bookinfo", k8s_deployment_name="productpage-v1"}'] and \
        q["since"] == ["15m"]
    lines = page.locator(".logs-row .logs-line")
    expect(lines.first).to_be_visible()
    texts = lines.all_inner_texts()
    assert any('"GET /productpage HTTP/1.1"' in t for t in texts), "an Envoy access log line is among the results"
    assert any(not t.startswith("[") for t in texts), "an app log line is among the results"
    expect(page.locator('#nav a[data-page="logs"]')).to_have_class(re.compile(r"\bactive\b"))
    page.go_back()
    expect(page.locator("#graph-panel .graph-panel-title")).to_have_text("productpage v1")


def test_edges_zoom_and_pickers(ui):
    page = open_graph(ui)
    w0 = view_width(page)
    page.get_by_role("button", name="Zoom in").click()
    assert view_width(page) < w0
    page.get_by_role("button", name="Fit").click()
    assert view_width(page) == pytest.approx(w0)

    edge = page.locator('g.ms-edge[data-source-label="reviews v2"][data-target-label="ratings v1"]')
    edge.locator("text.ms-edge-label").click()
    panel = page.locator("#graph-panel")
    expect(panel.locator(".graph-panel-title")).to_have_text("reviews v2 \u2192 ratings v1")
    expect(panel.locator(".graph-red")).to_contain_text(re.compile(r"Requests\s*\d[\d.]*/s"))
    expect(panel.locator("table.graph-codes")).to_contain_text("200")
    assert f"edge={edge.get_attribute('data-id')}" in page.url
    ui.shot("edge-panel")

    page.select_option("#graph-type", "app")
    page.wait_for_selector('g.ms-node[data-label="reviews"]')
    expect(page.locator('g.ms-node[data-label="reviews v2"]')).to_have_count(0)
    assert "graphType=app" in page.url and "edge=" not in page.url  # old ids mean nothing in another graph
    expect(panel).not_to_contain_text("\u2192")
    page.select_option("#graph-namespace", "istio-system")
    expect(page.locator("svg.graph-svg")).to_be_visible()
    assert "namespaces=istio-system" in page.url
    expect(page.locator('g.ms-node[data-label="istio-ingressgateway"]')).to_be_visible()
    expect(page.locator('g.ms-node[data-label="ratings"]')).to_have_count(0)  # only the namespace and its callees


def test_bad_window_shows_the_servers_message_and_no_traffic_says_what_to_do(ui):
    ui.allow(r"Failed to load resource: the server responded with a status of 400")
    page = ui.goto("/graph?duration=abc")
    err = page.locator("#graph-canvas .error")
    expect(err).to_contain_text("invalid duration 'abc'")
    expect(err).to_contain_text("10m")  # the server says what a good window looks like
    expect(page.locator("#graph-window")).to_have_value("abc")  # the picker shows what the URL asked for
    ui.shot("bad-duration")
    expect(page.locator(".graph-zoom")).to_be_hidden()
    page.select_option("#graph-window", "5m")
    page.wait_for_selector(NODE)
    expect(err).to_have_count(0)

    page = ui.goto("/graph?namespaces=no-such-namespace&duration=5m")
    empty = page.locator("#graph-canvas .empty")
    expect(empty).to_contain_text("No traffic in no-such-namespace in the last 5m.")
    expect(empty).to_contain_text("Send OTLP to :4318 or run `meshscope serve --demo`")
    expect(page.locator("#graph-namespace")).to_have_value("no-such-namespace")
    ui.shot("no-traffic")


def test_narrow_screen_shows_graph_and_panel(ui):
    ui.page.set_viewport_size({"width": 390, "height": 844})
    page = open_graph(ui)
    box = page.locator("svg.graph-svg").bounding_box()
    assert box and box["width"] > 300 and box["height"] > 200
    # tiny nodes are hard to tap: the Find list selects one too
    page.select_option("#graph-find", label="reviews v2 (bookinfo)")
    title = page.locator("#graph-panel .graph-panel-title")
    expect(title).to_have_text("reviews v2")
    expect(page.locator("#graph-panel .graph-red").first).to_contain_text("Requests")
    expect(title).to_be_in_viewport()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390 + 1  # nothing wider than the screen
    ui.shot("narrow")
