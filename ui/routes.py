"""The web dashboard's routes: one HTML shell for every page, ES modules under ``/static``, dashboards as JSON.

Every page is rendered in the browser from the same JSON endpoints that scripts use (``/api/graph``,
``/loki/api/v1/*``, ``/api/traces``, ``/api/red``, ``/api/v1/query_range``, ``/api/dashboards``), so
the UI never has data a script cannot get. Nothing here needs Node: the assets are plain files shipped
in the package.
"""

from __future__ import annotations

import json
import mimetypes
import re
from pathlib import Path

import orjson
from aiohttp import web

STATIC_DIR = Path(__file__).resolve().parent / "static"
PAGES = ("graph", "logs", "traces", "services", "dashboards")
_DASHBOARD_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def default_dashboards_dir() -> Path:
    from meshscope import dashboards

    return Path(dashboards.__file__).resolve().parent


class DashboardError(ValueError):
    pass


def load_dashboard(path: Path) -> dict:
    """One dashboard definition, checked enough that the UI can trust its shape."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DashboardError(f"{path.name}: {e}") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("title"), str) or not isinstance(doc.get("panels"), list):
        raise DashboardError(f"{path.name}: a dashboard needs a string 'title' and a list 'panels'")
    doc["id"] = path.stem
    return doc


class UiRoutes:
    def __init__(self, dashboards_dir: Path | None = None) -> None:
        self.dashboards_dir = dashboards_dir or default_dashboards_dir()
        self._shell = (STATIC_DIR / "index.html").read_bytes()

    def routes(self) -> list[web.RouteDef]:
        out = [web.get("/", self._root)]
        for page in PAGES:
            out += [web.get(f"/{page}", self._page), web.get(f"/{page}/{{rest:.*}}", self._page)]
        out += [
            web.get("/static/{path:.+}", self._static),
            web.get("/api/dashboards", self._dashboards),
            web.get("/api/dashboards/{id}", self._dashboard),
        ]
        return out

    async def _root(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/graph")

    async def _page(self, request: web.Request) -> web.Response:
        return web.Response(body=self._shell, content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-cache"})

    async def _static(self, request: web.Request) -> web.StreamResponse:
        rel = request.match_info["path"]
        try:
            path = (STATIC_DIR / rel).resolve()
            found = STATIC_DIR in path.parents and path.is_file()
        except (OSError, ValueError):  # a name too long for the file system, a NUL byte: no such file either
            found = False
        if not found:
            return web.Response(status=404, text=f"no such file: /static/{rel}\n", content_type="text/plain")
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if path.suffix == ".js":
            ctype = "text/javascript"
        return web.Response(body=path.read_bytes(), content_type=ctype, headers={"Cache-Control": "no-cache"})

    def _list(self) -> list[dict]:
        out = []
        for path in sorted(self.dashboards_dir.glob("*.json")):
            try:
                out.append(load_dashboard(path))
            except DashboardError:
                continue  # a broken file is reported when opened, and never hides the others
        return out

    async def _dashboards(self, request: web.Request) -> web.Response:
        items = [{"id": d["id"], "title": d["title"], "description": d.get("description", ""),
                  "panels": len(d["panels"])} for d in self._list()]
        return web.Response(body=orjson.dumps({"dashboards": items}), content_type="application/json")

    async def _dashboard(self, request: web.Request) -> web.Response:
        ident = request.match_info["id"]
        if not _DASHBOARD_ID.match(ident):
            return web.Response(status=400, text="dashboard id: lowercase letters, digits, '-' and '_' only\n",
                                content_type="text/plain")
        path = self.dashboards_dir / f"{ident}.json"
        if not path.is_file():
            return web.Response(status=404, text=f"no dashboard named {ident!r}\n", content_type="text/plain")
        try:
            doc = load_dashboard(path)
        except DashboardError as e:
            return web.Response(status=500, text=f"broken dashboard: {e}\n", content_type="text/plain")
        return web.Response(body=orjson.dumps(doc), content_type="application/json")
