"""Every shipped dashboard is well formed: the shape the UI reads (ui/static/pages/dashboards.js, documented in
dashboards/README.md), every PromQL/LogQL query parses with meshscope's own parsers once its variables are
substituted the way the page does it, and every variable a query uses is declared (and every declared one used)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from meshscope.query.logql import ast as logql_ast
from meshscope.query.logql.parser import parse as logql_parse
from meshscope.query.logql.parser import parse_matchers as logql_matchers
from meshscope.query.promql.parser import parse as promql_parse
from meshscope.query.promql.parser import parse_matchers as promql_matchers
from meshscope.ui.routes import UiRoutes, default_dashboards_dir, load_dashboard

DIR = default_dashboards_dir()
FILES = sorted(DIR.glob("*.json"))
PANEL_TYPES = {"timeseries", "stat", "table", "logs"}
DATASOURCES = {"promql", "logql"}
VAR_TYPES = {"query", "custom", "textbox"}
BUILTINS = {"__interval": "30s", "__rate_interval": "1m", "__range": "1h"}
WINDOWS = {"5m", "15m", "30m", "1h", "3h", "6h", "12h", "24h", "2d", "7d"}
REFRESH = {"off", "10s", "30s", "1m", "5m"}
_VAR = re.compile(r"\$\{(\w+)\}|\$(\w+)")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_VAR_QUERY = re.compile(r"^(label_values|log_label_values|services)\s*\(([\s\S]*)\)$")


def substitute(text: str, values: dict[str, str]) -> str:
    """The page's rule (dashboards.js ``substitute``): built-ins raw, variables escaped for a "..." literal,
    unknown names left as written."""
    def rep(m):
        name = m.group(1) or m.group(2)
        if name in BUILTINS:
            return BUILTINS[name]
        if name in values:
            return values[name].replace("\\", "\\\\").replace('"', '\\"')
        return m.group(0)
    return _VAR.sub(rep, text)


def used_names(text: str) -> set[str]:
    return {m.group(1) or m.group(2) for m in _VAR.finditer(text)} - set(BUILTINS)


def targets(panel: dict) -> list[dict]:
    if "queries" in panel:
        return panel["queries"]
    return [{"query": panel.get("query"), "legend": panel.get("legend")}]


def sample_values(doc: dict) -> list[dict[str, str]]:
    """Values to try: each variable's default (All → its allValue), and a second set of awkward ones."""
    plain, awkward = {}, {}
    for v in doc.get("variables", []):
        d = v.get("default")
        if d == "__all" or (d is None and v.get("includeAll")):
            d = v.get("allValue", ".*")
        plain[v["name"]] = "x" if d is None else str(d)
        awkward[v["name"]] = 'we"ird\\value'  # a valid regex too, for =~ and |~
    return [plain, awkward]


def split_var_query(q: str) -> tuple[str, str, str]:
    m = _VAR_QUERY.match(q.strip())
    assert m, f"variable query {q!r}: use label_values(...), log_label_values(...) or services()"
    fn, arg = m.group(1), m.group(2).strip()
    if fn == "services":
        return fn, "", ""
    selector, _, label = arg.rpartition(",") if "," in arg else ("", "", arg)
    return fn, selector.strip(), label.strip()


@pytest.fixture(params=FILES, ids=[p.stem for p in FILES])
def dashboard(request) -> dict:
    return load_dashboard(request.param)


def test_the_three_shipped_dashboards_are_there():
    titles = {load_dashboard(p)["title"]: p.stem for p in FILES}
    assert titles.get("Mesh overview") == "mesh-overview"
    assert titles.get("Service detail") == "service-detail"
    assert titles.get("meshscope self-monitoring") == "meshscope-self"
    # the list the UI reads has every file (a broken one would be silently left out)
    assert len(UiRoutes(DIR)._list()) == len(FILES)


