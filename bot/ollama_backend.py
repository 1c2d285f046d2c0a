"""One Ollama server of the pool: its client, its capacity, and what the pool knows of it
(up or down, which models it has and has loaded, how busy it is)."""

from __future__ import annotations

import logging

from .clock import Clock
from .metrics import Metrics
from .ollama import OllamaClient, OllamaError, model_matches

log = logging.getLogger(__name__)


class Backend:
    """A backend's state, kept by :class:`bot.ollama_pool.OllamaPool`."""

    def __init__(self, client: OllamaClient, capacity: int, *, metrics: Metrics | None) -> None:
        self.client = client
        self.capacity = max(1, capacity)
        self.metrics = metrics
        self.up = True
        self.cause = ""  # why it is down
        self.in_flight = 0  # this process's requests on it
        self.models: frozenset[str] | None = None  # None: not known (yet)
        self.loaded: frozenset[str] = frozenset()
        self._refreshed_at: float | None = None
        self._gauge("up", 1)

    @property
    def url(self) -> str:
        return self.client.base_url

    @property
    def slot_name(self) -> str:
        """Its slots' name, the same in every process."""
        return f"backend:{self.url}"

    def has(self, model: str) -> bool | None:
        """Whether it has ``model`` pulled (None: not known)."""
        if self.models is None:
            return None
        return any(model_matches(model, name) for name in self.models)

    def has_loaded(self, model: str) -> bool:
        return any(model_matches(model, name) for name in self.loaded)

    def forget_models(self) -> None:
        self.models = None
        self._refreshed_at = None

    async def refresh(self, clock: Clock, every: float) -> None:
        """Ask for its models (``/api/tags``) and loaded models (``/api/ps``) at most every
        ``every`` seconds; a failure keeps what was known (the request itself will tell)."""
        now = clock()
        if self._refreshed_at is not None and now - self._refreshed_at < every:
            return
        self._refreshed_at = now
        try:
            self.models = frozenset(await self.client.list_models())
            self.loaded = frozenset(await self.client.loaded_models())
        except OllamaError as exc:
            log.info("event=backend_refresh backend=%s ok=false cause=%r", self.url, str(exc))

    def started(self) -> None:
        self.in_flight += 1
        self._gauge("in_flight", self.in_flight)
        if self.metrics:
            self.metrics.backend_requests.labels(backend=self.url).inc()

    def finished(self) -> None:
        self.in_flight -= 1
        self._gauge("in_flight", self.in_flight)

    def down(self, cause: str) -> None:
        self.up = False
        self.cause = cause
        self._gauge("up", 0)
        if self.metrics:
            self.metrics.backend_failures.labels(backend=self.url).inc()
        log.warning("event=backend_down backend=%s cause=%r", self.url, cause)

    def back_up(self) -> None:
        self.up = True
        self.cause = ""
        self.forget_models()
        self._gauge("up", 1)
        log.info("event=backend_up backend=%s", self.url)

    def describe(self) -> str:
        state = "up" if self.up else f"down ({self.cause})"
        models = "?" if self.models is None else str(len(self.models))
        return f"{self.url}: {state}, {self.in_flight}/{self.capacity} busy here, {models} models"

    def _gauge(self, which: str, value: float) -> None:
        if self.metrics:
            gauge = self.metrics.backend_up if which == "up" else self.metrics.backend_in_flight
            gauge.labels(backend=self.url).set(value)
