"""The Logs page in a real Chromium against ``meshscope serve --demo``: LogQL lines, the volume histogram and its
drag-to-zoom, expanded metadata with the trace link (opening the trace's waterfall), inline parser errors, metric
charts, live tail and a narrow screen.

The demo's app logs carry stream labels (service_name, level, k8s_*) and structured metadata (trace_id, span_id);
every assertion is on what the page shows, and cross-checked against the JSON API where the value matters.
"""
from __future__ import annotations

import functools
import re
import urllib.parse

from conftest import _get_json
from playwright.sync_api import expect

get_json = functools.partial(_get_json, timeout=10)  # the demo server's API, as the page reads it

REVIEWS = '{service_name="reviews"}'
HEX32 = re.compile(r"^[0-9a-f]{32}$")


def logs_url(**params) -> str:
    return "/logs?" + urllib.parse.urlencode(params)


def test_lines_volume_details_trace_link_and_reload(ui, demo_server):
    # Oldest first over the last hour: the first lines stay the same across a reload while the demo keeps sending.
    page = ui.goto(logs_url(query=REVIEWS, since="1h", limit=100, direction="forward"))
    rows = page.locator(".logs-row")
    expect(rows.first).to_be_visible()
    n = rows.count()
    assert n >= 1
    expect(page.locator(".logs-summary")).to_contain_text(f"{n} line")
    expect(page.locator(".logs-common")).to_contain_text("service_name=reviews")
    bodies = rows.locator(".logs-line").all_inner_texts()
    assert all(b.strip() for b in bodies)
    assert any("reviews" in b for b in bodies), bodies[:5]  # the reviews app logs "fetched 2 reviews ..."
    # The histogram counts the same query by level: bars, and a legend naming a level the demo sends.
    page.wait_for_selector(".logs-volume svg rect:not(.select-band)")
    assert page.locator(".logs-volume svg rect:not(.select-band)").count() >= 1
    expect(page.locator(".logs-volume .legend")).to_contain_text("info")
    ui.shot("lines")

    # Every app log line carries its span's trace id: a link to the trace page, to a trace the API knows.
    first = rows.first
    link = first.locator("a.trace-link")
    href = link.get_attribute("href")
    m = re.fullmatch(r"/traces/([0-9a-f]{32})", href or "")
    assert m, href
    trace_id = m.group(1)
    trace = get_json(demo_server.http_url + f"/api/traces/{trace_id}")
    assert trace["data"] and trace["data"][0]["traceID"] == trace_id

    # Expanding a line shows stream labels, structured metadata (with that trace id) and the parsed-fields hint.
    first.locator(".logs-line").click()
    details = first.locator(".logs-details")
    expect(details).to_be_visible()
    stream_tbl, meta_tbl = details.locator(".logs-kv").nth(0), details.locator(".logs-kv").nth(1)
    expect(stream_tbl.locator("h3")).to_have_text("Stream labels")
    expect(stream_tbl.locator("tr", has_text="service_name")).to_contain_text("reviews")
    expect(meta_tbl.locator("h3")).to_have_text("Structured metadata")
    expect(meta_tbl.locator("tr", has_text="trace_id")).to_contain_text(trace_id)
    expect(meta_tbl.locator("tr", has_text="span_id")).to_be_visible()
    assert "trace_id" not in stream_tbl.inner_text()  # metadata is kept apart from the stream labels
    expect(details.locator("a.trace-link")).to_have_attribute("href", f"/traces/{trace_id}")
    line_id = first.get_attribute("data-id")
    page.wait_for_url(re.compile(r"[?&]line="))
    state = urllib.parse.parse_qs(urllib.parse.urlparse(page.url).query)
    assert state["query"] == [REVIEWS] and state["line"] == [line_id] and state["direction"] == ["forward"]
    ui.shot("expanded")

    # The URL is the state: a reload brings back the query, the order and the expanded line.
    page.reload()
    expect(page.locator("#logql")).to_have_value(REVIEWS)
    expect(page.locator("#logs-direction")).to_have_value("forward")
    reopened = page.locator(f'.logs-row[data-id="{line_id}"]')
    expect(reopened.locator(".logs-details")).to_be_visible()
    expect(reopened.locator(".logs-details")).to_contain_text(trace_id)

    # The line's trace link opens that trace's waterfall (the Traces page).
    reopened.locator(".logs-head a.trace-link").click()
    page.wait_for_url(re.compile(f"/traces/{trace_id}$"))
    expect(page.locator(".waterfall .span-row").first).to_be_visible()
    expect(page.locator("main")).to_contain_text(trace_id)
    ui.shot("trace")


def test_volume_drag_narrows_the_window(ui):
    page = ui.goto(logs_url(query=REVIEWS, since="5m"))
    bars = page.locator(".logs-volume svg rect:not(.select-band)")
    expect(bars.first).to_be_attached()
    expect(page.locator(".logs-row").first).to_be_visible()
    # Drag across the newest part of the histogram, where the demo's lines are.
    svg = page.locator(".logs-volume svg").bounding_box()
    y = svg["y"] + svg["height"] / 2
    page.mouse.move(svg["x"] + svg["width"] * 0.55, y)
    page.mouse.down()
    page.mouse.move(svg["x"] + svg["width"] * 0.99, y, steps=4)
    page.mouse.up()
    page.wait_for_url(lambda url: "start=" in url and "end=" in url)
    state = urllib.parse.parse_qs(urllib.parse.urlparse(page.url).query)
    start, end = int(state["start"][0]), int(state["end"][0])  # unix ms
    assert 0 < end - start < 5 * 60_000
    expect(page.locator(".logs-volume figcaption")).to_contain_text("between")
    expect(page.locator(".logs-range button")).to_have_text("Back to last 5m")
    rows = page.locator(".logs-row")
    expect(rows.first).to_be_visible()
    # every line shown is inside the selected range
    stamps = rows.locator("time").evaluate_all("ts => ts.map((t) => Date.parse(t.getAttribute('datetime')))")
    assert stamps and all(start <= t <= end for t in stamps), (start, end, stamps[:3])
    ui.shot("zoomed")
    page.click(".logs-range button")
    page.wait_for_url(lambda url: "start=" not in url)
    expect(page.locator(".logs-volume figcaption")).to_contain_text("in the last 5m")


