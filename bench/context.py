"""Benchmark: how many prompt tokens Ollama re-evaluates per turn, by context strategy.

Replays one 200-turn conversation against the fake Ollama (tests/fake_ollama.py), whose
``prompt_eval_count`` follows Ollama's prompt cache: only the tokens after the longest common
prefix with the previous prompt on that model are evaluated (its tokeniser: every run of word
characters is one token, every other non-space character is one token). Three strategies, all
with ``num_ctx`` 4096:

* everything: send the whole history (Ollama drops the oldest messages silently once full);
* slide: drop the oldest exchange whenever the prompt would not fit (exact token counts);
* ours: the bot's real engine: prefix-stable window, folds with rolling summaries whose
  requests reuse the cached prompt. Run twice: "idle" lets a summary started after a reply
  finish before the next message (a pause between messages); "back-to-back" sends the next
  message the moment the previous answer is complete (a lively channel, no idle time).

The fake's prompt cache keeps the generated answer too, as Ollama's runner does, so a prompt
that repeats the previous answer evaluates only what follows it.

Run by hand: ``.venv/bin/python -m bench.context`` (about a minute). Prints, per strategy,
the tokens re-evaluated per turn (median, p95, total, summary calls included), the summary
calls, the turns dropped from prompts without a summary, and whether a prompt ever went over
the budget (``num_ctx`` minus the room kept for the reply).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from bot.chat_engine import ChatEngine
from bot.context_window import SUMMARY_REQUEST_MARK, is_summary_request, make_budget
from bot.history_store import MemoryHistoryStore
from bot.metrics import Metrics
from bot.ollama import OllamaClient
from bot.settings import Settings
from bot.turn import QuietEvents, UserMessage
from tests.fake_ollama import FakeOllama, Reply, count_prompt_tokens

NUM_CTX = 4096
WORDS = [
    "model",
    "context",
    "token",
    "window",
    "cache",
    "prompt",
    "summary",
    "channel",
    "reply",
    "stream",
    "discord",
    "ollama",
    "python",
    "async",
    "budget",
    "fold",
    "turn",
    "history",
    "server",
    "latency",
    "memory",
    "kernel",
    "vector",
    "matrix",
    "layer",
    "weights",
    "gradient",
    "batch",
    "epoch",
    "dataset",
    "compile",
    "runtime",
    "thread",
    "socket",
    "buffer",
    "queue",
    "lock",
]


def sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)) + "."


@dataclass
class Conversation:
    """A deterministic conversation: user messages and the replies the model gives."""

    turns: int
    seed: int = 7
    user: list[str] = field(default_factory=list)
    replies: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)
        for i in range(self.turns):
            self.user.append(f"Alice: question {i}: " + sentence(rng, rng.randint(15, 90)))
            self.replies.append(f"Answer {i}: " + sentence(rng, rng.randint(40, 180)))


class NullSink(QuietEvents):
    async def feed(self, delta: str) -> None:
        return None

    async def finish(
        self, note: str | None = None, *, stored: bool = False, reasoning: bool = False
    ) -> bool:
        return True


@dataclass
class Result:
    name: str
    evaluated: list[int] = field(default_factory=list)  # per user turn
    summary_calls: int = 0
    summary_evaluated: int = 0
    summary_requested: int = 0  # prompt tokens those calls sent (cached ones included)
    dropped: int = 0  # turns dropped from prompts without a summary
    max_prompt: int = 0
    over_budget: int = 0
    truncated: int = 0

    def line(self, budget: int) -> str:
        values = sorted(self.evaluated)
        p95 = values[min(len(values) - 1, int(0.95 * len(values)))]
        total = sum(values) + self.summary_evaluated
        extra = (
            f" (+{self.summary_calls} summary calls: {self.summary_evaluated:,} tokens "
            f"evaluated of {self.summary_requested:,} sent, included); "
            f"turns dropped without a summary: {self.dropped}"
            if self.name.startswith("ours")
            else ""
        )
        return (
            f"{self.name:<11} median {statistics.median(values):>7,.0f}  p95 {p95:>7,}  "
            f"total {total:>10,}{extra}\n"
            f"{'':<11} max prompt {self.max_prompt:,} tokens; over the {budget:,}-token budget: "
            f"{'YES, ' + str(self.over_budget) + ' turns' if self.over_budget else 'never'}; "
            f"silently truncated by Ollama: {self.truncated} turns"
        )


def scripted_responder(conversation: Conversation, fake: FakeOllama) -> None:
    """Replies come from the conversation script; summary requests get a ~150-word summary."""
    rng = random.Random(99)

    def respond(messages: list[dict[str, Any]]) -> str | Reply | None:
        if is_summary_request(messages):
            return "Summary: " + sentence(rng, 150)
        last = str(messages[-1].get("content", ""))
        index = int(last.split("question ", 1)[1].split(":", 1)[0])
        return conversation.replies[index]

    fake.responder = respond


async def run_plain(name: str, conversation: Conversation, budget: int, slide: bool) -> Result:
    result = Result(name)
    with FakeOllama(context_length=NUM_CTX) as fake:
        scripted_responder(conversation, fake)
        client = OllamaClient(fake.url)
        history: list[dict[str, str]] = []
        for i, text in enumerate(conversation.user):
            history.append({"role": "user", "content": text})
            if slide:
                while count_prompt_tokens(history) > budget and len(history) > 1:
                    del history[:2]  # the oldest exchange
            before = len(fake.prompt_stats)
            answer = ""
            async for chunk in client.chat(
                "llama3.2", history, options={"num_ctx": NUM_CTX}, think=False
            ):
                answer += chunk.content
            history.append({"role": "assistant", "content": answer})
            stats = fake.prompt_stats[before]
            result.evaluated.append(stats.evaluated)
            result.max_prompt = max(result.max_prompt, stats.requested)
            result.over_budget += stats.requested > budget
            result.truncated += stats.truncated
            assert answer == conversation.replies[i]
        await client.close()
    return result


async def run_ours(conversation: Conversation, budget: int, *, back_to_back: bool) -> Result:
    result = Result("ours, back-to-back" if back_to_back else "ours, idle")
    with FakeOllama(context_length=NUM_CTX) as fake:
        scripted_responder(conversation, fake)
        settings = Settings.from_env(
            {"OLLAMA_URL": fake.url, "HISTORY_STORE": "memory://", "CONTEXT_TOKENS": str(NUM_CTX)}
        )
        client = OllamaClient(fake.url)
        metrics = Metrics()
        engine = ChatEngine(
            client, MemoryHistoryStore(), settings, clock=time.monotonic, metrics=metrics
        )
        for text in conversation.user:
            outcome = await engine.respond("bench", UserMessage(text), NullSink())
            assert outcome.status == "ok", outcome
            if not back_to_back:
                # A pause between messages: a summary started after this reply finishes.
                await engine.context.settle_summaries()
        await engine.context.settle_summaries()
        for stats in fake.prompt_stats:
            result.max_prompt = max(result.max_prompt, stats.requested)
            result.truncated += stats.truncated
            if stats.last_message.startswith(SUMMARY_REQUEST_MARK):
                result.summary_calls += 1
                result.summary_evaluated += stats.evaluated
                result.summary_requested += stats.requested
            else:
                result.evaluated.append(stats.evaluated)
                result.over_budget += stats.requested > budget
        result.dropped = int(metrics.turns_dropped._value.get())
        await engine.shutdown(grace=0, stop_note="")
        await client.close()
    return result


async def main(turns: int) -> None:
    conversation = Conversation(turns)
    budget = make_budget(None, cap=NUM_CTX).prompt
    print(
        f"{turns}-turn conversation, num_ctx {NUM_CTX:,}, prompt budget {budget:,} tokens "
        "(the rest is kept for the reply). Tokens re-evaluated per turn:"
    )
    results = [
        await run_plain("everything", conversation, budget, slide=False),
        await run_plain("slide", conversation, budget, slide=True),
        await run_ours(conversation, budget, back_to_back=False),
        await run_ours(conversation, budget, back_to_back=True),
    ]
    for result in results:
        print(result.line(budget))
    slide = sum(results[1].evaluated)
    for ours in results[2:]:
        total = sum(ours.evaluated) + ours.summary_evaluated
        print(
            f"{ours.name}: {total:,} tokens re-evaluated (summary calls included) = "
            f"{total / slide:.3f} of the one-turn sliding window's {slide:,}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=200)
    asyncio.run(main(parser.parse_args().turns))
