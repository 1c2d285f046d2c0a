"""Keeps each conversation inside its model's context: budgets, prompts and their folds.

The decisions are the pure functions of :mod:`bot.context_window`; this module feeds them
(model context lengths from ``/api/show``, token estimates calibrated by Ollama's
``prompt_eval_count``, the store's turns and summary). The summaries themselves are written in
the background by :mod:`bot.summaries`, so that a user's reply never waits for one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .context_window import (
    Budget,
    TokenEstimator,
    image_placeholder,
    make_budget,
    plan_fold,
    summary_message,
)
from .history_store import ConversationState, HistoryStore, Turn
from .metrics import Metrics
from .ollama import ModelInfo, Ollama, OllamaError
from .request_queue import FairQueue
from .settings import Settings
from .summaries import Summaries
from .user_messages import TOO_LONG_FOR_CONTEXT

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """One request's prompt, planned to fit."""

    model: str
    messages: list[dict[str, Any]]
    options: dict[str, Any]
    budget: Budget
    estimate: int
    window_turns: int
    refusal: str | None = None
    needs_fold: bool = False  # it does not fit: fold (with a summary) and plan again
    info: ModelInfo = field(default_factory=ModelInfo)  # what it can do (vision, thinking)
    think: bool | None = None  # the request's ``think`` field (None: not sent)


class ContextKeeper:
    """Plans prompts within budget; folds old turns when they no longer fit."""

    def __init__(
        self,
        ollama: Ollama,
        store: HistoryStore,
        settings: Settings,
        *,
        queue: FairQueue,
        metrics: Metrics | None = None,
    ) -> None:
        self.ollama = ollama
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self._models: dict[str, ModelInfo] = {}
        self.estimators: dict[str, TokenEstimator] = {}
        self._last_prompt: dict[str, list[dict[str, str]]] = {}
        self.summaries = Summaries(self, ollama, store, settings, queue=queue, metrics=metrics)

    async def settle_summaries(self) -> None:
        """Wait for background summaries (tests, benchmarks)."""
        await self.summaries.settle()

    def estimator(self, model: str) -> TokenEstimator:
        return self.estimators.setdefault(model, TokenEstimator())

    async def model_info(self, model: str) -> ModelInfo:
        """What ``/api/show`` says of the model (context length, capabilities), asked once
        per model. A failure is not cached: the chat request reports the problem, and the next
        turn asks again."""
        if model not in self._models:
            try:
                self._models[model] = await self.ollama.show(model)
            except OllamaError as exc:
                log.warning("event=model_info model=%s ok=false cause=%r", model, str(exc))
                return ModelInfo()
        return self._models[model]

    async def budget(self, model: str) -> Budget:
        """The model's budget, from its context length."""
        return self._make_budget((await self.model_info(model)).context_length)

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
        *,
        may_drop: bool = False,
    ) -> Prepared:
        """The prompt for this turn. When it does not fit, ``needs_fold`` asks for a fold (with
        its summary) first; only with ``may_drop`` (after a fold that left too little room)
        are more of the oldest turns dropped without one."""
        info = await self.model_info(model)
        budget = self._make_budget(info.context_length)
        estimator = self.estimator(model)
        fixed = self.fixed_messages(system_prompt, state.summary)
        fixed_tokens = estimator.count(fixed)
        history = self.turn_messages([*turns, user_turn], info)
        turn_tokens = [estimator.count_message(m) for m in history[:-1]]
        new_tokens = estimator.count_message(history[-1])
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
        if drop and not may_drop:
            return Prepared(model, [], options, budget, 0, len(turns), needs_fold=True)
        if drop:
            new_start = turns[drop - 1].id
            log.warning(
                "event=fold conversation=%s outcome=dropped turns=%d cause='no room left "
                "beside the summary and the new message'",
                conversation,
                drop,
            )
            if self.metrics:
                self.metrics.turns_dropped.inc(drop)
            await self.store.update_state(
                conversation, lambda s: replace(s, window_start=max(s.window_start, new_start))
            )
            turns = turns[drop:]
            history = history[drop:]
            turn_tokens = turn_tokens[drop:]
        messages = [*fixed, *history]
        estimate = fixed_tokens + sum(turn_tokens) + new_tokens
        think = self.settings.think_field(info.thinking)
        return Prepared(
            model, messages, options, budget, estimate, len(turns), info=info, think=think
        )

    def turn_messages(self, turns: Sequence[Turn], info: ModelInfo) -> list[dict[str, Any]]:
        """The turns as Ollama messages. Images go to a model that can see them, and only
        those of the most recent IMAGE_HISTORY_TURNS questions (each image costs hundreds of
        tokens); otherwise a short placeholder names them."""
        asked = [i for i, t in enumerate(turns) if t.role == "user"]
        recent = self.settings.image_history_turns
        shown = set(asked[-recent:]) if recent and info.vision else set()
        messages: list[dict[str, Any]] = []
        for i, turn in enumerate(turns):
            message: dict[str, Any] = turn.as_message()
            if turn.images and i in shown:
                message["images"] = [image.base64 for image in turn.images]
            elif turn.images:
                names = [image.filename for image in turn.images]
                message["content"] = f"{turn.content}\n{image_placeholder(names)}"
            messages.append(message)
        return messages

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

    async def status(
        self, conversation: str, state: ConversationState, system_prompt: str
    ) -> dict[str, Any]:
        model, _ = self.settings.resolve(state.model, state.system_prompt)
        info = await self.model_info(model)
        budget = self._make_budget(info.context_length)
        estimator = self.estimator(model)
        turns = await self.store.load(conversation, after=state.window_start)
        used = estimator.count(self.fixed_messages(system_prompt, state.summary)) + estimator.count(
            self.turn_messages(turns, info)
        )
        return {
            "model": model,
            "turns": len(turns),
            "summary": state.summary,
            "vision": info.vision,
            "thinking": info.thinking,
            "summary_at": state.summary_at,
            "tokens_used": used,
            "budget": budget.prompt,
            "num_ctx": budget.num_ctx,
        }
