"""The query HTTP server (default port 3100).

For now: ``/ready`` (Loki's readiness probe: 200 with ``ready`` once the store is open and
the schema applied) and ``/metrics`` (meshscope's own health in Prometheus text). The
Loki, Jaeger, Prometheus and graph APIs mount here as they are built.
"""

from __future__ import annotations

from aiohttp import web

from meshscope.selfmetrics import SelfMetrics


class QueryApi:
    def __init__(self, metrics: SelfMetrics) -> None:
        self.metrics = metrics
        self.ready = False
        self.extra_routes: list[web.RouteDef] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes([web.get("/ready", self._ready), web.get("/metrics", self._metrics)])
        app.add_routes(self.extra_routes)
        return app

    async def _ready(self, request: web.Request) -> web.Response:
        if self.ready:
            return web.Response(text="ready\n")
        return web.Response(text="Ingester not ready: store is starting\n", status=503)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), headers={"Content-Type": self.metrics.content_type})
