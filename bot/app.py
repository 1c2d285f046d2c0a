"""The composition root: every component apart from the Discord client, built once.

``python -m bot``, ``python -m bot console``, the benchmarks and the tests all start from
:meth:`Services.build`, so they run the same engine over the same store and Ollama client.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .background import Background
from .chat_engine import ChatEngine
from .clock import Clock
from .coordination import Coordination, MemoryCoordination, coordination_for, is_shared
from .health import HealthServer
from .history_store import HistoryStore, MemoryHistoryStore
from .metrics import Metrics
from .model_manager import ModelManager
from .ollama import Ollama
from .ollama_pool import OllamaPool
from .settings import Settings
from .sqlite_store import SqliteHistoryStore

log = logging.getLogger(__name__)

# How long a process's claim on a Discord event is kept (longer than any overlap of two
# processes receiving the same events).
EVENT_CLAIM_TTL = 3600.0


def open_history_store(url: str) -> HistoryStore:
    """Build the store named by ``HISTORY_STORE`` (already validated by Settings)."""
    if url == "memory://":
        return MemoryHistoryStore()
    if url.startswith("sqlite:///"):
        return SqliteHistoryStore(url.removeprefix("sqlite:///"))
    if url.startswith(("redis://", "rediss://")):
        from .redis_store import RedisHistoryStore  # imports redis only for those who use it

        return RedisHistoryStore(url)
    raise ValueError(f"unknown history store {url!r}")


async def check_history_store(settings: Settings) -> None:
    """Open the configured store once and close it: raises StoreError (naming HISTORY_STORE)
    if it cannot be used, so that the bot stops before it does anything else."""
    store = open_history_store(settings.history_store)
    try:
        await store.open()
    finally:
        await store.close()


@dataclass
class Services:
    """The store, the Ollama client, metrics, the model manager, the engine and the health
    server, wired together. ``gateway_up`` is filled in by the Discord client (the console
    has no gateway)."""

    settings: Settings
    clock: Clock
    store: HistoryStore
    ollama: Ollama
    metrics: Metrics
    models: ModelManager
    engine: ChatEngine
    coordination: Coordination = field(default_factory=MemoryCoordination)
    health: HealthServer | None = None
    gateway_up: Callable[[], bool] | None = None
    background: Background = field(default_factory=Background)
    _closed: bool = False

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        clock: Clock = time.monotonic,
        store: HistoryStore | None = None,
        ollama: Ollama | None = None,
    ) -> Services:
        store = store if store is not None else open_history_store(settings.history_store)
        metrics = Metrics()
        # With a Redis store, every process shares it: a conversation's lease, each backend's
        # slots and Discord's REST budget are kept there too. Otherwise this process is alone.
        together = is_shared(settings.history_store)
        coordination = coordination_for(settings.history_store if together else None, clock)
        ollama = ollama or OllamaPool(
            settings.ollama_backends,
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            read_beat=settings.read_beat,
            slots=coordination.slots if together else None,
            clock=clock,
            metrics=metrics,
        )
        models = ModelManager(
            ollama,
            settings.ollama_model,
            auto_pull=settings.auto_pull,
            keep_alive=settings.ollama_keep_alive,
            clock=clock,
        )
        engine = ChatEngine(
            ollama,
            store,
            settings,
            clock=clock,
            metrics=metrics,
            gate=models.busy_message,
            lease=coordination.lease if together else None,
        )
        services = cls(settings, clock, store, ollama, metrics, models, engine, coordination)
        if settings.health_port:
            services.health = HealthServer(
                services.health_status, metrics, settings.health_host, settings.health_port
            )
        return services

    async def start_health(self) -> None:
        """Serve /healthz and /metrics. A taken port is logged with the fix; the bot itself
        still works, so it goes on without them."""
        if self.health is None:
            return
        try:
            await self.health.start()
        except OSError as exc:
            log.error(
                "event=health_failed port=%d cause=%r fix='set HEALTH_PORT to a free port, "
                "or 0 to turn it off'",
                self.settings.health_port,
                str(exc),
            )
            self.health = None
        else:
            # Only with metrics exposed: a timer that never stops would keep SimCord busy.
            self.background.spawn(self.metrics.watch_event_loop())

    async def first_to_see(self, event: str) -> bool:
        """Whether this process handles ``event`` (a Discord message id): with several
        processes on one Redis, exactly one of them does (during a rolling restart the old
        and the new process both receive a shard's events); alone, always. Redis down: this
        process answers (at worst a message gets two answers, never none)."""
        if not is_shared(self.settings.history_store):
            return True
        try:
            return await self.coordination.lease.acquire(
                f"event:{event}", self.engine.leases.process, EVENT_CLAIM_TTL
            )
        except Exception as exc:
            log.warning("event=claim_failed what=%s cause=%r", event, str(exc))
            return True

    async def health_status(self) -> tuple[bool, dict[str, Any]]:
        """Healthy when the gateway is connected and the store answers; Ollama is reported
        but never makes the bot unhealthy (it answers with a clear error meanwhile)."""
        store_ok = True
        try:
            await asyncio.wait_for(self.store.ping(), timeout=2.0)
        except Exception as exc:
            store_ok = False
            log.error("event=health store_ok=false cause=%r", str(exc))
        gateway_ok = self.gateway_up() if self.gateway_up is not None else True
        body: dict[str, Any] = {
            "gateway": "connected" if gateway_ok else "disconnected",
            "store": "ok" if store_ok else "failing",
            "ollama": self.models.status(),
            "shutting_down": self.engine.closing,
        }
        return gateway_ok and store_ok, body

    async def close(self) -> None:
        """Release what was opened (background tasks, health server, Ollama session, store).
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.engine.closing = True  # no new turns, no new background work
        await self.background.close()
        try:
            await self.engine.background.close()
            if self.health is not None:
                await self.health.stop()
        finally:
            # Whatever failed above, the HTTP session and the store (and its thread) go.
            try:
                await self.ollama.close()
            finally:
                try:
                    await self.store.close()
                finally:
                    await self.coordination.close()
