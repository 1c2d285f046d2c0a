"""The conversation engine: Ollama's simple-chat loop, one conversation at a time per channel.

load history -> add the user's message -> stream ``/api/chat`` into a sink -> store the exchange.
It knows nothing about Discord: the Discord layer and the console both drive it with a sink.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Protocol

from .history_store import HistoryStore, Turn
from .metrics import Metrics
from .ollama import (
    ModelNotFound,
    OllamaBusy,
    OllamaClient,
    OllamaError,
    OllamaRequestError,
    OllamaTimeout,
    OllamaUnavailable,
    StreamInterrupted,
)
from .settings import Settings
from .think_filter import ThinkFilter
from .user_messages import (
    EMPTY_REPLY,
    INTERRUPTED,
    TOO_LONG,
    cut_off_note,
    error_message,
)

log = logging.getLogger(__name__)

Clock = Callable[[], float]

# After the grace period, how long interrupted replies get to write their closing note.
NOTE_SECONDS = 1.5


class ReplySink(Protocol):
    """Where the reply text goes as it streams (Discord messages, or the terminal)."""

    async def feed(self, delta: str) -> None: ...

    async def finish(self, note: str | None = None) -> None: ...


@dataclass
class ReplyOutcome:
    """How one turn ended. ``status``: ok, error, cut_off, empty, refused, stopped."""

    status: str
    text: str = ""
    error: OllamaError | None = None
    metrics: Mapping[str, int] = field(default_factory=dict)


@dataclass
class _ActiveReply:
    task: asyncio.Task[Any] | None
    stop_note: str | None = None


def build_messages(
    system_prompt: str, history: Sequence[Turn], user_turn: Turn
) -> list[dict[str, str]]:
    """The ``messages`` of one ``/api/chat`` request: system prompt, history, new message."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.extend(turn.as_message() for turn in history)
    messages.append(user_turn.as_message())
    return messages


