"""Rolling summaries of a conversation's older turns, written by the model in the background.

When a conversation is about to outgrow its budget, the oldest block of turns is folded into the
summary (see :mod:`bot.context_window`). Summaries run when no reply needs Ollama; a reply that
starts postpones them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .context_window import Budget, plan_early_fold, summary_request
from .history_store import ConversationState, HistoryStore, Turn
from .ollama import OllamaClient, OllamaError
from .settings import Settings

if TYPE_CHECKING:
    from .context_keeper import ContextKeeper

log = logging.getLogger(__name__)

# Starts a background task; None when the engine is shutting down and takes no new work.
Spawn = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[None] | None"]

# Room planned for the next user message when deciding to fold early: a tenth of the budget
# (a long message still fits; an unusually long one makes the fold happen then instead).
NEXT_MESSAGE_SHARE = 0.1
# The summarisation call may write this many tokens at most (the instruction asks for 200 words).
SUMMARY_TOKENS = 400


class Summaries:
    """Folds old turns into each conversation's summary, one background task per conversation."""

    def __init__(
        self, context: ContextKeeper, ollama: OllamaClient, store: HistoryStore, settings: Settings
    ) -> None:
        self.context = context
        self.ollama = ollama
        self.store = store
        self.settings = settings
        self._summaries: dict[str, asyncio.Task[None]] = {}
        self._wanted: set[str] = set()
        self._replies_running = 0

    def reply_started(self) -> None:
        """A reply is starting: Ollama should work on it, not on a summary. Summaries in
        flight are stopped and run again when replies are done."""
        self._replies_running += 1
        for conversation, task in list(self._summaries.items()):
            if not task.done():
                task.cancel()
                self._wanted.add(conversation)

    def reply_ended(self, conversation: str | None, spawn: Spawn) -> None:
        self._replies_running -= 1
        if conversation is not None:
            self._wanted.add(conversation)
        if self._replies_running == 0:
            for wanted in sorted(self._wanted):
                if wanted not in self._summaries:
                    task = spawn(self._summarize(wanted))
                    if task is not None:
                        self._summaries[wanted] = task
            self._wanted.clear()

    def want(self, conversation: str) -> None:
        self._wanted.add(conversation)

    async def settle(self) -> None:
        """Wait for background summaries (tests, shutdown)."""
        while self._summaries:
            await asyncio.gather(*self._summaries.values(), return_exceptions=True)

    async def _summarize(self, conversation: str) -> None:
        try:
            await self._summarize_once(conversation)
        except asyncio.CancelledError:
            log.info("event=summary conversation=%s outcome=postponed", conversation)
        except Exception:
            log.exception("event=summary conversation=%s outcome=crashed", conversation)
        finally:
            self._summaries.pop(conversation, None)

    async def _summarize_once(self, conversation: str) -> None:
        state = await self.store.get_state(conversation)
        model, _ = self.settings.resolve(state.model, state.system_prompt)
        budget = await self.context.budget(model)
        upto = await self._fold_point(conversation, state, model, budget)
        if upto <= state.summary_upto:
            return
        block = await self.store.load_range(conversation, state.summary_upto, upto)
        if not block:
            return
        summary, outcome = await self._summary_of(conversation, model, budget, state, block)
        stale = False

        def apply(current: ConversationState) -> ConversationState:
            nonlocal stale
            if current.epoch != state.epoch or current.summary_upto != state.summary_upto:
                stale = True  # a reset or another fold happened meanwhile
                return current
            return replace(
                current,
                summary=summary,
                summary_upto=upto,
                window_start=max(current.window_start, upto),
            )

        await self.store.update_state(conversation, apply)
        if stale:
            log.info("event=summary conversation=%s outcome=stale", conversation)
            return
        log.info(
            "event=fold conversation=%s mode=%s turns=%d summary_chars=%d",
            conversation,
            outcome,
            len(block),
            len(summary),
        )

    async def _fold_point(
        self, conversation: str, state: ConversationState, model: str, budget: Budget
    ) -> int:
        """The last turn id worth folding now: the window's start, or further if a typical
        next message would not fit."""
        _, system_prompt = self.settings.resolve(state.model, state.system_prompt)
        estimator = self.context.estimator(model)
        turns = await self.store.load(conversation, after=state.window_start)
        early = plan_early_fold(
            estimator.count(self.context.fixed_messages(system_prompt, state.summary)),
            [estimator.count_message(t.as_message()) for t in turns],
            int(budget.prompt * NEXT_MESSAGE_SHARE),
            budget,
        )
        return max(state.window_start, turns[early - 1].id if early else 0)

    async def _summary_of(
        self,
        conversation: str,
        model: str,
        budget: Budget,
        state: ConversationState,
        block: Sequence[Turn],
    ) -> tuple[str, str]:
        """The updated summary and how it came about (summarised, or dropped on failure)."""
        try:
            text, _ = await self.ollama.complete(
                model,
                summary_request(state.summary, [t.as_message() for t in block]),
                options={"num_ctx": budget.num_ctx, "num_predict": SUMMARY_TOKENS},
                keep_alive=self.settings.ollama_keep_alive,
            )
        except OllamaError as exc:
            # The block is dropped without a summary; the user is not told, the log says why.
            log.warning(
                "event=summary conversation=%s outcome=failed cause=%r fallback=drop_block",
                conversation,
                str(exc),
            )
            return state.summary, "dropped"
        if not text.strip():
            log.warning("event=summary conversation=%s cause='empty summary'", conversation)
            return state.summary, "dropped"
        return text.strip(), "summarised"
