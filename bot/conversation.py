"""The conversation engine: Ollama's simple-chat loop, one conversation at a time per channel.

load history -> add the user's message -> stream ``/api/chat`` into a sink -> store the exchange.
It knows nothing about Discord: the Discord layer and the console both drive it with a sink.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Protocol

from .context_keeper import ContextKeeper
from .history_store import ConversationState, HistoryStore, Turn
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
from .request_queue import FairQueue, Ticket
from .settings import Settings
from .think_filter import ThinkFilter
from .user_messages import (
    EMPTY_REPLY,
    INTERRUPTED,
    STOPPED_MARK,
    STOPPED_NOTE,
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

    async def finish(self, note: str | None = None, *, stored: bool = False) -> None:
        """The reply is over; ``note`` goes after the text; ``stored``: it is in the history."""
        ...


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
    ref: int | None = None  # the Discord message it answers
    stop_note: str | None = None
    keep_partial: bool = False  # stopped by its asker: store what was written, marked stopped


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
        # Replies wait here for an Ollama slot: round-robin across conversations, in order
        # within each (which is what keeps a conversation's history consistent).
        self.queue = FairQueue(settings.max_concurrent, settings.queue_limit)
        self._replies: dict[asyncio.Task[Any], _ActiveReply] = {}  # waiting or streaming
        self._active: dict[str, _ActiveReply] = {}  # the one streaming, per conversation
        # Bumped by reset(): a reply that started before a reset must not store its exchange.
        self._generation: dict[str, int] = {}
        self._state_locks: dict[str, asyncio.Lock] = {}
        self.context = ContextKeeper(
            ollama,
            store,
            settings,
            update_state=self.update_state,
            generation=lambda conversation: self._generation.get(conversation, 0),
        )
        self._spawned: set[asyncio.Task[None]] = set()

    async def update_state(
        self, conversation: str, change: Callable[[ConversationState], ConversationState]
    ) -> ConversationState:
        """Read, change and write a conversation's state as one step (summaries, folds and
        commands all change it, at any time)."""
        async with self._state_locks.setdefault(conversation, asyncio.Lock()):
            current = await self.store.get_state(conversation)
            state = change(current)
            if state is not current:
                await self.store.set_state(conversation, state)
            return state

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._spawned.add(task)
        task.add_done_callback(self._spawned.discard)
        return task

    async def conversation_settings(self, conversation: str) -> tuple[ConversationState, str, str]:
        """The state, the model and the system prompt that apply to ``conversation``."""
        state = await self.store.get_state(conversation)
        model = state.model or self.settings.ollama_model
        system = (
            state.system_prompt if state.system_prompt is not None else self.settings.system_prompt
        )
        return state, model, system

    async def respond(
        self,
        conversation: str,
        user_text: str,
        sink: ReplySink,
        *,
        user_id: int | None = None,
        ref: int | None = None,
        regenerate: bool = False,
        on_position: Callable[[int], None] | None = None,
        on_start: Callable[[], Awaitable[None]] | None = None,
        on_first_text: Callable[[], Awaitable[None]] | None = None,
        log_fields: str = "",
    ) -> ReplyOutcome:
        """Answer ``user_text`` in ``conversation``, streaming into ``sink``.

        The reply waits for its turn (``on_position`` hears how many replies are ahead while it
        waits; ``on_start`` is called when its turn comes).

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
        reply = _ActiveReply(task, ref)
        if task is not None:
            self._replies[task] = reply
        ticket = self.queue.enter(conversation, user_id, on_position)
        try:
            if self.metrics:
                self.metrics.requests_waiting.inc()
            try:
                await ticket.wait()
            except asyncio.CancelledError:
                # Stopped while waiting for its turn (reset or shutdown): still say so.
                with contextlib.suppress(Exception):
                    await sink.finish(reply.stop_note or INTERRUPTED)
                raise
            finally:
                if self.metrics:
                    self.metrics.requests_waiting.dec()
            if on_start is not None:
                await on_start()
            return await self._respond_locked(
                conversation, user_text, sink, reply, ticket, regenerate, on_first_text, log_fields
            )
        finally:
            ticket.done()
            if task is not None:
                self._replies.pop(task, None)

    def _count(self, outcome: str) -> None:
        if self.metrics:
            self.metrics.replies.labels(outcome=outcome).inc()

    async def _respond_locked(
        self,
        conversation: str,
        user_text: str,
        sink: ReplySink,
        active: _ActiveReply,
        ticket: Ticket,
        regenerate: bool,
        on_first_text: Callable[[], Awaitable[None]] | None,
        log_fields: str,
    ) -> ReplyOutcome:
        settings = self.settings
        metrics = self.metrics
        generation = self._generation.get(conversation, 0)
        self._active[conversation] = active
        if metrics:
            metrics.requests_in_flight.inc()
        self.context.reply_started()
        completed = False
        started = self.clock()
        first_text_at: float | None = None
        text = ""
        stats: Mapping[str, int] = {}
        outcome: ReplyOutcome
        model = settings.ollama_model
        user_turn = Turn("user", user_text, ref=active.ref)
        replacing: list[int] = []
        try:
            state, model, system_prompt = await self.conversation_settings(conversation)
            turns = await self.store.load(conversation, after=state.window_start)
            if regenerate:
                # Only the latest exchange can be answered again: it is replaced on success.
                last = turns[-2:]
                if not (
                    len(last) == 2
                    and last[0].role == "user"
                    and last[0].ref == active.ref
                    and last[1].role == "assistant"
                ):
                    await sink.finish()  # leaves the earlier answer as it is
                    return ReplyOutcome("refused")
                replacing = [t.id for t in last]
                user_turn = Turn("user", last[0].content, ref=active.ref)
                turns = turns[:-2]
            prepared = await self.context.prepare(
                conversation, state, model, system_prompt, turns, user_turn
            )
            if prepared.refusal is not None:
                await sink.finish(prepared.refusal)
                self._count("refused")
                log.info(
                    "event=reply conversation=%s outcome=refused reason=context %s",
                    conversation,
                    log_fields,
                )
                return ReplyOutcome("refused")
            stream = self.ollama.chat(
                model,
                prepared.messages,
                options=prepared.options,
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
                ticket.release_slot()
                if text.strip():
                    await sink.finish(cut_off_note(error))
                    outcome = ReplyOutcome("cut_off", text, error)
                else:
                    await sink.finish(error_message(error, model=model))
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
            # Ollama is done with this reply: let the next one start while Discord catches up.
            ticket.release_slot()
            if not text.strip():
                await sink.finish(EMPTY_REPLY)
                self._count("empty")
                log.warning(
                    "event=reply conversation=%s outcome=empty model=%s %s",
                    conversation,
                    model,
                    log_fields,
                )
                return ReplyOutcome("empty", text, metrics=stats)
            keep = self._generation.get(conversation, 0) == generation
            await sink.finish(stored=keep)
            if keep:
                exchange = [user_turn, Turn("assistant", text)]
                if replacing:
                    await self.store.replace(conversation, replacing, exchange)
                else:
                    await self.store.append(conversation, exchange)
                completed = True
            self.context.observe(prepared, stats)
            outcome = ReplyOutcome("ok", text, metrics=stats)
            ended = self.clock()
            self._count("ok")
            if metrics:
                metrics.reply_duration.observe(ended - started)
            log.info(
                "event=reply conversation=%s outcome=ok model=%s chars=%d ttft=%.3fs "
                "duration=%.3fs prompt_tokens=%s eval_tokens=%s window_turns=%d "
                "estimate=%d budget=%d %s",
                conversation,
                model,
                len(text),
                (first_text_at if first_text_at is not None else ended) - started,
                ended - started,
                stats.get("prompt_eval_count", "?"),
                stats.get("eval_count", "?"),
                prepared.window_turns,
                prepared.estimate,
                prepared.budget.prompt,
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
            ticket.release_slot()
            # Stopped by its asker: what was written stays, in the history too, marked stopped.
            keep = (
                active.keep_partial
                and bool(text.strip())
                and self._generation.get(conversation, 0) == generation
            )
            try:
                await sink.finish(note, stored=keep)
                if keep:
                    exchange = [user_turn, Turn("assistant", f"{text}\n\n{STOPPED_MARK}")]
                    if replacing:
                        await self.store.replace(conversation, replacing, exchange)
                    else:
                        await self.store.append(conversation, exchange)
            except Exception:  # the reply is being torn down; the log line above says why
                log.exception("event=stop_note_failed conversation=%s", conversation)
            if not active.keep_partial:
                raise
            # Our own Stop, fully handled: the task goes on as if never cancelled.
            if (current := asyncio.current_task()) is not None:
                current.uncancel()
            return ReplyOutcome("stopped", text)
        finally:
            if metrics:
                metrics.requests_in_flight.dec()
            if self._active.get(conversation) is active:
                del self._active[conversation]
            # Summaries run when no reply is waiting for Ollama.
            self.context.reply_ended(conversation if completed else None, self._spawn)

    async def reset(self, conversation: str, *, stop_note: str) -> bool:
        """Forget the conversation and stop its streaming reply, if any. True if one stopped."""
        self._generation[conversation] = self._generation.get(conversation, 0) + 1
        active = self._active.get(conversation)
        stopped = False
        if active is not None and active.task is not None and not active.task.done():
            active.stop_note = stop_note
            active.task.cancel()
            stopped = True
        async with self._state_locks.setdefault(conversation, asyncio.Lock()):
            await self.store.clear(conversation)
        log.info("event=reset conversation=%s stopped_reply=%s", conversation, stopped)
        return stopped

    async def latest_question(self, conversation: str) -> int | None:
        """The Discord message id of the question whose answer is the conversation's latest."""
        state = await self.store.get_state(conversation)
        turns = (await self.store.load(conversation, after=state.window_start))[-2:]
        if len(turns) == 2 and turns[0].role == "user" and turns[1].role == "assistant":
            return turns[0].ref
        return None

    def stop(self, conversation: str, ref: int) -> bool:
        """Stop the reply to message ``ref`` (Stop button): it keeps what it wrote, also in
        the history, marked as stopped. False if that reply is not streaming."""
        active = self._active.get(conversation)
        if active is None or active.ref != ref or active.task is None or active.task.done():
            return False
        active.stop_note = STOPPED_NOTE
        active.keep_partial = True
        active.task.cancel()
        return True

    async def shutdown(self, *, grace: float, stop_note: str) -> None:
        """Take no new turns; let replies in flight finish for up to ``grace`` seconds, then
        stop the rest with ``stop_note`` (their history is left as it was before them)."""
        self.closing = True
        for task in list(self._spawned):  # summaries can run again after the restart
            task.cancel()
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
