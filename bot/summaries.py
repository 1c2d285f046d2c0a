"""Rolling summaries: folding a conversation's oldest turns into its summary, written by the
model, at almost no cost to Ollama.

* **Cheap.** A summary request is the conversation's current prompt, in the same bytes as its
  last chat request (system, summary so far, the window's turns, the latest answer included),
  followed by one short instruction. Ollama's prompt cache already holds all of that, so it
  evaluates only the instruction; ``num_ctx`` and the options are the chat's, so the model is
  not reloaded.
* **Work, not decoration.** A fold is prepared once the prompt passes the fold mark, well
  before a turn needs it, as a low-priority job in the same fair queue as replies: replies go
  first, but a waiting job is served after a few of them, so it never starves and no reply
  cancels it. A turn that needs the fold now waits for the job (or writes the summary itself,
  in its own slot, if the job has not started), for at most :data:`SUMMARY_WAIT` seconds.
* **Nothing is forgotten silently.** A block leaves the prompt only with its summary, unless
  Ollama failed to write one: then it is dropped, the log says why and a metric counts it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from .background import cancel_and_wait
from .clock import Clock, as_ms
from .context_window import Budget, plan_fold_ahead, summary_instruction, tokens_to_fit
from .history_store import ConversationState, HistoryStore, Turn
from .metrics import Metrics
from .ollama import Ollama, OllamaError
from .request_queue import FairQueue
from .settings import Settings

if TYPE_CHECKING:
    from .context_keeper import ContextKeeper

log = logging.getLogger(__name__)

# Starts a background task; None when the engine is shutting down and takes no new work.
Spawn = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[None] | None"]

# The summary may be this many tokens at most (the instruction asks for 200 words).
SUMMARY_TOKENS = 400
# How long a turn that needs a fold waits for its summary before dropping the block instead.
SUMMARY_WAIT = 120.0


@dataclass
class _Job:
    task: asyncio.Task[None] | None = None
    started: bool = False  # it holds a slot and is asking Ollama


@dataclass
class _Window:
    """A conversation's prompt as it stands, and the fold that would bring it to target."""

    state: ConversationState
    model: str
    budget: Budget
    fixed: list[dict[str, str]]
    turns: list[Turn]
    messages: list[dict[str, Any]]  # the turns as the chat requests send them
    fold: int  # how many of the oldest turns a fold takes in (0: none)

    @property
    def block_end(self) -> int:
        return self.turns[self.fold - 1].id