def test_parse_and_query_errors_inline_and_empty_state(ui):
    ui.allow(r"status of 400")  # Chromium logs every 400 answer; these are the bad queries sent on purpose
    page = ui.goto(logs_url(query=REVIEWS))
    expect(page.locator(".logs-row").first).to_be_visible()
    editor = page.locator("#logql")

    # Validated as typed: the server's parser message, with a caret under the column it names.
    editor.fill('{service_name="reviews" |= "x"')
    err = page.locator(".logs-query-error")
    expect(err).to_contain_text("parse error at line 1, col 25: syntax error: unexpected |=")
    expect(err.locator(".logs-caret")).to_contain_text("^")
    ui.shot("parse-error")
    page.click("#logs-run")
    expect(page.locator(".logs-results .error")).to_contain_text("parse error at line 1, col 25")
    expect(page.locator(".logs-volume")).to_be_hidden()

    # A regexp only fails when the query runs: that message is shown under the editor too.
    editor.fill(REVIEWS + ' |~ "("')
    expect(err).to_be_empty()  # it parses
    editor.press("Control+Enter")
    expect(err).to_contain_text("error parsing regexp")
    expect(page.locator(".logs-results .error")).to_contain_text("error parsing regexp")

    # No match: an empty state that says what to do.
    editor.fill('{service_name="no-such-service-anywhere"}')
    editor.press("Control+Enter")
    empty = page.locator(".logs-results .empty")
    expect(empty).to_contain_text("No lines matched in the last 1h")
    expect(empty).to_contain_text("Widen the window or relax the filter")
    expect(err).to_be_empty()


def test_metric_query_renders_a_chart(ui, demo_server):
    page = ui.goto(logs_url(query=REVIEWS))
    expect(page.locator(".logs-row").first).to_be_visible()
    q = f"sum by (level) (count_over_time({REVIEWS}[1m]))"
    page.locator("#logql").fill(q)
    page.locator("#logql").press("Control+Enter")
    expect(page.locator(".logs-kind")).to_have_text(re.compile("Metric query"))
    chart = page.locator(".logs-metric figure.chart")
    expect(chart.locator("path").first).to_be_attached()
    # one series per level the API reports for the same query, named in the legend and the table
    resp = get_json(demo_server.http_url + "/loki/api/v1/query_range?" + urllib.parse.urlencode({"query": q}))
    api_series = {f"level={r['metric']['level']}" for r in resp["data"]["result"]}
    shown = set(chart.locator(".legend li").all_inner_texts())
    assert "level=info" in shown and shown <= api_series, (shown, api_series)  # the API may have one more by now
    assert chart.locator("path").count() == len(shown)
    expect(page.locator("table.logs-series tbody tr")).to_have_count(len(shown))
    expect(page.locator("table.logs-series")).to_contain_text("level=info")
    expect(page.locator(".logs-row")).to_have_count(0)
    expect(page.locator(".logs-volume")).to_be_hidden()
    expect(page.locator("#logs-tail")).to_be_disabled()  # live tail is for log queries
    assert urllib.parse.parse_qs(urllib.parse.urlparse(page.url).query)["query"] == [q]
    ui.shot("metric")


def test_live_tail_receives_new_lines(ui):
    page = ui.goto(logs_url(query='{service_name="productpage"}', tail=1))
    expect(page.locator("#logs-tail")).to_have_attribute("aria-pressed", "true")
    # The demo sends about five requests a second: new lines arrive within the store's flush delay.
    live = page.locator(".logs-row.live")
    expect(live.first).to_be_visible(timeout=30_000)
    expect(page.locator(".logs-tail-status")).to_contain_text(re.compile(r"live: \d+ new line"))
    expect(page.locator(".logs-summary")).to_contain_text("from live tail")
    assert "productpage" in live.first.locator(".logs-line").inner_text()
    assert HEX32.match(live.first.locator("a.trace-link").get_attribute("href").rsplit("/", 1)[1])
    ui.shot("tail")
    page.click("#logs-tail")
    expect(page.locator(".logs-tail-status")).to_have_text("tail stopped")
    expect(page.locator("#logs-tail")).to_have_attribute("aria-pressed", "false")
    assert "tail" not in urllib.parse.parse_qs(urllib.parse.urlparse(page.url).query)


def test_default_query_on_a_narrow_screen(ui):
    ui.page.set_viewport_size({"width": 390, "height": 844})
    page = ui.goto("/logs")
    # No query in the URL: the page picks a service that sent logs and puts it in the URL to share.
    expect(page.locator("#logql")).to_have_value('{service_name="productpage"}')
    page.wait_for_url(re.compile(r"query=%7Bservice_name"))
    rows = page.locator(".logs-row")
    expect(rows.first).to_be_visible()
    expect(page.locator("#logs-run")).to_be_visible()
    expect(page.locator("#logs-tail")).to_be_visible()
    rows.first.locator(".logs-line").click()
    expect(rows.first.locator(".logs-details")).to_be_visible()
    # Nothing wider than the screen: no sideways scrolling.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    box = rows.first.locator(".logs-line").bounding_box()
    assert box and box["x"] >= 0 and box["x"] + box["width"] <= 390
    ui.shot("narrow")
