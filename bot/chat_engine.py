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
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from .answer_stream import AnswerStream
from .background import Background
from .clock import Clock
from .context_keeper import ContextKeeper, Prepared
from .conversation_lease import ConversationLeases
from .coordination import Lease
from .history_store import ConversationState, HistoryStore, StoreError, Turn, latest_exchange
from .metrics import Metrics
from .ollama import Ollama, OllamaError
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
from .user_messages import STOPPED_NOTE, TOO_LONG, no_vision

log = logging.getLogger(__name__)

# After the grace period, how long interrupted replies get to write their closing note.
NOTE_SECONDS = 1.5


class ChatEngine:
    """Runs turns. Turns of one conversation run one at a time, in arrival order (the fair
    queue grants one slot per conversation); different conversations stream in parallel."""

    def __init__(
        self,
        ollama: Ollama,
        store: HistoryStore,
        settings: Settings,
        *,
        clock: Clock,
        metrics: Metrics | None = None,
        gate: Callable[[], str | None] | None = None,
        lease: Lease | None = None,
    ) -> None:
        self.ollama = ollama
        self.leases = ConversationLeases(lease)  # several processes: one turn at a time
        self.store = store
        self.settings = settings
        self.clock = clock
        self.metrics = metrics
        # Says why no reply can be made right now (e.g. the model is still downloading).
        self.gate = gate
        self.closing = False
        # Replies wait here for an Ollama slot: round-robin across conversations, in order
        # within each (which is what keeps a conversation's history consistent).
        self.queue = FairQueue(settings.concurrency, settings.queue_limit)
        self._turns: dict[asyncio.Task[Any], RunningTurn] = {}  # waiting or running
        self._running: dict[str, RunningTurn] = {}  # the one running, per conversation
        self.context = ContextKeeper(ollama, store, settings, queue=self.queue, metrics=metrics)
        self._answer = AnswerStream(ollama, settings, clock, metrics)
        self._end = TurnEnd(store, clock, metrics)
        # Summaries: they can run again after a restart, and none may outlive the store.
        self.background = Background()

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
        """plan -> stream -> commit, owning the conversation (with several processes), its
        Ollama slot held until the stream ends."""
        self._running[turn.conversation] = turn
        if self.metrics:
            self.metrics.requests_in_flight.inc()
        try:
            async with self.leases.owned(turn.conversation):
                return await self._turn(turn, ticket)
        except StoreError as failure:
            # Without its history (or its lease) the conversation cannot go on: say so,
            # change nothing.
            ticket.release_slot()
            if turn.ended:
                raise
            turn.store_failure = str(failure)
            return await self._end.end(turn, "store_error")
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

    async def _turn(self, turn: RunningTurn, ticket: Ticket) -> ReplyOutcome:
        """plan -> stream -> commit."""
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
            return await self._end.end(turn, "stopped")
        if not turn.text.strip():
            return await self._end.end(turn, "empty")
        status = "length" if turn.done_reason == "length" else "ok"
        outcome = await self._end.end(turn, status)
        self.context.observe(prepared, turn.stats)
        if outcome.stored:
            await self._prepare_fold(turn.conversation)
        return outcome

    async def _prepare_fold(self, conversation: str) -> None:
        """After a stored reply, start preparing the next fold if the prompt is getting full
        (the summary is then ready before a turn needs it)."""
        try:
            await self.context.summaries.after_reply(conversation, self.background.spawn)
        except Exception:  # the reply is done; a summary can be prepared next time
            log.exception("event=summary conversation=%s outcome=not_prepared", conversation)

    async def _plan(self, turn: RunningTurn) -> Prepared | Refusal:
        """The turn's prompt. If it does not fit, the oldest turns are folded into the summary
        first (waiting for it), and it is planned again."""
        for may_drop in (False, True):
            state, turn.model, system_prompt = await self.conversation_settings(turn.conversation)
            turn.epoch = state.epoch
            turns = await self._history(turn, state)
            if isinstance(turns, Refusal):
                return turns
            assert turn.user_turn is not None
            prepared = await self.context.prepare(
                turn.conversation,
                state,
                turn.model,
                system_prompt,
                turns,
                turn.user_turn,
                may_drop=may_drop,
            )
            if not prepared.needs_fold:
                if turn.user_turn.images and not prepared.info.vision:
                    turn.footnote = no_vision(turn.model)  # its images never reach Ollama
                break
            await self.context.summaries.fold_now(turn.conversation)
        if prepared.refusal is not None:
            return Refusal("context", prepared.refusal)
        return prepared

    async def _history(self, turn: RunningTurn, state: ConversationState) -> list[Turn] | Refusal:
        """The window's turns before this one (for Regenerate: before the exchange it redoes)."""
        turns = await self.store.load(turn.conversation, after=state.window_start)
        message = turn.message
        turn.user_turn = Turn("user", message.prompt_text(), ref=turn.ref, images=message.images)
        if turn.regenerate:
            # Only the latest exchange can be answered again: it is replaced on success.
            latest = latest_exchange(turns)
            if latest is None or latest[0].ref != turn.ref:
                return Refusal("not_latest", None)  # the earlier answer stays as it is
            turn.replacing = [t.id for t in latest]
            turn.user_turn = replace(latest[0], id=0)
            turns = turns[:-2]
        return turns

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
        await self.background.close()
        pending = {task for task in self._turns if not task.done()}
        if pending:
            await _stop_replies(self._turns, pending, grace, stop_note)


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
