"""The chat engine: Ollama's simple-chat loop, one turn at a time per conversation.

A turn waits for its place in the fair queue, then runs as plan -> stream -> commit:

* plan: the conversation's settings and history, fitted into the model's context;
* stream: ``/api/chat`` into the reply sink as the tokens come;
* commit: the finished exchange into the store, unless the conversation was reset meanwhile.

Whatever happens, a turn leaves through one place, :class:`bot.turn_end.TurnEnd` (the
engine's ``_end``), which finishes the sink, writes the history, counts the outcome and logs
it. The engine knows nothing about Discord: the Discord layer and the console both drive it
through a :class:`ReplySink`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from .answer_stream import AnswerStream
from .clock import Clock
from .context_keeper import ContextKeeper, Prepared
from .history_store import ConversationState, HistoryStore, Turn
from .metrics import Metrics
from .ollama import OllamaClient, OllamaError
from .request_queue import FairQueue, Ticket
from .settings import Settings
from .turn import (
    Refusal,
    ReplyOutcome,
    ReplySink,
    ReplyUndeliverable,
    RunningTurn,
    UserMessage,
)
from .turn_end import TurnEnd
from .user_messages import STOPPED_NOTE, TOO_LONG

log = logging.getLogger(__name__)

# After the grace period, how long interrupted replies get to write their closing note.
NOTE_SECONDS = 1.5


class ChatEngine:
    """Runs turns. Turns of one conversation run one at a time, in arrival order (the fair
    queue grants one slot per conversation); different conversations stream in parallel."""

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
        self._turns: dict[asyncio.Task[Any], RunningTurn] = {}  # waiting or running
        self._running: dict[str, RunningTurn] = {}  # the one running, per conversation
        self.context = ContextKeeper(ollama, store, settings)
        self._answer = AnswerStream(ollama, settings, clock, metrics)
        self._end = TurnEnd(store, clock, metrics)
        self._spawned: set[asyncio.Task[None]] = set()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
        if self.closing:  # shutting down: background work would outlive the store
            coro.close()
            return None
        task = asyncio.create_task(coro)
        self._spawned.add(task)
        task.add_done_callback(self._spawned.discard)
        return task

    async def conversation_settings(self, conversation: str) -> tuple[ConversationState, str, str]:
        """The state, the model and the system prompt that apply to ``conversation``."""
        state = await self.store.get_state(conversation)
        return state, *self.settings.resolve(state.model, state.system_prompt)

    # --- a turn ------------------------------------------------------------------------------

    async def respond(
        self,
        conversation: str,
        message: UserMessage,
        sink: ReplySink,
        *,
        user_id: int | None = None,
        ref: int | None = None,
        regenerate: bool = False,
        log_fields: str = "",
    ) -> ReplyOutcome:
        """Answer ``message`` in ``conversation``, streaming into ``sink``. With
        ``regenerate``, answer the conversation's latest question (``ref``) again instead.

        Every failure ends in exactly one user-visible message through the sink, and the
        history is only changed when the reply completed (or was stopped by its asker).
        """
        turn = RunningTurn(
            conversation,
            message,
            sink,
            user_id,
            ref,
            regenerate,
            log_fields,
            started=self.clock(),
            model=self.settings.ollama_model,
            task=asyncio.current_task(),
        )
        refusal = _input_refusal(message, self.settings.max_input_chars, self.gate)
        if refusal is not None:
            return await self._end.end(turn, "refused", refusal=refusal)
        if turn.task is not None:
            self._turns[turn.task] = turn
        ticket = self.queue.enter(conversation, user_id, sink.queued)
        try:
            await self._wait_for_turn(turn, ticket)
            await sink.started()
            return await self._run(turn, ticket)
        finally:
            ticket.done()
            if turn.task is not None:
                self._turns.pop(turn.task, None)

    async def _wait_for_turn(self, turn: RunningTurn, ticket: Ticket) -> None:
        if self.metrics:
            self.metrics.requests_waiting.inc()
        try:
            await ticket.wait()
        except asyncio.CancelledError:
            # Stopped while waiting for its turn (reset or shutdown): still say so.
            if not turn.ended:
                await self._end.end(turn, "stopped")
            raise
        finally:
            if self.metrics:
                self.metrics.requests_waiting.dec()

    async def _run(self, turn: RunningTurn, ticket: Ticket) -> ReplyOutcome:
        """plan -> stream -> commit, with its Ollama slot held until the stream ends."""
        self._running[turn.conversation] = turn
        if self.metrics:
            self.metrics.requests_in_flight.inc()
        self.context.reply_started()
        outcome: ReplyOutcome | None = None
        try:
            prepared = await self._plan(turn)
            if isinstance(prepared, Refusal):
                return await self._end.end(turn, "refused", refusal=prepared)
            try:
                await self._answer.stream(turn, prepared)
            except OllamaError as error:
                ticket.release_slot()
                status = "cut_off" if turn.text.strip() else "error"
                return await self._end.end(turn, status, error=error)
            except ReplyUndeliverable as gone:
                # Nobody can see this reply (a deleted channel, a missing permission): stop
                # Ollama (the stream was closed on the way out) and free the slot at once.
                ticket.release_slot()
                turn.undeliverable = str(gone)
                return await self._end.end(turn, "undeliverable")
            # Ollama is done with this reply: let the next one start while Discord catches up.
            ticket.release_slot()
            if turn.keep_partial:
                outcome = await self._end.end(turn, "stopped")
            elif not turn.text.strip():
                outcome = await self._end.end(turn, "empty")
            else:
                status = "length" if turn.done_reason == "length" else "ok"
                outcome = await self._end.end(turn, status)
                self.context.observe(prepared, turn.stats)
            return outcome
        except asyncio.CancelledError:
            # Reset or shutdown: the turn ends here, with its note, and stores nothing (unless
            # it was already ending: a turn ends once).
            ticket.release_slot()
            if not turn.ended:
                await self._end.end(turn, "stopped")
            raise
        finally:
            if self.metrics:
                self.metrics.requests_in_flight.dec()
            if self._running.get(turn.conversation) is turn:
                del self._running[turn.conversation]
            stored = outcome is not None and outcome.stored
            # Summaries run when no reply is waiting for Ollama.
            self.context.reply_ended(turn.conversation if stored else None, self._spawn)

    async def _plan(self, turn: RunningTurn) -> Prepared | Refusal:
        state, turn.model, system_prompt = await self.conversation_settings(turn.conversation)
        turn.epoch = state.epoch
        turns = await self.store.load(turn.conversation, after=state.window_start)
        turn.user_turn = Turn("user", turn.message.prompt_text(), ref=turn.ref)
        if turn.regenerate:
            # Only the latest exchange can be answered again: it is replaced on success.
            last = turns[-2:]
            if not (
                len(last) == 2
                and last[0].role == "user"
                and last[0].ref == turn.ref
                and last[1].role == "assistant"
            ):
                return Refusal("not_latest", None)  # the earlier answer stays as it is
            turn.replacing = [t.id for t in last]
            turn.user_turn = Turn("user", last[0].content, ref=turn.ref)
            turns = turns[:-2]
        prepared = await self.context.prepare(
            turn.conversation, state, turn.model, system_prompt, turns, turn.user_turn
        )
        if prepared.refusal is not None:
            return Refusal("context", prepared.refusal)
        return prepared

    # --- controls ----------------------------------------------------------------------------

    async def reset(self, conversation: str, *, stop_note: str) -> bool:
        """Forget the conversation and stop its running reply, if any. True if one stopped.

        The store starts a new epoch, so a reply that started before the reset (in any
        process) no longer stores its exchange. The reply to stop is the one running now,
        taken before anything is awaited: a question asked after the reset is not touched."""
        turn = self._running.get(conversation)
        stopped = False
        if turn is not None and turn.task is not None and not turn.task.done():
            turn.stop_note = stop_note
            turn.task.cancel()
            stopped = True
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
        turn = self._running.get(conversation)
        if turn is None or turn.ref != ref or not turn.streaming or turn.task is None:
            return False
        turn.stop_note = STOPPED_NOTE
        turn.keep_partial = True
        turn.task.cancel()
        return True

    async def shutdown(self, *, grace: float, stop_note: str) -> None:
        """Take no new turns; let replies in flight finish for up to ``grace`` seconds, then
        stop the rest with ``stop_note`` (their history is left as it was before them)."""
        self.closing = True
        await self.stop_background()
        pending = {task for task in self._turns if not task.done()}
        if pending:
            await _stop_replies(self._turns, pending, grace, stop_note)
        # Replies that finished during the grace period may have started summaries.
        await self.stop_background()

    async def stop_background(self) -> None:
        """Cancel background work (summaries): it can run again after a restart, and none
        may outlive the store."""
        for task in list(self._spawned):
            task.cancel()
        await asyncio.gather(*self._spawned, return_exceptions=True)


def _input_refusal(
    message: UserMessage, limit: int, gate: Callable[[], str | None] | None
) -> Refusal | None:
    """Why a message cannot be answered at all: too long (what the person typed counts, not
    the "Name: " the bot puts in front of it), or the model cannot answer yet."""
    if len(message.text) > limit:
        return Refusal("too_long", TOO_LONG.format(length=len(message.text), limit=limit))
    if gate is not None and (busy := gate()) is not None:
        return Refusal("model_busy", busy)
    return None


async def _stop_replies(
    turns: dict[asyncio.Task[Any], RunningTurn],
    pending: set[asyncio.Task[Any]],
    grace: float,
    stop_note: str,
) -> None:
    """Shutdown: wait up to ``grace`` for the replies in flight, then stop the rest with
    ``stop_note``."""
    log.info("event=shutdown_wait replies=%d grace=%.1fs", len(pending), grace)
    _, still_running = await asyncio.wait(pending, timeout=grace)
    for task in still_running:
        turn = turns.get(task)
        if turn is not None:
            turn.stop_note = stop_note
        task.cancel()
    if still_running:
        log.info("event=shutdown_interrupt replies=%d", len(still_running))
        # Each cancelled reply writes its note; give those edits a moment to go out, within
        # Docker's 10 s stop timeout (SHUTDOWN_GRACE defaults to 8 s).
        await asyncio.wait(still_running, timeout=NOTE_SECONDS)
