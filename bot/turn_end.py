"""How a turn ends: the note shown after its text, what is stored, the count and the log line.

Every turn of :class:`bot.chat_engine.ChatEngine` leaves through :meth:`TurnEnd.end`, whatever
happened (an answer, an Ollama failure, a refusal, a Stop, a reset), so that each outcome is
shown, stored, counted and logged in exactly one way.
"""

from __future__ import annotations

import logging

from .clock import Clock, as_ms
from .history_store import HistoryStore, StoreError, Turn
from .metrics import Metrics
from .ollama import OllamaError
from .turn import Refusal, ReplyOutcome, RunningTurn
from .user_messages import (
    EMPTY_REPLY,
    INTERRUPTED,
    LENGTH_MARK,
    LENGTH_NOTE,
    STOPPED_MARK,
    STORE_UNAVAILABLE,
    cut_off_note,
    error_message,
)

log = logging.getLogger(__name__)


class TurnEnd:
    """The one exit of a turn."""

    def __init__(self, store: HistoryStore, clock: Clock, metrics: Metrics | None) -> None:
        self.store = store
        self.clock = clock
        self.metrics = metrics

    async def end(
        self,
        turn: RunningTurn,
        status: str,
        *,
        error: OllamaError | None = None,
        refusal: Refusal | None = None,
    ) -> ReplyOutcome:
        """Every turn ends here: finish the sink, keep what should be kept, count, log.

        The final text goes out first (with the Regenerate button if the answer is to be
        kept, in the same update), then the exchange is stored, but only if the reader got it
        all: an answer nobody saw (Discord refused it) is not kept."""
        turn.ended = True
        note, answer = self._closing(turn, status, error, refusal)
        if turn.footnote and status != "refused":
            note = f"{note}\n{turn.footnote}" if note else turn.footnote
        keep = answer is not None and turn.user_turn is not None
        stored = False
        try:
            reasoning = keep and bool(turn.reasoning.strip())
            delivered = await turn.sink.finish(note, stored=keep, reasoning=reasoning)
            if keep and answer is not None:
                if delivered:
                    stored = await self._stored(turn, answer)
                    status = status if turn.store_failure is None else "not_stored"
                else:
                    status = "undeliverable"
        except Exception:
            if status != "stopped":
                raise
            # The turn is being torn down; the log line below says why it ended.
            log.exception("event=stop_note_failed conversation=%s", turn.conversation)
        finally:
            self._count(status, error)
            self._log(turn, status, error, refusal)
        return ReplyOutcome(status, turn.text, error, turn.stats, stored)

    def _closing(
        self, turn: RunningTurn, status: str, error: OllamaError | None, refusal: Refusal | None
    ) -> tuple[str | None, str | None]:
        """The note shown after the text, and the answer to store (None: store nothing)."""
        if status == "ok":
            return None, turn.text
        if status == "length":
            # Cut by num_predict or the context: said so on Discord, and kept in the history
            # marked, so that the model knows on the next turn that its answer was cut.
            return LENGTH_NOTE, f"{turn.text}\n\n{LENGTH_MARK}"
        if status == "refused":
            return (refusal.note if refusal else None), None
        if status == "undeliverable":
            return None, None  # Discord refuses this reply: nothing to show, nothing kept
        if status == "store_error":
            return STORE_UNAVAILABLE, None  # no history to answer from: no answer
        if status == "error" and error is not None:
            return error_message(error, model=turn.model), None
        if status == "cut_off" and error is not None:
            return cut_off_note(error), None
        if status == "empty":
            return EMPTY_REPLY, None
        # stopped: by its asker, what was written stays (in the history too, marked stopped)
        answer = (
            f"{turn.text}\n\n{STOPPED_MARK}" if turn.keep_partial and turn.text.strip() else None
        )
        return turn.stop_note or INTERRUPTED, answer

    async def _stored(self, turn: RunningTurn, answer: str) -> bool:
        """Commit, or note why the store could not take it: the answer was shown and stays
        shown; the conversation goes on without it (logged, counted)."""
        try:
            return await self._commit(turn, answer)
        except StoreError as exc:
            turn.store_failure = str(exc)
            return False

    async def _commit(self, turn: RunningTurn, answer: str) -> bool:
        """Store the exchange, unless the conversation was reset since the turn began."""
        assert turn.user_turn is not None
        exchange = [turn.user_turn, Turn("assistant", answer, reasoning=turn.reasoning.strip())]
        if turn.replacing:
            kept = await self.store.replace(
                turn.conversation, turn.replacing, exchange, epoch=turn.epoch
            )
        else:
            kept = await self.store.append(turn.conversation, exchange, epoch=turn.epoch)
        return kept is not None

    def _count(self, status: str, error: OllamaError | None) -> None:
        if self.metrics:
            self.metrics.replies.labels(outcome=status).inc()
            if error is not None:
                self.metrics.ollama_errors.labels(kind=error.label).inc()

    def _log(
        self, turn: RunningTurn, status: str, error: OllamaError | None, refusal: Refusal | None
    ) -> None:
        ended = self.clock()
        fields = f"event=reply conversation={turn.conversation} outcome={status} model={turn.model}"
        if status in ("ok", "length"):
            if self.metrics:
                self.metrics.reply_duration.observe(ended - turn.started)
            first = turn.first_text_at if turn.first_text_at is not None else ended
            log.info(
                "%s chars=%d ttft=%.3fs duration=%.3fs prompt_tokens=%s prompt_eval_ms=%s "
                "eval_tokens=%s %s",
                fields,
                len(turn.text),
                first - turn.started,
                ended - turn.started,
                turn.stats.get("prompt_eval_count", "?"),
                as_ms(turn.stats.get("prompt_eval_duration")),
                turn.stats.get("eval_count", "?"),
                turn.log_fields,
            )
        elif error is not None:
            log.warning(
                "%s error=%s cause=%r chars=%d %s",
                fields,
                type(error).__name__,
                str(error),
                len(turn.text),
                turn.log_fields,
            )
        elif status == "refused":
            reason = refusal.reason if refusal else "?"
            log.info("%s reason=%s %s", fields, reason, turn.log_fields)
        elif status in ("store_error", "not_stored"):
            log.warning(
                "%s cause=%r chars=%d stored=no %s",
                fields,
                turn.store_failure,
                len(turn.text),
                turn.log_fields,
            )
        elif status == "undeliverable":
            cause = turn.undeliverable or "Discord did not show the whole reply"
            log.warning(
                "%s cause=%r chars=%d stored=no %s", fields, cause, len(turn.text), turn.log_fields
            )
        else:
            note = turn.stop_note or INTERRUPTED
            level = logging.WARNING if status == "empty" else logging.INFO
            log.log(level, "%s note=%r chars=%d %s", fields, note, len(turn.text), turn.log_fields)
