"""Keeps each conversation inside its model's context: budgets, folds and rolling summaries.

The decisions are the pure functions of :mod:`bot.context_window`; this module feeds them
(model context lengths from ``/api/show``, token estimates calibrated by Ollama's
``prompt_eval_count``, the store's turns and summary) and runs the summarisation calls in the
background, so that a user's reply never waits for one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .context_window import (
    Budget,
    TokenEstimator,
    make_budget,
    plan_early_fold,
    plan_fold,
    summary_message,
    summary_request,
)
from .history_store import ConversationState, HistoryStore, Turn
from .ollama import OllamaClient, OllamaError
from .settings import Settings
from .user_messages import TOO_LONG_FOR_CONTEXT

log = logging.getLogger(__name__)

Spawn = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[None]"]

# Room planned for the next user message when deciding to fold early: a tenth of the budget
# (a long message still fits; an unusually long one makes the fold happen then instead).
NEXT_MESSAGE_SHARE = 0.1
# The summarisation call may write this many tokens at most (the instruction asks for 200 words).
SUMMARY_TOKENS = 400


@dataclass
class Prepared:
    """One request's prompt, planned to fit."""

    model: str
    messages: list[dict[str, str]]
    options: dict[str, Any]
    budget: Budget
    estimate: int
    window_turns: int
    refusal: str | None = None


