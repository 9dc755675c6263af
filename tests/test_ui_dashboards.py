"""Dashboards page in a real Chromium against ``meshscope serve --demo``: the list, every shipped dashboard rendering
all its panels without errors, charts with data, variables in the URL, a failing query confined to its panel,
meshscope's self-monitoring data and a narrow screen."""

from __future__ import annotations

import re
import urllib.parse

from playwright.sync_api import expect

PANELS_DONE = "() => { const p = document.querySelectorAll('.panel'); " \
              "return p.length > 0 && document.querySelectorAll('.panel .loading').length === 0 && " \
              "/Updated/.test(document.querySelector('.toolbar .status').textContent); }"


def wait_panels(page, timeout: float = 60_000) -> None:
    page.wait_for_function(PANELS_DONE, timeout=timeout)


def panel(page, title: str):
    return page.locator("section.panel").filter(has=page.locator(".panel-title", has_text=re.compile(f"^{re.escape(title)}$")))


def panel_errors(page) -> dict[str, str]:
    out = {}
    for p in page.locator("section.panel").all():
        err = p.locator(".error")
        if err.count():
            out[p.locator(".panel-title").inner_text()] = err.inner_text()
    return out


def test_list_and_mesh_overview(ui):
    page = ui.goto("/dashboards")
    cards = page.locator(".dashboard-card")
    expect(cards.filter(has_text="Mesh overview")).to_have_count(1, timeout=30_000)
    expect(cards.filter(has_text="Service detail")).to_have_count(1)
    expect(cards.filter(has_text="meshscope self-monitoring")).to_have_count(1)
    ui.shot("list")

    cards.filter(has_text="Mesh overview").get_by_role("link").click()
    expect(page).to_have_url(re.compile(r"/dashboards/mesh-overview$"))
    expect(page.locator("h1")).to_have_text("Mesh overview")
    wait_panels(page)
    assert panel_errors(page) == {}
    n = page.locator("section.panel").count()
    assert n >= 10
    # Istio metrics from the demo: a request rate in req/s, charts with drawn series, a table of workload traffic
    expect(panel(page, "Request rate").locator(".stat-value")).to_have_text(re.compile(r"^\d+(\.\d+)?[kMG]? req/s$"))
    expect(panel(page, "p95 latency").locator(".stat-value")).to_have_text(re.compile(r"^\d+(\.\d+)?(µs|ms|s)$"))
    rate_chart = panel(page, "Request rate by service")
    expect(rate_chart.locator("svg path[stroke]").first).to_be_attached()
    expect(rate_chart.locator("ul.legend")).to_contain_text("productpage")
    expect(panel(page, "Traffic between workloads").locator("tbody tr").first).to_contain_text("productpage")
    ui.shot("mesh-overview")

    # the window is in the URL
    page.get_by_label("Window").select_option("15m")
    expect(page).to_have_url(re.compile(r"window=15m"))
    wait_panels(page)
    assert panel_errors(page) == {}


def test_service_detail_variable_and_a_broken_panel(ui):
    # A search regex that does not compile breaks the one panel that uses it, with the server's message there;
    # Chromium logs that 400 answer as a console error, which is expected here.
    ui.allow(r"Failed to load resource: the server responded with a status of 400")
    page = ui.goto("/dashboards/service-detail?window=15m")
    wait_panels(page)
    assert panel_errors(page) == {}
    service = page.get_by_label("Service", exact=True)
    expect(service).to_have_value("productpage")
    options = service.locator("option").all_inner_texts()
    assert {"productpage", "reviews", "ratings", "details"} <= set(options), options

    service.select_option("ratings")
    expect(page).to_have_url(re.compile(r"var-service=ratings"))
    wait_panels(page)
    assert panel_errors(page) == {}
    expect(panel(page, "Request rate").locator(".stat-value")).to_have_text(re.compile(r"req/s$"))
    expect(panel(page, "Inbound: requests by caller").locator("ul.legend")).to_contain_text("reviews")
    expect(panel(page, "Logs matching the search").locator(".logs-list li").first).to_contain_text("ratings")
    level_chart = panel(page, "Log lines by level")
    expect(level_chart.locator("svg rect").first).to_be_attached()
    href = level_chart.locator(".panel-links a").get_attribute("href")
    q = urllib.parse.parse_qs(urllib.parse.urlsplit(href).query)
    assert q["since"] == ["15m"] and '{service_name="ratings"}' in q["query"][0], href

    search = page.get_by_label("Log search (regex)")
    search.fill("(")
    search.press("Enter")
    expect(page).to_have_url(re.compile(r"var-search=%28"))
    wait_panels(page)
    errors = panel_errors(page)
    assert list(errors) == ["Logs matching the search"], errors
    assert "error parsing regexp" in errors["Logs matching the search"]
    ui.shot("broken-panel")

    # the state survives a reload from the URL alone
    page.reload()
    wait_panels(page)
    expect(page.get_by_label("Service", exact=True)).to_have_value("ratings")
    expect(page.get_by_label("Log search (regex)")).to_have_value("(")
    assert list(panel_errors(page)) == ["Logs matching the search"]


