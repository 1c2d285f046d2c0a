"""Fitting a conversation into the model's context: a token budget and a prefix-stable window.

Two obvious approaches fail (docs/ollama-protocol.md#context): sending the whole history lets
Ollama silently drop the oldest messages once ``num_ctx`` is exceeded, and sliding the window one
turn per reply changes the start of the prompt every time, so Ollama's prompt cache never helps and
the whole context is evaluated again for every reply. Here the prompt is::

    system prompt | summary of older turns | recent turns (the window) | new message

and the window only moves in big steps: when it no longer fits, a whole block of the oldest
turns is folded into the summary at once, bringing the window down to about half the budget.
Between folds the prompt's beginning stays byte-identical, turn after turn.

Everything here is pure; the engine does the I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Below this, a budget is too small to hold a conversation at all.
MIN_BUDGET = 256
# Shares of the prompt budget: a fold is prepared once the prompt passes FOLD_MARK, and brings
# it down to FOLD_TARGET. Big blocks make folds rare (each one costs the prompt after the new
# summary, evaluated again); preparing early gives the summary time to be ready.
FOLD_MARK = 0.7
FOLD_TARGET = 0.25


@dataclass
class TokenEstimator:
    """Estimates a model's token counts from characters, calibrated by what Ollama reports.

    Starts pessimistic (3 characters per token; English under BPE is closer to 4) so the budget
    holds before the first calibration. Each message also costs a few template tokens.
    """

    chars_per_token: float = 3.0
    per_message: int = 8
    # Vision models spend a fixed number of tokens on an image (256 for gemma3, about 1,000
    # for qwen2.5vl at 1024 pixels): plan for the larger.
    per_image: int = 1024
    samples: int = 0

    def count_text(self, text: str) -> int:
        return math.ceil(len(text) / self.chars_per_token)

    def count_message(self, message: Mapping[str, Any]) -> int:
        images = len(message.get("images") or ())
        return (
            self.count_text(message.get("content", "")) + self.per_message + self.per_image * images
        )

    def count(self, messages: Sequence[Mapping[str, Any]]) -> int:
        return sum(self.count_message(m) for m in messages)

    def calibrate(self, chars: int, messages: int, observed_tokens: int) -> None:
        """Learn from a prompt part of ``chars`` characters in ``messages`` messages that Ollama
        counted as ``observed_tokens``. Small samples are too noisy to learn from."""
        content_tokens = observed_tokens - messages * self.per_message
        if chars < 400 or content_tokens <= 0:
            return
        # A little under the observed ratio, so estimates err towards more tokens.
        sample = min(8.0, max(1.5, 0.92 * chars / content_tokens))
        self.chars_per_token = (
            sample if self.samples == 0 else 0.7 * self.chars_per_token + 0.3 * sample
        )
        self.samples += 1


@dataclass(frozen=True)
class Budget:
    """The context the bot plans for: ``num_ctx`` (sent to Ollama) minus room for the reply."""

    num_ctx: int
    reply_reserve: int

    @property
    def prompt(self) -> int:
        """Most tokens the prompt may take."""
        return self.num_ctx - self.reply_reserve

    @property
    def target(self) -> int:
        """Where a fold brings the prompt down to: a quarter of the budget (the most recent
        exchanges) leaves room for many turns before the next fold, so folds are rare."""
        return int(self.prompt * FOLD_TARGET)

    @property
    def fold_mark(self) -> int:
        """Past this, a fold is prepared in the background, well before a turn needs it."""
        return int(self.prompt * FOLD_MARK)


def make_budget(
    context_length: int | None, *, cap: int | None, num_predict: int | None = None
) -> Budget:
    """``num_ctx`` = the model's context length, capped by CONTEXT_TOKENS; the reply gets
    ``num_predict`` tokens if that option is set, else a quarter of the window (at most 2048)."""
    limits = [n for n in (context_length, cap) if n]
    num_ctx = max(MIN_BUDGET * 2, min(limits) if limits else 4096)
    if num_predict is not None and 0 < num_predict < num_ctx // 2:
        reserve = num_predict
    else:
        reserve = min(2048, num_ctx // 4)
    return Budget(num_ctx=num_ctx, reply_reserve=reserve)


def tokens_to_fit(fixed: int, turns: Sequence[int], new: int, limit: int) -> int:
    """How many leading turns must go (a multiple of two: user and assistant leave together)
    so that ``fixed + sum(turns[k:]) + new <= limit``. ``len(turns)`` if even that is not
    enough (the caller then refuses the message)."""
    total = fixed + sum(turns) + new
    k = 0
    while total > limit and k < len(turns):
        step = turns[k : k + 2]
        total -= sum(step)
        k += len(step)
    return k


def plan_fold(fixed: int, turns: Sequence[int], new: int, budget: Budget) -> int:
    """Turns to fold before this prompt: 0 when it fits (the prefix stays the same), otherwise
    enough of the oldest turns to bring the prompt down to the budget's target."""
    if fixed + sum(turns) + new <= budget.prompt:
        return 0
    if fixed + new <= budget.target:
        return tokens_to_fit(fixed, turns, new, budget.target)
    # A long message: keep as many recent turns as still fit beside it.
    return tokens_to_fit(fixed, turns, new, budget.prompt)


def plan_fold_ahead(fixed: int, turns: Sequence[int], budget: Budget) -> int:
    """After a reply: how many of the oldest turns to fold now, in the background, so that
    the summary is ready before a turn needs it. 0 while the prompt is under the fold mark."""
    if fixed + sum(turns) <= budget.fold_mark:
        return 0
    return tokens_to_fit(fixed, turns, 0, budget.target)


# The summary request repeats the conversation's prompt (so Ollama's prompt cache holds all of
# it) and ends with one instruction; this is how that instruction begins.
SUMMARY_REQUEST_MARK = "(Note for your memory, not part of the chat.)"


def summary_instruction(
    block: int, last_of_block: str, *, has_summary: bool, max_words: int = 200
) -> dict[str, str]:
    """The last message of a summary request: update the summary with the first ``block``
    messages after it (up to the one that begins with ``last_of_block``). Short on purpose:
    it is the only part of the request Ollama has not already evaluated."""
    snippet = " ".join(last_of_block.split())[:40]
    what = "the summary above and " if has_summary else ""
    return {
        "role": "user",
        "content": (
            f'{SUMMARY_REQUEST_MARK} Summarise {what}the first {block} messages (up to "{snippet}")'
            f" in at most {max_words} words, third person: keep facts, names, numbers, decisions,"
            " open questions. Reply with the summary only."
        ),
    }


def is_summary_request(messages: Sequence[Mapping[str, str]]) -> bool:
    return bool(messages) and messages[-1].get("content", "").startswith(SUMMARY_REQUEST_MARK)


def image_placeholder(filenames: Sequence[str]) -> str:
    """What the model reads in place of images it is not sent (too old, or a model that
    cannot see)."""
    return f"[image{'s' if len(filenames) > 1 else ''} attached, not shown: {', '.join(filenames)}]"


def summary_message(summary: str) -> dict[str, str]:
    """How the summary is placed after the system prompt."""
    return {
        "role": "system",
        "content": f"Summary of the earlier conversation in this channel:\n{summary}",
    }
