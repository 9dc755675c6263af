"""The dashboard's shell: every page loads from the navigation bar without a console error, and the routes
that serve it answer plainly (HTML shell, static files, dashboards JSON)."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

import pytest
from playwright.sync_api import expect

PAGES = [("Graph", "/graph"), ("Logs", "/logs"), ("Traces", "/traces"), ("Services", "/services"),
         ("Dashboards", "/dashboards")]


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode()


def test_every_page_loads_from_the_navigation_bar(ui):
    page = ui.goto("/")
    expect(page).to_have_url(re.compile(r"/graph$"))
    for label, path in PAGES:
        page.locator("#nav a", has_text=label).click()
        expect(page).to_have_url(re.compile(re.escape(path) + r"(\?|$)"))
        expect(page.locator(f'#nav a[data-page="{path[1:]}"]')).to_have_class(re.compile(r"\bactive\b"))
        # the page rendered something of its own and left no loading indicator or error behind
        expect(page.locator("#app > *").first).to_be_visible()
        expect(page.locator("#app .loading")).to_have_count(0, timeout=30_000)
        expect(page.locator("#app .error")).to_have_count(0)
        ui.shot(path[1:])
    page.go_back()
    expect(page).to_have_url(re.compile(r"/services(\?|$)"))


def test_unknown_page_says_so(ui):
    ui.allow(r"status of 404")
    page = ui.goto("/graph")
    page.evaluate("window.meshscope.navigate('/nowhere')")
    expect(page.locator("#app .error")).to_contain_text("No page at /nowhere")


@pytest.mark.parametrize("path", ["/graph", "/logs/anything", "/traces/0123", "/dashboards/mesh-overview"])
def test_page_paths_serve_the_shell(demo_server, path):
    status, ctype, body = get(demo_server.http_url + path)
    assert status == 200 and ctype.startswith("text/html") and '<script type="module" src="/static/app.js">' in body


def test_static_files_and_their_limits(demo_server):
    status, ctype, body = get(demo_server.http_url + "/static/lib.js")
    assert status == 200 and ctype.startswith("text/javascript") and "export async function api" in body
    for bad in ("/static/../routes.py", "/static/%2e%2e/routes.py", "/static/nope.js"):
        status, _, body = get(demo_server.http_url + bad)
        assert status == 404, (bad, status, body)
        assert "routes" not in body or "no such file" in body


def test_dashboards_json(demo_server):
    status, ctype, body = get(demo_server.http_url + "/api/dashboards")
    assert status == 200 and ctype.startswith("application/json")
    titles = {d["title"] for d in json.loads(body)["dashboards"]}
    assert {"Mesh overview", "Service detail", "meshscope self-monitoring"} <= titles
    status, _, body = get(demo_server.http_url + "/api/dashboards/mesh-overview")
    assert status == 200 and json.loads(body)["panels"]
    assert get(demo_server.http_url + "/api/dashboards/Bad.Name")[0] == 400
    assert get(demo_server.http_url + "/api/dashboards/no-such-board")[0] == 404