class ContextKeeper:
    """Plans prompts within budget and folds old turns into summaries."""

    def __init__(
        self,
        ollama: OllamaClient,
        store: HistoryStore,
        settings: Settings,
    ) -> None:
        self.ollama = ollama
        self.store = store
        self.settings = settings
        self._context_lengths: dict[str, int | None] = {}
        self.estimators: dict[str, TokenEstimator] = {}
        self._last_prompt: dict[str, list[dict[str, str]]] = {}
        self._summaries: dict[str, asyncio.Task[None]] = {}
        self._wanted: set[str] = set()
        self._replies_running = 0

    def estimator(self, model: str) -> TokenEstimator:
        return self.estimators.setdefault(model, TokenEstimator())

    async def budget(self, model: str) -> Budget:
        """The model's budget; its context length is asked once per model."""
        if model not in self._context_lengths:
            try:
                self._context_lengths[model] = await self.ollama.context_length(model)
            except OllamaError as exc:
                # Not cached: the chat request reports the problem, the next turn asks again.
                log.warning("event=context_length model=%s ok=false cause=%r", model, str(exc))
                return self._make_budget(None)
        return self._make_budget(self._context_lengths[model])

    def _make_budget(self, context_length: int | None) -> Budget:
        options = self.settings.ollama_options
        explicit = options.get("num_ctx")
        cap = self.settings.context_tokens
        if isinstance(explicit, int) and explicit > 0:
            cap = min(cap, explicit) if cap else explicit
        num_predict = options.get("num_predict")
        return make_budget(
            context_length,
            cap=cap,
            num_predict=num_predict if isinstance(num_predict, int) else None,
        )

    def fixed_messages(self, system_prompt: str, summary: str) -> list[dict[str, str]]:
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        if summary:
            messages.append(summary_message(summary))
        return messages

    async def prepare(
        self,
        conversation: str,
        state: ConversationState,
        model: str,
        system_prompt: str,
        turns: Sequence[Turn],
        user_turn: Turn,
    ) -> Prepared:
        """The prompt for this turn. Folds now (dropping a block whose summary follows in the
        background) only if the early fold did not happen in time."""
        budget = await self.budget(model)
        estimator = self.estimator(model)
        fixed = self.fixed_messages(system_prompt, state.summary)
        fixed_tokens = estimator.count(fixed)
        turn_tokens = [estimator.count_message(t.as_message()) for t in turns]
        new_tokens = estimator.count_message(user_turn.as_message())
        options: dict[str, Any] = {**self.settings.ollama_options, "num_ctx": budget.num_ctx}
        if fixed_tokens + new_tokens > budget.prompt:
            return Prepared(
                model,
                [],
                options,
                budget,
                fixed_tokens + new_tokens,
                0,
                refusal=TOO_LONG_FOR_CONTEXT.format(num_ctx=budget.num_ctx),
            )
        drop = plan_fold(fixed_tokens, turn_tokens, new_tokens, budget)
        if drop:
            new_start = turns[drop - 1].id
            log.info(
                "event=fold conversation=%s mode=drop_now turns=%d reason='no room left'",
                conversation,
                drop,
            )
            state = await self.store.update_state(
                conversation, lambda s: replace(s, window_start=max(s.window_start, new_start))
            )
            turns = turns[drop:]
            turn_tokens = turn_tokens[drop:]
            self.want_summary(conversation)
        messages = [*fixed, *(t.as_message() for t in turns), user_turn.as_message()]
        estimate = fixed_tokens + sum(turn_tokens) + new_tokens
        return Prepared(model, messages, options, budget, estimate, len(turns))

    def observe(self, prepared: Prepared, metrics: Mapping[str, int]) -> None:
        """Calibrate the model's estimator from Ollama's ``prompt_eval_count``.

        Servers differ: some count the whole prompt, others only the part evaluated after the
        prompt cache (the tokens after the prefix shared with the previous request). Compare
        both readings with our estimates and learn from the closer one.
        """
        observed = metrics.get("prompt_eval_count")
        model = prepared.model
        previous = self._last_prompt.get(model, [])
        self._last_prompt[model] = prepared.messages
        if not observed:
            return
        shared = 0
        while (
            shared < min(len(previous), len(prepared.messages))
            and previous[shared] == prepared.messages[shared]
        ):
            shared += 1
        estimator = self.estimator(model)
        suffix = prepared.messages[shared:]
        full_estimate = prepared.estimate
        suffix_estimate = estimator.count(suffix)
        part = (
            prepared.messages
            if abs(observed - full_estimate) <= abs(observed - suffix_estimate)
            else suffix
        )
        estimator.calibrate(sum(len(m["content"]) for m in part), len(part), observed)

    # --- background summaries ------------------------------------------------------------

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
                    self._summaries[wanted] = spawn(self._summarize(wanted))
            self._wanted.clear()

    def want_summary(self, conversation: str) -> None:
        self._wanted.add(conversation)

    async def settle_summaries(self) -> None:
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
        model = state.model or self.settings.ollama_model
        system_prompt = (
            state.system_prompt if state.system_prompt is not None else self.settings.system_prompt
        )
        budget = await self.budget(model)
        estimator = self.estimator(model)
        turns = await self.store.load(conversation, after=state.window_start)
        fixed_tokens = estimator.count(self.fixed_messages(system_prompt, state.summary))
        next_message = int(budget.prompt * NEXT_MESSAGE_SHARE)
        early = plan_early_fold(
            fixed_tokens,
            [estimator.count_message(t.as_message()) for t in turns],
            next_message,
            budget,
        )
        upto = max(state.window_start, turns[early - 1].id if early else 0)
        if upto <= state.summary_upto:
            return
        block = await self.store.load_range(conversation, state.summary_upto, upto)
        if not block:
            return
        summary, outcome = state.summary, "dropped"
        try:
            text, _ = await self.ollama.complete(
                model,
                summary_request(state.summary, [t.as_message() for t in block]),
                options={"num_ctx": budget.num_ctx, "num_predict": SUMMARY_TOKENS},
                keep_alive=self.settings.ollama_keep_alive,
            )
            if text.strip():
                summary, outcome = text.strip(), "summarised"
            else:
                log.warning("event=summary conversation=%s cause='empty summary'", conversation)
        except OllamaError as exc:
            # The block is dropped without a summary; the user is not told, the log says why.
            log.warning(
                "event=summary conversation=%s outcome=failed cause=%r fallback=drop_block",
                conversation,
                str(exc),
            )
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

    async def status(
        self, conversation: str, state: ConversationState, system_prompt: str
    ) -> dict[str, Any]:
        model = state.model or self.settings.ollama_model
        budget = await self.budget(model)
        estimator = self.estimator(model)
        turns = await self.store.load(conversation, after=state.window_start)
        used = estimator.count(self.fixed_messages(system_prompt, state.summary)) + sum(
            estimator.count_message(t.as_message()) for t in turns
        )
        return {
            "model": model,
            "turns": len(turns),
            "summary": bool(state.summary),
            "tokens_used": used,
            "budget": budget.prompt,
            "num_ctx": budget.num_ctx,
        }