class Summaries:
    """Prepares folds in the background and performs them when a turn needs them."""

    def __init__(
        self,
        context: ContextKeeper,
        ollama: Ollama,
        store: HistoryStore,
        settings: Settings,
        *,
        queue: FairQueue,
        metrics: Metrics | None = None,
        wall_clock: Clock = time.time,
    ) -> None:
        self.context = context
        self.ollama = ollama
        self.store = store
        self.settings = settings
        self.queue = queue
        self.metrics = metrics
        self.wall_clock = wall_clock
        self._jobs: dict[str, _Job] = {}

    # --- the engine's two hooks --------------------------------------------------------------

    async def after_reply(self, conversation: str, spawn: Spawn) -> None:
        """A reply was stored: if the prompt has passed the fold mark, prepare the fold."""
        if conversation in self._jobs:
            return
        window = await self._window(conversation, ahead=True)
        if not window.fold or conversation in self._jobs:
            return
        job = _Job()
        job.task = spawn(self._run_job(conversation, job))
        if job.task is not None:
            self._jobs[conversation] = job

    async def fold_now(self, conversation: str) -> None:
        """A turn's prompt does not fit: fold before it goes on (its summary, or failing that
        the block dropped). Waits for a job that is running; takes over one still queued."""
        job = self._jobs.get(conversation)
        if job is not None and job.task is not None and job.started:
            done, _ = await asyncio.wait({job.task}, timeout=SUMMARY_WAIT)
            if not done:
                await self._drop_block(conversation, "the summary took too long")
            return
        if job is not None and job.task is not None:
            # Not started: this turn writes the summary in its own slot.
            await cancel_and_wait(job.task)
        try:
            await asyncio.wait_for(self._fold(conversation), SUMMARY_WAIT)
        except TimeoutError:
            await self._drop_block(conversation, "the summary took too long")

    async def settle(self) -> None:
        """Wait for the summary jobs under way (tests, benchmarks)."""
        while tasks := [job.task for job in self._jobs.values() if job.task is not None]:
            await asyncio.gather(*tasks, return_exceptions=True)

    # --- a job ---------------------------------------------------------------------------------

    async def _run_job(self, conversation: str, job: _Job) -> None:
        ticket = self.queue.enter(conversation, None, background=True)
        try:
            await ticket.wait()
            job.started = True
            # Bounded: a job holds an Ollama slot that replies are waiting for.
            await asyncio.wait_for(self._fold(conversation), SUMMARY_WAIT)
        except TimeoutError:
            self._count("timed_out")
            log.warning("event=summary conversation=%s outcome=timed_out", conversation)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("event=summary conversation=%s outcome=crashed", conversation)
        finally:
            ticket.done()
            if self._jobs.get(conversation) is job:
                del self._jobs[conversation]

    async def _window(self, conversation: str, *, ahead: bool = False) -> _Window:
        """The prompt as it stands and the fold it needs: ``ahead``, only once past the fold
        mark (a job prepared early); otherwise whatever brings it down to the target."""
        state = await self.store.get_state(conversation)
        model, system_prompt = self.settings.resolve(state.model, state.system_prompt)
        info = await self.context.model_info(model)
        budget = await self.context.budget(model)
        estimator = self.context.estimator(model)
        fixed = self.context.fixed_messages(system_prompt, state.summary)
        turns = await self.store.load(conversation, after=state.window_start)
        # The same messages as the chat requests (images included): same bytes, same cache.
        messages = self.context.turn_messages(turns, info)
        fixed_tokens = estimator.count(fixed)
        turn_tokens = [estimator.count_message(m) for m in messages]
        if ahead:
            fold = plan_fold_ahead(fixed_tokens, turn_tokens, budget)
        else:
            fold = tokens_to_fit(fixed_tokens, turn_tokens, 0, budget.target)
        return _Window(state, model, budget, fixed, turns, messages, fold)

    async def _fold(self, conversation: str) -> None:
        """Fold the oldest block of the window into the summary, down to the budget's target."""
        window = await self._window(conversation)
        if not window.fold:
            return
        # The summary's room comes out of what is kept for replies, so the whole request fits.
        most = min(SUMMARY_TOKENS, window.budget.reply_reserve)
        instruction = summary_instruction(
            window.fold,
            window.turns[window.fold - 1].content,
            has_summary=bool(window.state.summary),
            max_words=min(200, most * 3 // 5),
        )
        request = [*window.fixed, *window.messages, instruction]
        estimator = self.context.estimator(window.model)
        if estimator.count(request) + most > window.budget.num_ctx:
            # No room for the whole prompt and the summary: send only the block (Ollama would
            # otherwise cut the prompt's beginning, silently). It costs a fresh evaluation.
            request = [*window.fixed, *window.messages[: window.fold], instruction]
        try:
            summary, stats = await self._write(
                conversation, window.model, request, window.budget.num_ctx, most
            )
        except OllamaError as exc:
            self._count("failed")
            await self._drop_block(conversation, f"Ollama failed to write it: {exc}", window)
            return
        await self._apply(conversation, window, summary, stats)

    async def _write(
        self, conversation: str, model: str, request: list[dict[str, Any]], num_ctx: int, most: int
    ) -> tuple[str, Mapping[str, int]]:
        text, stats = await self.ollama.complete(
            model,
            request,
            # The chat's options and num_ctx: a different num_ctx would reload the model and
            # lose the cache this request is built to reuse.
            options={
                **self.settings.ollama_options,
                "num_ctx": num_ctx,
                "num_predict": most,
            },
            keep_alive=self.settings.ollama_keep_alive,
            # A summary needs no reasoning (the cached prompt is the same either way).
            think=False if (await self.context.model_info(model)).thinking else None,
            route=conversation,  # where the conversation's prompt is cached
        )
        if not text.strip():
            raise OllamaError("the model wrote an empty summary")
        return text.strip(), stats

    async def _apply(
        self, conversation: str, window: _Window, summary: str, stats: Mapping[str, int]
    ) -> None:
        stale = False
        state, block_end = window.state, window.block_end

        def apply(current: ConversationState) -> ConversationState:
            nonlocal stale
            if current.epoch != state.epoch or current.summary_upto != state.summary_upto:
                stale = True  # a reset or another fold happened meanwhile
                return current
            return replace(
                current,
                summary=summary,
                summary_upto=block_end,
                window_start=max(current.window_start, block_end),
                summary_at=self.wall_clock(),
            )

        await self.store.update_state(conversation, apply)
        outcome = "stale" if stale else "summarised"
        self._count(outcome)
        log.info(
            "event=fold conversation=%s outcome=%s turns=%d summary_chars=%d prompt_tokens=%s "
            "prompt_eval_ms=%s",
            conversation,
            outcome,
            window.fold,
            len(summary),
            stats.get("prompt_eval_count", "?"),
            as_ms(stats.get("prompt_eval_duration")),
        )

    async def _drop_block(self, conversation: str, why: str, window: _Window | None = None) -> None:
        """No summary could be had: drop the block anyway, so the turn fits, and say so."""
        window = window or await self._window(conversation)
        if not window.fold:
            return
        epoch, block_end = window.state.epoch, window.block_end

        def drop(current: ConversationState) -> ConversationState:
            if current.epoch != epoch:
                return current
            return replace(current, window_start=max(current.window_start, block_end))

        await self.store.update_state(conversation, drop)
        if self.metrics:
            self.metrics.turns_dropped.inc(window.fold)
        log.warning(
            "event=fold conversation=%s outcome=dropped turns=%d cause=%r",
            conversation,
            window.fold,
            why,
        )

    def _count(self, outcome: str) -> None:
        if self.metrics:
            self.metrics.summaries.labels(outcome=outcome).inc()