def test_shape(dashboard):
    d = dashboard
    assert re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", d["id"])
    assert d["title"].strip() and isinstance(d.get("description", ""), str)
    assert d.get("window", "1h") in WINDOWS and d.get("refresh", "off") in REFRESH
    names = [v["name"] for v in d.get("variables", [])]
    assert len(names) == len(set(names)), "duplicate variable names"
    for v in d.get("variables", []):
        assert _NAME.match(v["name"]) and not v["name"].startswith("__"), v
        kind = v.get("type", "query")
        assert kind in VAR_TYPES, v
        if kind == "custom":
            assert isinstance(v.get("values"), list) and v["values"], v
        if kind == "query":
            assert isinstance(v.get("query"), str), v
    assert d["panels"], "a dashboard without panels"
    for p in d["panels"]:
        assert isinstance(p.get("title"), str) and p["title"].strip(), p
        assert p.get("type") in PANEL_TYPES, p
        assert p.get("datasource") in DATASOURCES, p
        assert ("query" in p) != ("queries" in p), f"{p['title']}: give either query or queries"
        assert all(isinstance(t.get("query"), str) and t["query"].strip() for t in targets(p)), p["title"]
        assert 1 <= int(p.get("span", 6)) <= 12, p["title"]
        assert isinstance(p.get("unit", ""), str)
        if p["type"] == "logs":
            assert p["datasource"] == "logql" and len(targets(p)) == 1, p["title"]
            assert 1 <= int(p.get("limit", 100)) <= 1000
        if "thresholds" in p:
            warn, bad = p["thresholds"]
            assert p["type"] == "stat" and warn <= bad, p["title"]


def test_variables_declared_and_used(dashboard):
    declared = [v["name"] for v in dashboard.get("variables", [])]
    used: set[str] = set()
    for i, v in enumerate(dashboard.get("variables", [])):
        names = used_names(v.get("query", ""))
        # a variable's query may use only the variables before it (they are resolved in order)
        assert names <= set(declared[:i]), f"variable {v['name']} uses {names - set(declared[:i])}"
        used |= names
    for p in dashboard["panels"]:
        for t in targets(p):
            names = used_names(t["query"])
            assert names <= set(declared), f"{p['title']}: undeclared variable(s) {sorted(names - set(declared))}"
            used |= names
    assert set(declared) <= used, f"declared but never used: {sorted(set(declared) - used)}"


def test_variable_queries_parse(dashboard):
    values = sample_values(dashboard)[0]
    for v in dashboard.get("variables", []):
        if v.get("type", "query") != "query":
            continue
        fn, selector, label = split_var_query(substitute(v["query"], values))
        if fn == "services":
            continue
        assert _NAME.match(label), f"{v['name']}: {label!r} is not a label name"
        if selector and fn == "label_values":
            promql_matchers(selector)
        elif selector:
            logql_matchers(selector)


def test_panel_queries_parse(dashboard):
    for values in sample_values(dashboard):
        for p in dashboard["panels"]:
            for t in targets(p):
                q = substitute(t["query"], values)
                try:
                    if p["datasource"] == "promql":
                        promql_parse(q)
                        continue
                    expr = logql_parse(q)
                except Exception as e:  # noqa: BLE001 - name the panel and the query that failed
                    raise AssertionError(f"{dashboard['id']} / {p['title']}: {q!r}: {e}") from e
                if p["type"] == "logs":
                    assert logql_ast.is_log(expr), f"{p['title']}: a logs panel needs a log query, not {q!r}"
                else:
                    assert not logql_ast.is_log(expr), f"{p['title']}: {p['type']} needs a metric query, not {q!r}"


@pytest.mark.parametrize("value", ['plain', 'with "quotes"', "back\\slash\\", '"}) or vector(1) # ', "ünï ©ode"])
def test_substituted_values_stay_inside_their_string(value):
    # The page escapes a variable's value for a double-quoted literal: whatever it holds, it is one matcher value.
    vs = promql_matchers(substitute('up{service="$v"}', {"v": value}))
    assert [m.value for m in vs.matchers if m.name == "service"] == [value]
    ms = logql_matchers(substitute('{service_name="${v}"}', {"v": value}))
    assert [m.value for m in ms] == [value]


def test_files_are_plain_json_objects():
    for path in FILES:
        doc = json.loads(Path(path).read_text())
        assert "id" not in doc, f"{path.name}: the id is the file name, not a field"