class ChatEngine:
    """Runs turns. Turns of one conversation run one at a time, in arrival order
    (an ``asyncio.Lock`` is FIFO); different conversations stream in parallel."""

    def __init__(
        self,
        ollama: OllamaClient,
        store: HistoryStore,
        settings: Settings,
        *,
        clock: Clock,
        metrics: Metrics | None = None,
        gate: Callable[[], str | None] | None = None,
    ) -> None:
        self.ollama = ollama
        self.store = store
        self.settings = settings
        self.clock = clock
        self.metrics = metrics
        # Says why no reply can be made right now (e.g. the model is still downloading).
        self.gate = gate
        self.closing = False
        self._locks: dict[str, asyncio.Lock] = {}
        self._waiting: dict[str, int] = {}
        self._replies: dict[asyncio.Task[Any], _ActiveReply] = {}  # waiting or streaming
        self._active: dict[str, _ActiveReply] = {}  # the one streaming, per conversation
        # Bumped by reset(): a reply that started before a reset must not store its exchange.
        self._generation: dict[str, int] = {}

    def is_busy(self, conversation: str) -> bool:
        return conversation in self._active

    async def respond(
        self,
        conversation: str,
        user_text: str,
        sink: ReplySink,
        *,
        on_first_text: Callable[[], Awaitable[None]] | None = None,
        log_fields: str = "",
    ) -> ReplyOutcome:
        """Answer ``user_text`` in ``conversation``, streaming into ``sink``.

        Every failure ends in exactly one user-visible message through the sink, and the
        history is only changed when the reply completed.
        """
        refusal = None
        if len(user_text) > self.settings.max_input_chars:
            refusal = TOO_LONG.format(length=len(user_text), limit=self.settings.max_input_chars)
        elif self.gate is not None:
            refusal = self.gate()
        if refusal is not None:
            await sink.finish(refusal)
            self._count("refused")
            log.info(
                "event=reply conversation=%s outcome=refused reason=%r %s",
                conversation,
                refusal,
                log_fields,
            )
            return ReplyOutcome("refused")
        task = asyncio.current_task()
        reply = _ActiveReply(task)
        if task is not None:
            self._replies[task] = reply
        lock = self._locks.setdefault(conversation, asyncio.Lock())
        self._waiting[conversation] = self._waiting.get(conversation, 0) + 1
        try:
            if self.metrics:
                self.metrics.requests_waiting.inc()
            try:
                await lock.acquire()
            except asyncio.CancelledError:
                # Stopped while waiting for an earlier reply (reset or shutdown): still say so.
                with contextlib.suppress(Exception):
                    await sink.finish(reply.stop_note or INTERRUPTED)
                raise
            finally:
                if self.metrics:
                    self.metrics.requests_waiting.dec()
            try:
                return await self._respond_locked(
                    conversation, user_text, sink, reply, on_first_text, log_fields
                )
            finally:
                lock.release()
        finally:
            if task is not None:
                self._replies.pop(task, None)
            self._waiting[conversation] -= 1
            if not self._waiting[conversation]:
                # No one else queued on this conversation: drop its lock so idle channels cost
                # nothing.
                del self._waiting[conversation]
                self._locks.pop(conversation, None)

    def _count(self, outcome: str) -> None:
        if self.metrics:
            self.metrics.replies.labels(outcome=outcome).inc()

    async def _respond_locked(
        self,
        conversation: str,
        user_text: str,
        sink: ReplySink,
        active: _ActiveReply,
        on_first_text: Callable[[], Awaitable[None]] | None,
        log_fields: str,
    ) -> ReplyOutcome:
        settings = self.settings
        metrics = self.metrics
        generation = self._generation.get(conversation, 0)
        self._active[conversation] = active
        if metrics:
            metrics.requests_in_flight.inc()
        started = self.clock()
        first_text_at: float | None = None
        text = ""
        stats: Mapping[str, int] = {}
        outcome: ReplyOutcome
        try:
            history = await self.store.load(conversation, limit=settings.max_history_messages)
            user_turn = Turn("user", user_text)
            messages = build_messages(settings.system_prompt, history, user_turn)
            stream = self.ollama.chat(
                settings.ollama_model,
                messages,
                options=settings.ollama_options,
                keep_alive=settings.ollama_keep_alive,
                # Reasoning is never shown; unless asked for, do not make the model spend on it.
                think=None if settings.ollama_think else False,
            )
            think_filter = ThinkFilter()

            async def show(visible: str) -> None:
                nonlocal text, first_text_at
                # Models often start with a space or newline; Discord would trim it anyway.
                delta = visible if text else visible.lstrip()
                if not delta:
                    return
                if first_text_at is None:
                    first_text_at = self.clock()
                    if metrics:
                        metrics.time_to_first_token.observe(first_text_at - started)
                    if on_first_text is not None:
                        await on_first_text()
                text += delta
                await sink.feed(delta)

            try:
                async with aclosing(stream):
                    async for chunk in stream:
                        if chunk.content:
                            if metrics:
                                metrics.tokens.inc()
                            await show(think_filter.feed(chunk.content))
                        if chunk.done:
                            stats = chunk.metrics
                    await show(think_filter.flush())
            except OllamaError as error:
                if text.strip():
                    await sink.finish(cut_off_note(error))
                    outcome = ReplyOutcome("cut_off", text, error)
                else:
                    await sink.finish(error_message(error, model=settings.ollama_model))
                    outcome = ReplyOutcome("error", text, error)
                self._count(outcome.status)
                if metrics:
                    metrics.ollama_errors.labels(kind=error_kind(error)).inc()
                log.warning(
                    "event=reply conversation=%s outcome=%s model=%s error=%s cause=%r chars=%d %s",
                    conversation,
                    outcome.status,
                    settings.ollama_model,
                    type(error).__name__,
                    str(error),
                    len(text),
                    log_fields,
                )
                return outcome
            if not text.strip():
                await sink.finish(EMPTY_REPLY)
                self._count("empty")
                log.warning(
                    "event=reply conversation=%s outcome=empty model=%s %s",
                    conversation,
                    settings.ollama_model,
                    log_fields,
                )
                return ReplyOutcome("empty", text, metrics=stats)
            await sink.finish()
            if self._generation.get(conversation, 0) == generation:
                await self.store.append(conversation, [user_turn, Turn("assistant", text)])
            outcome = ReplyOutcome("ok", text, metrics=stats)
            ended = self.clock()
            self._count("ok")
            if metrics:
                metrics.reply_duration.observe(ended - started)
            log.info(
                "event=reply conversation=%s outcome=ok model=%s chars=%d ttft=%.3fs "
                "duration=%.3fs prompt_tokens=%s eval_tokens=%s %s",
                conversation,
                settings.ollama_model,
                len(text),
                (first_text_at if first_text_at is not None else ended) - started,
                ended - started,
                stats.get("prompt_eval_count", "?"),
                stats.get("eval_count", "?"),
                log_fields,
            )
            return outcome
        except asyncio.CancelledError:
            note = active.stop_note or INTERRUPTED
            self._count("stopped")
            log.info(
                "event=reply conversation=%s outcome=stopped note=%r chars=%d %s",
                conversation,
                note,
                len(text),
                log_fields,
            )
            try:
                await sink.finish(note)
            except Exception:  # the reply is being torn down; the log line above says why
                log.exception("event=stop_note_failed conversation=%s", conversation)
            raise
        finally:
            if metrics:
                metrics.requests_in_flight.dec()
            if self._active.get(conversation) is active:
                del self._active[conversation]

    async def reset(self, conversation: str, *, stop_note: str) -> bool:
        """Forget the conversation and stop its streaming reply, if any. True if one stopped."""
        self._generation[conversation] = self._generation.get(conversation, 0) + 1
        active = self._active.get(conversation)
        stopped = False
        if active is not None and active.task is not None and not active.task.done():
            active.stop_note = stop_note
            active.task.cancel()
            stopped = True
        await self.store.clear(conversation)
        log.info("event=reset conversation=%s stopped_reply=%s", conversation, stopped)
        return stopped

    async def shutdown(self, *, grace: float, stop_note: str) -> None:
        """Take no new turns; let replies in flight finish for up to ``grace`` seconds, then
        stop the rest with ``stop_note`` (their history is left as it was before them)."""
        self.closing = True
        pending = {task for task in self._replies if not task.done()}
        if not pending:
            return
        log.info("event=shutdown_wait replies=%d grace=%.1fs", len(pending), grace)
        _, still_running = await asyncio.wait(pending, timeout=grace)
        for task in still_running:
            reply = self._replies.get(task)
            if reply is not None:
                reply.stop_note = stop_note
            task.cancel()
        if still_running:
            log.info("event=shutdown_interrupt replies=%d", len(still_running))
            # Each cancelled reply writes its note; give those edits a moment to go out, within
            # Docker's 10 s stop timeout (SHUTDOWN_GRACE defaults to 8 s).
            await asyncio.wait(still_running, timeout=NOTE_SECONDS)


def error_kind(error: OllamaError) -> str:
    """A short label for metrics: unavailable, model_not_found, busy, timeout, http_400, ..."""
    if isinstance(error, StreamInterrupted):
        return f"stream_{error.kind}"
    if isinstance(error, OllamaBusy):
        return "busy"
    if isinstance(error, OllamaRequestError):
        return f"http_{error.status}"
    names = {
        OllamaUnavailable: "unavailable",
        ModelNotFound: "model_not_found",
        OllamaTimeout: "timeout",
    }
    return next((label for cls, label in names.items() if isinstance(error, cls)), "other")
