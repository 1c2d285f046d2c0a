"""``/healthz`` and ``/metrics`` over HTTP (aiohttp), for Docker's HEALTHCHECK and Prometheus."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .metrics import Metrics

log = logging.getLogger(__name__)

StatusProvider = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]


class HealthServer:
    """Serves the bot's health (200 healthy / 503 not) and its Prometheus metrics."""

    def __init__(self, status: StatusProvider, metrics: Metrics, host: str, port: int) -> None:
        self.status = status
        self.metrics = metrics
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        log.info("event=health_listening host=%s port=%d", self.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, request: web.Request) -> web.Response:
        healthy, body = await self.status()
        body = {"status": "ok" if healthy else "unhealthy", **body}
        return web.Response(
            status=200 if healthy else 503,
            text=json.dumps(body),
            content_type="application/json",
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.metrics.render(), headers={"Content-Type": self.metrics.content_type}
        )
