"""Keeps the configured model usable: find it, pull it if missing, preload it, and say how it is.

At start-up the bot connects to Discord whatever Ollama's state; this runs beside it:
unreachable -> retry with backoff; model missing -> pull it (``AUTO_PULL``), logging progress;
present -> preload it so the first user does not wait for the load.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from .clock import Clock, Sleep
from .ollama import Ollama, OllamaError, OllamaUnavailable, PullProgress, model_matches
from .user_messages import still_downloading

log = logging.getLogger(__name__)

# Backoff for an unreachable Ollama. The first wait is long enough that the bot is not noisy
# while Ollama itself is still starting next to it.
RETRY_DELAYS = (5.0, 10.0, 20.0, 30.0, 60.0)
PROGRESS_LOG_SECONDS = 5.0


class ModelState(enum.Enum):
    CHECKING = "checking"
    UNREACHABLE = "unreachable"
    MISSING = "missing"
    PULLING = "pulling"
    PULL_FAILED = "pull_failed"
    READY = "ready"


@dataclass
class PullTracker:
    """Turns ``/api/pull`` lines into one overall percentage (a model has several layers)."""

    layers: dict[str, tuple[int, int]] = field(default_factory=dict)
    status: str = ""

    def feed(self, progress: PullProgress) -> None:
        self.status = progress.status
        if progress.digest and progress.total:
            self.layers[progress.digest] = (progress.completed, progress.total)

    @property
    def completed(self) -> int:
        return sum(done for done, _ in self.layers.values())

    @property
    def total(self) -> int:
        return sum(total for _, total in self.layers.values())

    @property
    def percent(self) -> int:
        if self.status == "success":
            return 100
        return int(100 * self.completed / self.total) if self.total else 0

    def describe(self) -> str:
        mb = 1024 * 1024
        if self.total:
            return f"{self.percent}% ({self.completed / mb:,.0f} of {self.total / mb:,.0f} MB)"
        return self.status or "starting"


class ModelManager:
    """Owns the model's readiness. :meth:`run` is the start-up task; :meth:`pull` is shared
    with the ``/pull`` command."""

    def __init__(
        self,
        ollama: Ollama,
        model: str,
        *,
        auto_pull: bool = True,
        keep_alive: str | float | None = None,
        clock: Clock,
        sleep: Sleep = asyncio.sleep,
        retry_delays: Sequence[float] = RETRY_DELAYS,
    ) -> None:
        self.ollama = ollama
        self.model = model
        self.auto_pull = auto_pull
        self.keep_alive = keep_alive
        self.clock = clock
        self.sleep = sleep
        self.retry_delays = tuple(retry_delays)
        self.state = ModelState.CHECKING
        self.detail = ""
        self.pulls: dict[str, PullTracker] = {}

    def busy_message(self) -> str | None:
        """What a mention gets instead of a reply while the model cannot answer yet."""
        tracker = self.pulls.get(self.model)
        if self.state is ModelState.PULLING and tracker is not None:
            return still_downloading(self.model, tracker.percent)
        return None

    def status(self) -> dict[str, object]:
        """For /healthz: Ollama's state is reported, never fatal."""
        status: dict[str, object] = {"model": self.model, "state": self.state.value}
        tracker = self.pulls.get(self.model)
        if self.state is ModelState.PULLING and tracker is not None:
            status["pull_percent"] = tracker.percent
        if self.detail:
            status["detail"] = self.detail
        return status

    async def run(self) -> None:
        """Check, pull and preload, retrying while Ollama is unreachable. Ends once settled."""
        attempt = 0
        while True:
            try:
                await self._check_pull_preload()
                return
            except OllamaError as exc:
                # Unreachable, timed out, or answering with errors (a proxy's 502, a server
                # still starting): none of these settles anything, so ask again later.
                self.state = ModelState.UNREACHABLE
                self.detail = str(exc)
                delay = self.retry_delays[min(attempt, len(self.retry_delays) - 1)]
                attempt += 1
                log.error(
                    "event=ollama_check ok=false url=%s cause=%r retry_in=%.0fs",
                    self.ollama.base_url,
                    exc.reason if isinstance(exc, OllamaUnavailable) else str(exc),
                    delay,
                )
                await self.sleep(delay)

    async def _check_pull_preload(self) -> None:
        self.state = ModelState.CHECKING
        models = await self.ollama.list_models()
        if not any(model_matches(self.model, name) for name in models):
            if not self.auto_pull:
                self.state = ModelState.MISSING
                self.detail = f"not pulled; run: ollama pull {self.model}"
                log.warning(
                    "event=ollama_check ok=false url=%s model=%s cause='model not pulled' "
                    "fix='ollama pull %s' available=%s",
                    self.ollama.base_url,
                    self.model,
                    self.model,
                    ",".join(models) or "-",
                )
                return
            log.info("event=auto_pull model=%s reason='model not pulled'", self.model)
            self.state = ModelState.PULLING
            try:
                await self.pull(self.model)
            except OllamaUnavailable:
                raise
            except OllamaError as exc:
                self.state = ModelState.PULL_FAILED
                self.detail = str(exc)
                return
        self.state = ModelState.READY
        self.detail = ""
        log.info("event=ollama_check ok=true url=%s model=%s", self.ollama.base_url, self.model)
        try:
            await self.ollama.preload(self.model, self.keep_alive)
            log.info("event=preload model=%s ok=true", self.model)
        except OllamaError as exc:  # the model still answers, only the first reply is slower
            log.warning("event=preload model=%s ok=false cause=%r", self.model, str(exc))

    async def pull(
        self,
        model: str,
        on_progress: Callable[[PullTracker], Awaitable[None]] | None = None,
    ) -> PullTracker:
        """Pull ``model``, logging progress at most every few seconds. Raises OllamaError."""
        tracker = PullTracker()
        self.pulls[model] = tracker
        last_log: float | None = None
        try:
            async for progress in self.ollama.pull(model):
                tracker.feed(progress)
                now = self.clock()
                if last_log is None or now - last_log >= PROGRESS_LOG_SECONDS:
                    last_log = now
                    log.info("event=pull_progress model=%s progress=%r", model, tracker.describe())
                if on_progress is not None:
                    await on_progress(tracker)
        except OllamaError as exc:
            log.error("event=pull model=%s ok=false cause=%r", model, str(exc))
            raise
        finally:
            self.pulls.pop(model, None)
        log.info("event=pull model=%s ok=true size_mb=%.0f", model, tracker.total / 1048576)
        if model_matches(self.model, model) and self.state is not ModelState.PULLING:
            self.state = ModelState.READY
            self.detail = ""
        return tracker