def test_self_monitoring_has_data(ui):
    # meshscope stores its own /metrics every 15 s (meshscope/selfscrape.py, started by `meshscope serve`).
    page = ui.goto("/dashboards/meshscope-self?window=15m")
    wait_panels(page)
    buffered = panel(page, "Buffered rows").locator(".stat-value")
    chart = panel(page, "Rows inserted per table")
    # A gauge shows after the first scrape, a counter's rate after the second: refresh for up to two intervals.
    for _ in range(8):
        if buffered.count() and chart.locator("svg path[stroke]").count():
            break
        page.wait_for_timeout(5_000)
        page.get_by_role("button", name="Refresh", exact=True).click()
        wait_panels(page)
    assert panel_errors(page) == {}
    expect(buffered).to_have_text(re.compile(r"^\d+(\.\d+)?[kMG]? rows$"))
    expect(chart.locator("ul.legend")).to_contain_text("otel_traces")
    expect(panel(page, "Received per signal").locator("ul.legend")).to_contain_text("traces (http)")
    ui.shot("self")


def test_dashboards_narrow_screen_and_unknown_id(ui):
    ui.page.set_viewport_size({"width": 390, "height": 844})
    page = ui.goto("/dashboards/mesh-overview?window=15m")
    wait_panels(page)
    assert panel_errors(page) == {}
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    widths = [p.bounding_box()["width"] for p in page.locator("section.panel").all()[:4]]
    assert min(widths) > 330, widths  # one panel per row
    ui.shot("narrow")

    ui.allow(r"Failed to load resource: the server responded with a status of 404")
    page = ui.goto("/dashboards/no-such-board")
    expect(page.locator(".error")).to_contain_text('No dashboard named "no-such-board"', timeout=30_000)


def test_the_page_substitutes_variables_by_the_tested_rule(ui):
    """test_dashboards.py proves the substitution rule keeps any value inside its string literal; this checks that
    the page's own substitute() (dashboards.js) is that rule, on the same awkward values and on built-ins."""
    from test_dashboards import BUILTINS, substitute

    page = ui.goto("/dashboards")
    values = ["plain", 'with "quotes"', "back\\slash\\", '"}) or vector(1) # ', "ünï ©ode", "$v"]
    texts = ['up{service="$v"}', '{service_name="${v}"}', 'rate(x{a="$v"}[$__rate_interval]) $unknown ${__range}']
    got = page.evaluate("""async ([texts, values, builtins]) => {
        const m = await import('/static/pages/dashboards.js');
        return values.map(v => texts.map(t => m.substitute(t, {v}, builtins)));
    }""", [texts, values, BUILTINS])
    assert got == [[substitute(t, {"v": v}) for t in texts] for v in values]


def test_range_requests_are_aligned_to_their_step(ui):
    """Panels ask for grids aligned to their step, as Grafana does, so that a refresh repeats the same grid and the
    server's results cache answers all but the new and the fresh steps."""
    seen: list[dict] = []
    ui.page.on("request", lambda r: seen.append(dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(r.url).query)))
               if urllib.parse.urlsplit(r.url).path == "/api/v1/query_range" else None)
    page = ui.goto("/dashboards/mesh-overview?window=1h")
    wait_panels(page)
    assert seen
    for q in seen:
        start, end, step = int(q["start"]), int(q["end"]), int(q["step"])
        assert start % step == 0 and end % step == 0 and end - start >= 3600, q
