"""Services page in a real Chromium against ``meshscope serve --demo``: the service list with RED numbers and
sorting, a service's charts and operations, the links to traces and logs, and a narrow screen."""

from __future__ import annotations

import re
import urllib.parse

from playwright.sync_api import expect

NUM = re.compile(r"^\d+(\.\d+)?[kMG]?$")
DURATION = re.compile(r"^(\d+(?:\.\d+)?)(µs|ms|s|m)$")


def ms(text: str) -> float:
    m = DURATION.match(text.strip())
    assert m, f"not a duration: {text!r}"
    return float(m.group(1)) * {"µs": 0.001, "ms": 1, "s": 1000, "m": 60000}[m.group(2)]


def cells(row) -> dict[str, str]:
    heads = [h.strip().rstrip("▲▼ ").strip() for h in row.page.locator("table.services thead th").all_inner_texts()]
    return dict(zip(heads, [c.strip() for c in row.locator("td").all_inner_texts()]))


def test_services_list_sort_and_open_one(ui):
    page = ui.goto("/services?window=15m")
    rows = page.locator("table.services tbody tr")
    expect(rows.filter(has_text="productpage").first).to_be_visible(timeout=30_000)
    names = page.locator("table.services tbody a.service-link").all_inner_texts()
    assert {"productpage", "reviews", "ratings", "details"} <= set(names), names
    reviews = cells(page.locator('table.services tbody tr[data-service="reviews"]'))
    assert NUM.match(reviews["Req/s"]) and float(reviews["Req/s"].rstrip("kMG")) > 0, reviews
    assert reviews["Errors"].endswith("%") and reviews["Health"] in ("healthy", "degraded", "failing")
    assert ms(reviews["p50"]) <= ms(reviews["p95"]) <= ms(reviews["p99"]) and ms(reviews["p95"]) > 0, reviews
    # the health badge follows the error rate (Kiali's tolerance: any error degrades, 10% fails)
    # (the percentage is rounded: "0.0%" means none at all, "0.00%" a few, "10.0%" either side of the line)
    for row in page.locator("table.services tbody tr").all():
        c = cells(row)
        err = float(c["Errors"].rstrip("%"))
        if c["Errors"] == "0.0%":
            assert c["Health"] == "healthy", c
        elif err < 9.95:
            assert c["Health"] == "degraded", c
        elif err > 10.05:
            assert c["Health"] == "failing", c
    expect(page.locator('table.services tbody tr[data-service="reviews"] svg.sparkline path').first).to_be_attached()
    ui.shot("list")

    # sorting by p95 puts the slowest first, and the order is in the URL
    page.get_by_role("button", name="p95").click()
    expect(page).to_have_url(re.compile(r"sort=p95Ms&dir=desc"))
    p95s = [ms(cells(r)["p95"]) for r in page.locator("table.services tbody tr").all()]
    assert p95s == sorted(p95s, reverse=True), p95s
    page.get_by_role("button", name="p95").click()
    expect(page).to_have_url(re.compile(r"dir=asc"))

    # the name filter lives in the URL too
    page.get_by_label("Filter services").fill("rat")
    expect(page.locator("table.services tbody tr")).to_have_count(len([n for n in names if "rat" in n]))
    assert "q=rat" in page.url
    page.get_by_label("Filter services").fill("")
    expect(page.locator("table.services tbody tr")).to_have_count(len(names))

    page.locator("a.service-link", has_text=re.compile(r"^reviews$")).click()
    expect(page).to_have_url(re.compile(r"/services/reviews\?window=15m"))
    expect(page.locator("h1")).to_contain_text("reviews")
    stats = page.locator(".stats .stat")
    expect(stats).to_have_count(5, timeout=30_000)
    assert float(stats.nth(0).locator(".stat-value").inner_text()) > 0
    # three charts with drawn data: request rate, errors, duration percentiles
    charts = page.locator(".charts figure.chart")
    expect(charts).to_have_count(3)
    expect(charts.nth(0).locator("path[stroke]").first).to_be_attached()
    expect(charts.nth(2).locator("ul.legend")).to_contain_text("p95")
    op = page.locator("table.services tbody tr").filter(has_text="GET /reviews/{id}")
    expect(op).to_have_count(1)
    assert float(cells(op)["Req/s"].rstrip("kMG")) > 0
    logs_href = op.locator("a.logs-link").get_attribute("href")
    q = urllib.parse.parse_qs(urllib.parse.urlsplit(logs_href).query)
    assert q == {"query": ['{service_name="reviews"}'], "since": ["15m"]}, logs_href
    ui.shot("service")

    op.locator("a.traces-link").click()
    expect(page).to_have_url(re.compile(r"/traces\?"))
    q = urllib.parse.parse_qs(urllib.parse.urlsplit(page.url).query)
    assert q["service"] == ["reviews"] and q["operation"] == ["GET /reviews/{id}"] and q["lookback"] == ["15m"]


def test_proxy_service_links_to_app_logs_and_empty_states(ui):
    # Envoy reports as <app>.<namespace>; its logs are the app's, found by service_name and namespace
    page = ui.goto("/services/ratings.bookinfo?window=15m")
    expect(page.locator(".stats .stat")).to_have_count(5, timeout=30_000)
    href = page.locator(".intro a.logs-link").get_attribute("href")
    q = urllib.parse.parse_qs(urllib.parse.urlsplit(href).query)
    assert q["query"] == ['{service_name="ratings", k8s_namespace_name="bookinfo"}'], href
    # a service that sent nothing: an empty state that says what to try, not a blank page
    page = ui.goto("/services/no-such-service?window=5m")
    expect(page.locator(".empty")).to_contain_text("No server or consumer spans from no-such-service", timeout=30_000)
    expect(page.locator(".empty")).to_contain_text("All spans")
    page = ui.goto("/services?q=zzz-nothing")
    expect(page.locator(".empty")).to_contain_text('No service name contains "zzz-nothing"', timeout=30_000)


def test_services_narrow_screen(ui):
    ui.page.set_viewport_size({"width": 390, "height": 844})
    page = ui.goto("/services/reviews?window=15m")
    expect(page.locator(".stats .stat")).to_have_count(5, timeout=30_000)
    expect(page.locator(".charts figure.chart")).to_have_count(3)
    # nothing wider than the screen: the page never scrolls sideways (wide tables scroll inside their box)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    box = page.locator(".charts .card").first.bounding_box()
    assert box["width"] > 300  # charts stack at full width
    ui.shot("narrow")
