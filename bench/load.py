"""Benchmark: the real bot (``python -m bot``) under load, many replies streaming at once.

Starts the fake Discord (tests/fake_discord.py, Discord's default rate limits on: 5 message
creates/edits per 5 s per channel, 50 requests per second globally, 429s with a ``Via`` header)
and the fake Ollama (tests/fake_ollama.py, ``--ollama-slots`` generations at a time, each reply
``--tokens`` tokens streamed at ``--token-rate`` tokens per second), then the bot as a
subprocess, as tests/test_e2e.py does, with ``MAX_CONCURRENT=--slots``. It creates
``--channels`` channels and ``--users`` users, and sends ``--mentions`` mentions per channel:
by default all of them at the start (``--burst``), from different users, so the per-channel
queue and the Ollama slots are exercised; with ``--sequential`` the next mention in a channel
waits until the previous reply is complete; with ``--stagger SECONDS`` the mentions that would
go out at once (all of them, or with ``--sequential`` each channel's first) are spread evenly
over SECONDS instead (``--stagger 6`` with 100 mentions: one every 60 ms), so that replies do
not all end together. It waits until every reply is final (complete, or ended with an error) or
``--timeout`` seconds pass, then prints:

* replies completed and lost (complete = the reply's final Discord text is exactly the model's
  output; lost = error replies, wrong text, or never finished);
* wall time (first mention to the last final text; to the timeout if some reply never
  finished) and **answers per second** (completed answers / the time from the first mention to
  the last final text of a completed answer, so that a lost reply does not stretch it to the
  timeout); the lost replies by name (tag, what became of them, channel and process);
* HTTP 429s the fake Discord sent the bot, by scope (and how many the bot itself counted);
* time from a mention to the first visible text (the bot's first message create replying to
  it, as the fake Discord received it), p50 and p95;
* lag of the final text behind Ollama's last token (the create/edit that made the reply's text
  final, minus the moment the fake Ollama wrote that reply's last token line), p50, p95 and max;
* Discord creates + edits per reply (mean, max), and the REST requests made, by method;
* **Discord requests per answer**: every REST request the fake Discord received from the first
  mention on (429s included; start-up requests, made before the first mention, excluded) divided
  by the completed answers;
* the bot's CPU seconds per 1,000 tokens (utime + stime from /proc, first mention to the end,
  all processes together), its peak RSS (VmHWM), and the event-loop lag p99 over the run (from
  the bot's ``ollacord_event_loop_lag_seconds`` histogram: the upper bound of the bucket holding
  p99; with several processes, over their histograms added up); the benchmark's own CPU (the
  fakes run in its threads: near one core, they may be what limits the run);
* per bot process: its shard, the answers it completed (the complete replies in its shard's
  channels) and what its ``ollacord_replies_total`` counted, CPU, peak RSS, event-loop lag p99,
  429s it counted, exit code;
* per Ollama backend: the chat requests it served during the run (the fake's ``chat_requests``:
  requests that got one of its slots);
* with Redis: **Redis calls per streamed answer**, the increase of every command's ``calls`` in
  Redis's ``INFO commandstats`` over the run (the benchmark's own ``INFO`` excluded) divided by
  the completed answers, and the top commands. commandstats also counts the commands a Lua
  script runs (an ``EVALSHA`` that runs ``HMGET`` and ``HSET`` is three calls), so the line
  also gives the script calls per answer: round trips are fewer than the calls;
* the bot's ``ollacord_replies_total`` by outcome, warnings and errors in its log, by event, and
  its exit code.

Several processes and backends (README "Running at scale"):

* ``--processes N``: N bot processes, sharded: ``SHARD_COUNT=N`` and ``SHARD_IDS=i`` for
  process i, the fake Discord with ``shard_count=N``, one guild per shard (guild k on shard k,
  since Discord routes a guild to shard ``(guild_id >> 22) % N``) and the channels spread over
  them round-robin (channel i in guild ``i % N``). Each process gets ``MAX_CONCURRENT=--slots``
  (the setting is per process) and its own health port. N > 1 implies ``--redis``.
* ``--backends M``: M fake Ollamas. The Ollama slots (``--ollama-slots``, default ``--slots``)
  are split evenly between them (the first ones get one more when it does not divide: 5 over 2
  is 3 and 2); each fake gets ``num_parallel`` = its share, and the bot
  ``OLLAMA_URL=url1#S1,url2#S2,...``. With M = 1 the bot gets the bare URL, as before (it then
  counts ``MAX_CONCURRENT`` slots for it).
* ``--redis``: a real redis-server (tests/redis_server.py, append-only file with
  ``appendfsync everysec`` as in docker-compose.scale.yml) and ``HISTORY_STORE=redis://...:PORT/0``
  for every process (instead of a SQLite file): the processes then share the history,
  conversation leases, each backend's slots and Discord's REST budget (a token bucket in Redis,
  bot/discord_scheduler.py ``SHARED_RATE``).
* ``--no-shared-budget`` (implies ``--redis``): the contrast, without touching the bot. Each
  process gets its own Redis *database* (``redis://...:PORT/i`` for process i); every key the
  bot keeps is per database, so each process has its own REST bucket, and thus spends up to
  Discord's 50 requests per second on its own. What else is shared through Redis (backend
  slots, leases, history) is separated as well: harmless for the history (each process only
  sees its own shards' channels), but each process may then put up to ``#S`` generations on a
  backend by itself (the fake Ollama still runs only ``num_parallel`` at once, and queues the
  rest).

Replies are correlated through the mention text: each mention carries a tag
(``bench-c<channel>-m<n>``), the fake Ollama finds it in the request's last message and streams
a reply starting with the same tag, and the bot's Discord reply points at the mention through
``message_reference``; the reply's further messages (overflow) are the bot's messages that
follow it without a reference.

Run by hand (Linux: it reads /proc), e.g.::

    .venv/bin/python -m bench.load --channels 10 --mentions 3 --slots 1 --token-rate 20 --tokens 120
    .venv/bin/python -m bench.load --channels 100 --mentions 1 --slots 100 --ollama-slots 100
    .venv/bin/python -m bench.load --channels 100 --mentions 1 --slots 100 --ollama-slots 100 \\
        --tokens 300 --token-rate 50 --stagger 6
    .venv/bin/python -m bench.load --processes 2 --backends 2 --channels 100 --mentions 1 \\
        --slots 100 --ollama-slots 100 --tokens 300 --token-rate 50 [--no-shared-budget]

``--bot-log PATH`` keeps the bot's log (with several processes, process i's as
``PATH``'s stem + ``.i`` + its suffix: ``bot.log`` -> ``bot.0.log``, ``bot.1.log``).

Nothing here asserts on speed: the figures are read by hand.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.fake_discord import FakeDiscord
from tests.fake_discord import RecordedRequest as DiscordRequest
from tests.fake_ollama import FakeOllama, Reply
from tests.fake_ollama import RecordedRequest as OllamaRequest

if TYPE_CHECKING:
    from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
MODEL = "llama3.2"
TAG_RE = re.compile(r"bench-c\d+-m\d+")
LOOP_LAG = "ollacord_event_loop_lag_seconds"
#: Marks of a reply that ended without the model's text: an error, or a cut-off note.
ERROR_MARKS = ("⚠", "*(")
POLL_SECONDS = 0.1

JSON = dict[str, Any]


# --------------------------------------------------------------------------------------------
# Configuration and records
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    channels: int = 10
    mentions: int = 3
    users: int = 0  # 0: one per mention of a channel
    slots: int = 1
    ollama_slots: int = 0  # 0: same as slots
    token_rate: float = 20.0
    tokens: int = 120
    sequential: bool = False
    timeout: float = 300.0
    edit_interval: float | None = None
    bot_log: Path | None = None
    processes: int = 1
    backends: int = 1
    redis: bool = False  # also on with processes > 1 or without the shared budget
    shared_budget: bool = True  # False: each process its own Redis database
    stagger: float = 0.0  # seconds over which the first mentions are spread (0: all at once)

    @property
    def user_count(self) -> int:
        return self.users or self.mentions

    @property
    def parallel(self) -> int:
        return self.ollama_slots or self.slots

    @property
    def uses_redis(self) -> bool:
        return self.redis or self.processes > 1 or not self.shared_budget

    @property
    def backend_slots(self) -> list[int]:
        """The Ollama slots split evenly over the backends (the first ones get the rest)."""
        base, rest = divmod(self.parallel, self.backends)
        return [base + (i < rest) for i in range(self.backends)]


@dataclass
class Mention:
    tag: str
    channel: int
    user: int
    index: int
    message_id: int = 0
    sent_at: float | None = None

    @property
    def text(self) -> str:
        return f"{self.tag} please answer"


@dataclass
class ReplyResult:
    """What became of one mention."""

    mention: Mention
    status: str  # "complete", "error", "wrong", "unfinished", "missing"
    text: str = ""
    first_visible: float | None = None  # perf_counter of the first create replying to it
    final_at: float | None = None  # perf_counter of the request that made the text final
    last_token_at: float | None = None  # perf_counter of Ollama's last token line
    updates: int = 0  # creates + edits that Discord accepted for the reply's messages

    @property
    def time_to_first_text(self) -> float | None:
        if self.first_visible is None or self.mention.sent_at is None:
            return None
        return self.first_visible - self.mention.sent_at

    @property
    def final_lag(self) -> float | None:
        """Final text behind Ollama's last token (complete replies only)."""
        if self.status != "complete" or self.final_at is None or self.last_token_at is None:
            return None
        return self.final_at - self.last_token_at


@dataclass
class ProcessStats:
    """One bot process over the run."""

    index: int
    shard: int | None  # None: not sharded (one process)
    answers: int  # complete replies in the channels of its shard
    cpu_seconds: float
    peak_rss_kib: int
    loop_lag_p99: float | None
    loop_lag_samples: int
    bot_rate_limited: float
    outcomes: dict[str, float]
    exit_code: int | None

    def line(self) -> str:
        where = "all shards" if self.shard is None else f"shard {self.shard}"
        outcomes = ", ".join(f"{k} {v:g}" for k, v in sorted(self.outcomes.items()))
        return (
            f"process {self.index:<12}{where}: {self.answers} answers completed (its metric: "
            f"{outcomes or 'none'}), CPU {self.cpu_seconds:.2f} s, peak RSS "
            f"{self.peak_rss_kib / 1024:.1f} MiB, loop lag p99 "
            f"{_lag_text(self.loop_lag_p99)}, 429s counted {self.bot_rate_limited:g}, "
            f"exit {self.exit_code}"
        )


@dataclass
class Report:
    config: Config
    replies: list[ReplyResult]
    wall: float
    tokens: int
    rate_limited: dict[str, int]
    bot_rate_limited: float
    cpu_seconds: float
    peak_rss_kib: int
    loop_lag_p99: float | None
    loop_lag_samples: int
    rest_by_method: dict[str, int]
    rest_by_kind: dict[str, int]
    bot_outcomes: dict[str, float]
    log_events: dict[str, int] = field(default_factory=dict)
    exit_code: int | None = None
    timed_out: bool = False
    processes: list[ProcessStats] = field(default_factory=list)
    backend_requests: list[int] = field(default_factory=list)  # chat requests served, per backend
    redis_calls: dict[str, int] | None = None  # commandstats increase by command; None: no Redis
    bench_cpu_seconds: float = 0.0  # this process (the fakes' threads), over the run
    answers_wall: float = 0.0  # first mention to the last final text of a completed answer
    shard_of: dict[int, int] = field(default_factory=dict)  # channel -> shard (process)

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.replies)

    @property
    def completed(self) -> int:
        return self.count("complete")

    @property
    def lost(self) -> int:
        return len(self.replies) - self.completed

    @property
    def answers_per_second(self) -> float:
        """Completed answers over the time from the first mention to the last final text of
        a completed answer (a lost reply does not stretch it to the timeout)."""
        return self.completed / self.answers_wall if self.answers_wall > 0 else float("nan")

    @property
    def discord_requests(self) -> int:
        """REST requests from the first mention on (429s included)."""
        return sum(self.rest_by_method.values())

    def _lost_lines(self, most: int = 10) -> list[str]:
        """The lost replies by name (the first ``most``): tag, what became of it, where."""
        lost = [r for r in self.replies if r.status != "complete"]
        if not lost:
            return []
        shown = ", ".join(
            f"{r.mention.tag} {r.status} (channel {r.mention.channel}"
            + (
                f", process {self.shard_of[r.mention.channel]}"
                if self.config.processes > 1 and r.mention.channel in self.shard_of
                else ""
            )
            + ")"
            for r in lost[:most]
        )
        more = f" and {len(lost) - most} more" if len(lost) > most else ""
        return [f"lost replies        {shown}{more}"]

    def _per_answer(self, total: float) -> str:
        return f"{total / self.completed:.1f}" if self.completed else "n/a"

    def lines(self) -> list[str]:
        c = self.config
        mode = "sequential" if c.sequential else "burst"
        if c.stagger > 0:
            mode += f", first mentions spread over {c.stagger:g} s"
        ttfv = [t for r in self.replies if (t := r.time_to_first_text) is not None]
        lags = [t for r in self.replies if (t := r.final_lag) is not None]
        n = len(self.replies)
        updates = [r.updates for r in self.replies if r.updates]
        cpu_per_k = self.cpu_seconds / self.tokens * 1000 if self.tokens else float("nan")
        outcomes = ", ".join(f"{k} {v:g}" for k, v in sorted(self.bot_outcomes.items()))
        slots = "+".join(str(s) for s in c.backend_slots)
        topology = (
            f"{c.processes} bot process{'es' if c.processes > 1 else ''}"
            + (f" (SHARD_COUNT={c.processes})" if c.processes > 1 else "")
            + f", {c.backends} Ollama backend{'s' if c.backends > 1 else ''}, "
            + (
                "Redis ("
                + ("shared REST budget" if c.shared_budget else "a database per process")
                + ")"
                if c.uses_redis
                else "SQLite"
            )
        )
        rss_text = f"{self.peak_rss_kib / 1024:.1f} MiB (VmHWM)"
        if len(self.processes) > 1:
            largest = max(p.peak_rss_kib for p in self.processes)
            rss_text = (
                f"{self.peak_rss_kib / 1024:.1f} MiB (VmHWM, {len(self.processes)} processes "
                f"added up; largest {largest / 1024:.1f} MiB)"
            )
        lines = [
            f"ollacord load: {c.channels} channels x {c.mentions} mentions ({mode}, "
            f"{c.user_count} users), {c.tokens} tokens per reply at {c.token_rate:g} tokens/s; "
            f"MAX_CONCURRENT={c.slots}"
            + (" per process" if c.processes > 1 else "")
            + f", Ollama slots {c.parallel}"
            + (f" ({slots})" if c.backends > 1 else ""),
            f"topology            {topology}",
            f"replies             {self.completed} completed, {self.lost} lost of "
            f"{len(self.replies)} (error replies {self.count('error')}, wrong text "
            f"{self.count('wrong')}, never finished "
            f"{self.count('unfinished') + self.count('missing')}, of which "
            f"{self.count('missing')} without any message)",
            f"wall time           {self.wall:.1f} s ("
            + ("timed out" if self.timed_out else "first mention to last final text")
            + f"); {self.tokens:,} tokens streamed",
            f"answers per second  {self.answers_per_second:.2f} ({self.completed} completed "
            f"answers / {self.answers_wall:.1f} s from the first mention to the last final text "
            "of a completed answer)",
            *self._lost_lines(),
            "HTTP 429s to the bot "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.rate_limited.items()))
            + f" (total {sum(self.rate_limited.values())}; the bot counted "
            f"{self.bot_rate_limited:g})",
            f"first visible text  {_spread(ttfv, n)} (mention -> first message create)",
            f"final text lag      {_spread(lags, n, with_max=True)} "
            "(Ollama's last token -> final create/edit)",
            "Discord updates     "
            + (
                f"per reply mean {sum(updates) / len(updates):.1f}, max {max(updates)} "
                f"(creates + edits accepted)"
                if updates
                else "none"
            ),
            f"Discord requests    {self._per_answer(self.discord_requests)} per answer "
            f"({self.discord_requests} REST requests from the first mention on, 429s included, "
            f"start-up excluded / {self.completed} completed answers)",
            f"bot CPU             {cpu_per_k:.3f} s per 1,000 tokens "
            f"({self.cpu_seconds:.2f} s over the run"
            + (", all processes" if len(self.processes) > 1 else "")
            + f"); benchmark + fakes {self.bench_cpu_seconds:.2f} s",
            f"bot peak RSS        {rss_text}",
            f"event-loop lag p99  {_lag_text(self.loop_lag_p99)} ({self.loop_lag_samples} "
            "samples during the run)",
            "REST requests       "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.rest_by_method.items()))
            + " ("
            + ", ".join(f"{k} {v}" for k, v in sorted(self.rest_by_kind.items()))
            + ")",
            *(p.line() for p in self.processes),
            "Ollama backends     "
            + ", ".join(
                f"#{i} {served} requests ({slots} slots)"
                for i, (served, slots) in enumerate(
                    zip(self.backend_requests, c.backend_slots, strict=True)
                )
            )
            + " (chat requests served during the run)",
        ]
        if self.redis_calls is None:
            lines.append("Redis calls         n/a (no Redis)")
        else:
            calls = sum(self.redis_calls.values())
            scripts = sum(
                v for k, v in self.redis_calls.items() if k in ("eval", "evalsha", "fcall")
            )
            top = Counter(self.redis_calls).most_common(8)
            lines += [
                f"Redis calls         {self._per_answer(calls)} per streamed answer ({calls} "
                f"calls in INFO commandstats, the commands Lua scripts run included, / "
                f"{self.completed} completed answers); of them script calls (EVAL/EVALSHA) "
                f"{self._per_answer(scripts)} per answer",
                "Redis top commands  " + (", ".join(f"{k} {v}" for k, v in top) or "none"),
            ]
        lines += [
            f"bot replies metric  {outcomes or 'none'}",
            "bot log (WARNING+)  "
            + (", ".join(f"{k} x{v}" for k, v in sorted(self.log_events.items())) or "none"),
            "bot exit code       "
            + (
                ", ".join(str(p.exit_code) for p in self.processes)
                if len(self.processes) > 1
                else str(self.exit_code)
            ),
        ]
        return lines


# --------------------------------------------------------------------------------------------
# Measuring helpers
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1), linear between the closest ranks."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _spread(values: Sequence[float], total: int, *, with_max: bool = False) -> str:
    """p50 and p95 (and the max), noting when only some replies have the figure."""
    if not values:
        return "n/a"
    spread = f"p50 {percentile(values, 0.5):.2f} s  p95 {percentile(values, 0.95):.2f} s"
    if with_max:
        spread += f"  max {max(values):.2f} s"
    return spread if len(values) == total else f"{spread} (over {len(values)} of {total})"


def _lag_text(p99: float | None) -> str:
    if p99 is None:
        return "n/a (no samples)"
    if p99 == float("inf"):
        return "> 1 s (+Inf bucket)"
    return f"<= {p99:g} s"


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds (/proc/<pid>/stat, fields 14 and 15)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)", which may hold spaces
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def peak_rss_kib(pid: int) -> int:
    """VmHWM (peak resident set size) of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


_SAMPLE_RE = re.compile(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)$")


def parse_samples(text: str) -> dict[str, float]:
    """Prometheus text format -> {``name{labels}``: value} (comments skipped)."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE_RE.match(line.strip())
        if match is not None:
            samples[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return samples


def histogram_buckets(samples: dict[str, float], name: str) -> list[tuple[float, float]]:
    """A histogram's cumulative buckets: [(upper bound, count)], +Inf last."""
    prefix = f"{name}_bucket{{"
    buckets = []
    for key, value in samples.items():
        if key.startswith(prefix):
            bound = re.search(r'le="([^"]+)"', key)
            if bound is not None:
                buckets.append((float(bound.group(1)), value))
    return sorted(buckets)


def bucket_quantile(
    before: list[tuple[float, float]], after: list[tuple[float, float]], q: float
) -> tuple[float | None, int]:
    """The upper bound of the bucket holding the q-quantile of the observations made between
    two scrapes, and how many observations that was."""
    earlier = dict(before)
    window = [(bound, count - earlier.get(bound, 0.0)) for bound, count in after]
    total = int(window[-1][1]) if window else 0
    if total <= 0:
        return None, 0
    for bound, count in window:
        if count >= q * total:
            return bound, total
    return float("inf"), total


def added_buckets(histograms: Sequence[list[tuple[float, float]]]) -> list[tuple[float, float]]:
    """Histograms with the same buckets (several processes' scrapes) added up."""
    total: dict[float, float] = {}
    for buckets in histograms:
        for bound, count in buckets:
            total[bound] = total.get(bound, 0.0) + count
    return sorted(total.items())


def counter_delta(before: dict[str, float], after: dict[str, float], name: str) -> float:
    return after.get(name, 0.0) - before.get(name, 0.0)


def labelled_deltas(
    before: dict[str, float], after: dict[str, float], name: str, label: str
) -> dict[str, float]:
    """{label value: increase} for a labelled counter."""
    result: dict[str, float] = {}
    for key, value in after.items():
        found = re.fullmatch(rf'{name}\{{{label}="([^"]*)"\}}', key)
        if found is not None:
            result[found.group(1)] = value - before.get(key, 0.0)
    return result


def normalised(text: str) -> str:
    """Whitespace-insensitive form: a reply split over messages loses the spaces at cuts."""
    return " ".join(text.split())


def reply_tokens(tag: str, count: int) -> list[str]:
    """The model's output for one mention: starts with its tag, so a reply in the wrong place
    is caught as wrong text."""
    return [f"[{tag}]"] + [f" w{i}" for i in range(1, count)]


def make_responder(
    tokens: int, token_rate: float
) -> Callable[[list[dict[str, Any]]], str | Reply | None]:
    delay = 1.0 / token_rate if token_rate > 0 else 0.0

    def respond(messages: list[dict[str, Any]]) -> str | Reply | None:
        last = str(messages[-1].get("content", "")) if messages else ""
        found = TAG_RE.search(last)
        if found is None:
            return None  # not ours (e.g. a summary request): the default answer
        return Reply(tokens=reply_tokens(found.group(0), tokens), token_delay=delay)

    return respond


def group_replies(messages: list[JSON], bot_id: str) -> dict[int, list[JSON]]:
    """The bot's messages of one channel, grouped by the mention they answer: a message with a
    ``message_reference`` starts a reply, the bot's messages that follow without one continue
    it (replies in one channel are written one at a time)."""
    groups: dict[int, list[JSON]] = {}
    current: list[JSON] | None = None
    for message in messages:
        if message["author"]["id"] != bot_id:
            continue
        reference = (message.get("message_reference") or {}).get("message_id")
        if reference is not None:
            current = groups.setdefault(int(reference), [])
            current.append(message)
        elif current is not None:
            current.append(message)
    return groups


def classify(text: str, expected: str) -> str:
    if not text:
        return "missing"
    shown, wanted = normalised(text), normalised(expected)
    if shown == wanted:
        return "complete"
    if any(mark in text for mark in ERROR_MARKS):
        return "error"
    if wanted.startswith(shown):
        return "unfinished"  # still streaming, or stuck
    return "wrong"


def settled(text: str, expected: str) -> bool:
    """Final: the whole model output, or an error/cut-off note (nothing more will come)."""
    return classify(text, expected) in ("complete", "error")


def _reference_id(body: Any) -> int | None:
    if not isinstance(body, dict):
        return None
    ref = body.get("message_reference")
    if isinstance(ref, dict) and ref.get("message_id") is not None:
        return int(ref["message_id"])
    return None


def _content(body: Any) -> str | None:
    return body.get("content") if isinstance(body, dict) else None


_CREATE_RE = re.compile(r"^/channels/(\d+)/messages$")
_EDIT_RE = re.compile(r"^/channels/(\d+)/messages/(\d+)$")


def request_kind(req: DiscordRequest) -> str:
    if req.method == "POST" and _CREATE_RE.match(req.path):
        return "create"
    if req.method == "PATCH" and _EDIT_RE.match(req.path):
        return "edit"
    if req.method == "POST" and req.path.endswith("/typing"):
        return "typing"
    return "other"


@dataclass
class MessageTimeline:
    """The accepted updates of one bot message: (arrival time, content), in order."""

    updates: list[tuple[float, str]]

    def final_at(self, final: str) -> float | None:
        """When the message first showed its final content."""
        return next((t for t, content in self.updates if content == final), None)


def message_timelines(
    groups: dict[int, list[JSON]],
    history: Callable[[int], list[str]],
    requests: list[DiscordRequest],
) -> dict[int, MessageTimeline]:
    """Timelines of the bot's messages: the accepted create (matched by channel, reference and
    first content) and the accepted edits (the message id is in the path)."""
    creates: dict[int, list[DiscordRequest]] = {}
    edits: dict[int, list[tuple[float, str]]] = {}
    for req in requests:
        if req.status != 200:
            continue
        if req.method == "POST" and (found := _CREATE_RE.match(req.path)):
            creates.setdefault(int(found.group(1)), []).append(req)
        elif req.method == "PATCH" and (found := _EDIT_RE.match(req.path)):
            content = _content(req.json)
            if content is not None:
                edits.setdefault(int(found.group(2)), []).append((req.time, content))
    used: set[int] = set()
    timelines: dict[int, MessageTimeline] = {}
    for group in groups.values():
        for message in group:
            message_id = int(message["id"])
            channel = int(message["channel_id"])
            reference = _reference_id(message)
            first = (history(message_id) or [message["content"]])[0]
            updates: list[tuple[float, str]] = []
            for req in creates.get(channel, []):
                if id(req) in used or _content(req.json) != first:
                    continue
                if _reference_id(req.json) != reference:
                    continue
                used.add(id(req))
                updates.append((req.time, first))
                break
            updates.extend(sorted(edits.get(message_id, [])))
            timelines[message_id] = MessageTimeline(updates)
    return timelines


def last_tokens(requests: list[OllamaRequest]) -> dict[str, OllamaRequest]:
    """The (last) chat request per mention tag, found in the request's last message."""
    found: dict[str, OllamaRequest] = {}
    for req in requests:
        if req.path != "/api/chat" or not isinstance(req.json, dict):
            continue
        messages = req.json.get("messages") or []
        if not messages or not isinstance(messages[-1], dict):
            continue
        match = TAG_RE.search(str(messages[-1].get("content", "")))
        if match is not None:
            found[match.group(0)] = req
    return found


def summarise_log(path: Path) -> dict[str, int]:
    """WARNING and ERROR lines of the bot's log (text format), by level and event."""
    events: Counter[str] = Counter()
    if not path.exists():
        return {}
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split(" ", 3)
        if len(parts) < 4 or parts[1] not in ("WARNING", "ERROR", "CRITICAL"):
            continue
        if "is not installed, voice will NOT be supported" in parts[3]:
            continue  # discord.py's start-up notice, not about the run
        event = re.search(r"event=(\S+)", parts[3])
        # URLs name a channel and message: without them, one line per kind of warning.
        plain = re.sub(r"https?://\S+", "<url>", parts[3])
        what = event.group(1) if event else " ".join(plain.split()[:8])
        events[f"{parts[1]} {parts[2]}: {what}"] += 1
    return dict(events)


# --------------------------------------------------------------------------------------------
# Running the bot
# --------------------------------------------------------------------------------------------


def wait_until(predicate: Callable[[], bool], seconds: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def ollama_url(ollamas: Sequence[FakeOllama], slots: Sequence[int]) -> str:
    """OLLAMA_URL: one backend's bare URL (as before: the bot counts MAX_CONCURRENT slots for
    it), several as ``url#slots`` separated by commas."""
    if len(ollamas) == 1:
        return ollamas[0].url
    return ",".join(f"{o.url}#{s}" for o, s in zip(ollamas, slots, strict=True))


def bot_env(
    config: Config,
    discord: FakeDiscord,
    ollama: FakeOllama | Sequence[FakeOllama],
    tmp: Path,
    port: int,
    *,
    history_store: str | None = None,
    shard: int | None = None,
) -> JSON:
    """One bot process's environment: ``history_store`` (default: a SQLite file in ``tmp``),
    and with ``shard``, ``SHARD_COUNT=config.processes`` and ``SHARD_IDS=shard``."""
    ollamas = [ollama] if isinstance(ollama, FakeOllama) else list(ollama)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "OLLAMA_"))}
    env: JSON = {
        **clean,
        "PYTHONPATH": str(ROOT),
        "DISCORD_TOKEN": "fake-token",
        "OLLACORD_DISCORD_API": discord.api_url,
        "OLLACORD_DISCORD_GATEWAY": discord.gateway_url,
        "OLLAMA_URL": ollama_url(ollamas, config.backend_slots[: len(ollamas)]),
        "OLLAMA_MODEL": MODEL,
        "HISTORY_STORE": history_store or f"sqlite:///{tmp / 'history.db'}",
        "HEALTH_HOST": "127.0.0.1",
        "HEALTH_PORT": str(port),
        "MAX_CONCURRENT": str(config.slots),
        # Room for every mention of the run: beyond QUEUE_LIMIT the bot answers "busy, try
        # again shortly", which is a refusal by design, not what this run measures.
        "QUEUE_LIMIT": str(max(25, config.channels * config.mentions)),
        "SHUTDOWN_GRACE": "2",
        "LOG_LEVEL": "WARNING",
        "LOG_FORMAT": "text",
    }
    if shard is not None:
        env["SHARD_COUNT"] = str(config.processes)
        env["SHARD_IDS"] = str(shard)
    if config.edit_interval is not None:
        env["EDIT_INTERVAL"] = str(config.edit_interval)
    return env


def ollama_ready(health_url: str) -> bool:
    status, body = http_get(health_url, 1.0)
    try:
        return status == 200 and json.loads(body)["ollama"]["state"] == "ready"
    except (ValueError, KeyError, TypeError):
        return False


def launch_bot(env: JSON, cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "bot"], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT
        )


def wait_ready(
    proc: subprocess.Popen[bytes],
    env: JSON,
    log: Path,
    discord: FakeDiscord,
    shard: int | None = None,
) -> None:
    """Until the bot (or, with ``shard``, the process running that shard) is connected, has
    synced its slash commands and loaded the model; stops it and raises if it does not get
    there."""

    def alive_and(predicate: Callable[[], bool]) -> Callable[[], bool]:
        return lambda: proc.poll() is not None or predicate()

    health = f"http://127.0.0.1:{env['HEALTH_PORT']}/healthz"
    if shard is None:
        connected: Callable[[], bool] = lambda: (  # noqa: E731
            discord.identifies > 0 and discord.wait_until_ready(0.1)
        )
    else:
        connected = lambda: discord.wait_until_ready(0.1, shard=shard)  # noqa: E731
    steps = [
        connected,
        lambda: "reset" in discord.commands,  # slash commands are synced before the gateway
        lambda: ollama_ready(health),  # the model is loaded: no "still loading" answers
    ]
    for step in steps:
        if not wait_until(alive_and(step), 60) or proc.poll() is not None:
            stop_bot(proc)
            tail = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the bot did not get ready; its log ends with:\n{tail}")


def start_bot(env: JSON, cwd: Path, log: Path, discord: FakeDiscord) -> subprocess.Popen[bytes]:
    proc = launch_bot(env, cwd, log)
    wait_ready(proc, env, log, discord)
    return proc


def stop_bot(proc: subprocess.Popen[bytes], grace: float = 20.0) -> int | None:
    """SIGTERM, wait, then SIGKILL if it hangs. Returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return proc.returncode


def start_redis(directory: Path, databases: int) -> RedisServer:
    """A real redis-server for the run: append-only, fsynced every second (as in
    docker-compose.scale.yml; tests/redis_server.py's default, every write, is slower)."""
    from tests.redis_server import started_redis  # imports pytest: only when asked for

    directory.mkdir(parents=True, exist_ok=True)
    return started_redis(
        directory, "--appendfsync", "everysec", "--databases", str(max(16, databases))
    )


def redis_commandstats(client: Any) -> dict[str, int]:
    """{command: calls} from ``INFO commandstats`` (subcommands as ``config|get``)."""
    info = client.info("commandstats")
    return {
        str(name).removeprefix("cmdstat_"): int(stats["calls"])
        for name, stats in dict(info).items()
    }


def commandstats_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Calls made between two reads, without the first read's own ``INFO``."""
    delta = {k: v - before.get(k, 0) for k, v in after.items()}
    delta["info"] = delta.get("info", 0) - 1
    return {k: v for k, v in delta.items() if v > 0}


def log_path(config: Config, index: int) -> Path | None:
    """Where process ``index``'s log is kept (``--bot-log``; ``bot.log`` -> ``bot.0.log``
    with several processes)."""
    if config.bot_log is None or config.processes == 1:
        return config.bot_log
    path = config.bot_log
    return path.with_name(f"{path.stem}.{index}{path.suffix}")


@dataclass
class BotRun:
    """One bot process of the run and what was read from it before the first mention."""

    index: int
    shard: int | None
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    before: dict[str, float] = field(default_factory=dict)
    cpu_before: float = 0.0
    after: dict[str, float] = field(default_factory=dict)
    cpu_after: float = 0.0
    rss: int = 0
    exit_code: int | None = None

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def read_before(self) -> None:
        self.before = parse_samples(http_get(self.metrics_url)[1])
        self.cpu_before = cpu_seconds(self.proc.pid)

    def read_after(self) -> None:
        self.cpu_after = cpu_seconds(self.proc.pid)
        self.rss = peak_rss_kib(self.proc.pid)
        self.after = parse_samples(http_get(self.metrics_url)[1])

    def loop_lag(self) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
        return histogram_buckets(self.before, LOOP_LAG), histogram_buckets(self.after, LOOP_LAG)

    def stats(self, answers: int) -> ProcessStats:
        lag_p99, lag_samples = bucket_quantile(*self.loop_lag(), 0.99)
        return ProcessStats(
            index=self.index,
            shard=self.shard,
            answers=answers,
            cpu_seconds=self.cpu_after - self.cpu_before,
            peak_rss_kib=self.rss,
            loop_lag_p99=lag_p99,
            loop_lag_samples=lag_samples,
            bot_rate_limited=counter_delta(
                self.before, self.after, "ollacord_discord_rate_limited_total"
            ),
            outcomes=labelled_deltas(self.before, self.after, "ollacord_replies_total", "outcome"),
            exit_code=self.exit_code,
        )


# --------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------


def make_mentions(config: Config, channels: list[int], users: list[int]) -> list[Mention]:
    """Round-robin over channels, so every channel gets its first mention early."""
    return [
        Mention(tag=f"bench-c{c}-m{m}", channel=channel, user=users[m % len(users)], index=m)
        for m in range(config.mentions)
        for c, channel in enumerate(channels)
    ]


def make_channels(config: Config, discord: FakeDiscord) -> dict[int, int]:
    """The bench's channels, {channel id: the shard it is on}. One process: one guild, as
    before. Several: one guild per shard, channel i in guild ``i % processes``."""
    if config.processes == 1:
        guild = discord.create_guild("Load")
        return {discord.create_channel(guild, f"load-{i}"): 0 for i in range(config.channels)}
    guilds = [discord.create_guild(f"Load-{k}", shard=k) for k in range(config.processes)]
    channels: dict[int, int] = {}
    for i in range(config.channels):
        guild = guilds[i % config.processes]
        channels[discord.create_channel(guild, f"load-{i}")] = discord.shard_of(guild)
    return channels


def send(discord: FakeDiscord, mention: Mention) -> None:
    mention.message_id = discord.user_message(
        mention.channel, mention.user, mention.text, mention_bot=True
    )
    mention.sent_at = time.perf_counter()  # the event is on the gateway socket now


def send_spread(
    discord: FakeDiscord, mentions: Sequence[Mention], seconds: float, stop: threading.Event
) -> None:
    """Send the mentions evenly over ``seconds``: the first at once, the last at ``seconds``
    (each on its own schedule: a slow send does not push the later ones back)."""
    start = time.perf_counter()
    gap = seconds / (len(mentions) - 1) if len(mentions) > 1 else 0.0
    for k, mention in enumerate(mentions):
        if stop.wait(max(0.0, start + k * gap - time.perf_counter())):
            return
        send(discord, mention)


def current_texts(discord: FakeDiscord, channels: list[int]) -> dict[int, str]:
    """{mention message id: the bot's reply text now} over the given channels."""
    bot_id = str(discord.application_id)
    texts: dict[int, str] = {}
    for channel in channels:
        for mention_id, group in group_replies(discord.messages(channel), bot_id).items():
            texts[mention_id] = "\n".join(m["content"] for m in group)
    return texts


def drive(config: Config, discord: FakeDiscord, mentions: list[Mention]) -> float:
    """Send the mentions and wait until every reply is final or the timeout passes. Returns
    the perf_counter of the moment the last reply was seen final (or of the timeout)."""
    expected = {m.tag: "".join(reply_tokens(m.tag, config.tokens)) for m in mentions}
    queues: dict[int, list[Mention]] = {}
    for mention in mentions:
        queues.setdefault(mention.channel, []).append(mention)
    first = [queue[0] for queue in queues.values()] if config.sequential else mentions
    stop = threading.Event()
    sender: threading.Thread | None = None
    if config.stagger > 0:
        sender = threading.Thread(
            target=send_spread, args=(discord, first, config.stagger, stop), daemon=True
        )
        sender.start()
    else:
        for mention in first:
            send(discord, mention)
    done: set[str] = set()
    deadline = time.perf_counter() + config.timeout
    try:
        while len(done) < len(mentions) and time.perf_counter() < deadline:
            time.sleep(POLL_SECONDS)
            open_channels = sorted({m.channel for m in mentions if m.tag not in done})
            texts = current_texts(discord, open_channels)
            for mention in mentions:
                if mention.tag in done or mention.sent_at is None:
                    continue
                if settled(texts.get(mention.message_id, ""), expected[mention.tag]):
                    done.add(mention.tag)
                    queue = queues[mention.channel]
                    following = queue.index(mention) + 1
                    if config.sequential and following < len(queue):
                        send(discord, queue[following])
    finally:
        stop.set()
        if sender is not None:
            sender.join()
    return time.perf_counter()


def analyse(
    config: Config,
    discord: FakeDiscord,
    ollama: FakeOllama | Sequence[FakeOllama],
    mentions: list[Mention],
) -> list[ReplyResult]:
    ollamas = [ollama] if isinstance(ollama, FakeOllama) else list(ollama)
    bot_id = str(discord.application_id)
    groups: dict[int, list[JSON]] = {}
    for channel in sorted({m.channel for m in mentions}):
        groups.update(group_replies(discord.messages(channel), bot_id))
    timelines = message_timelines(groups, discord.message_history, discord.requests)
    # Every backend's requests in the order they arrived: a retried one counts last.
    every = [req for o in ollamas for req in list(o.requests)]
    chats = last_tokens(sorted(every, key=lambda req: req.event_time("received") or 0.0))
    results = []
    for mention in mentions:
        group = groups.get(mention.message_id, [])
        text = "\n".join(m["content"] for m in group)
        expected = "".join(reply_tokens(mention.tag, config.tokens))
        result = ReplyResult(mention, classify(text, expected), text)
        lines = [timelines[int(m["id"])] for m in group]
        if lines and lines[0].updates:
            result.first_visible = lines[0].updates[0][0]
        result.updates = sum(len(line.updates) for line in lines)
        finals = [line.final_at(m["content"]) for line, m in zip(lines, group, strict=True)]
        if finals and all(t is not None for t in finals):
            result.final_at = max(t for t in finals if t is not None)
        chat = chats.get(mention.tag)
        result.last_token_at = chat.last_token_at if chat is not None else None
        results.append(result)
    return results


def bench_cpu_seconds() -> float:
    """utime + stime of this process (the fakes run in its threads)."""
    times = os.times()
    return times.user + times.system


def run(config: Config) -> Report:
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ollacord-load-")))
        sharded = config.processes > 1
        discord = stack.enter_context(
            FakeDiscord(shard_count=config.processes) if sharded else FakeDiscord()
        )
        ollamas = [
            stack.enter_context(FakeOllama(models=(MODEL,), num_parallel=slots))
            for slots in config.backend_slots
        ]
        for ollama in ollamas:
            ollama.responder = make_responder(config.tokens, config.token_rate)
        redis_server = None
        if config.uses_redis:
            redis_server = start_redis(tmp / "redis", config.processes)
            stack.callback(redis_server.stop)  # after the bots (callbacks run last in, first out)
        shard_of = make_channels(config, discord)
        channels = list(shard_of)
        users = [
            discord.create_user(f"user{i}", global_name=f"User{i}")
            for i in range(config.user_count)
        ]
        mentions = make_mentions(config, channels, users)
        bots: list[BotRun] = []
        envs: list[JSON] = []
        try:
            for index in range(config.processes):
                store = None
                if redis_server is not None:
                    database = 0 if config.shared_budget else index
                    store = f"redis://127.0.0.1:{redis_server.port}/{database}"
                port = free_port()
                shard = index if sharded else None
                env = bot_env(config, discord, ollamas, tmp, port, history_store=store, shard=shard)
                log = tmp / (f"bot.{index}.log" if sharded else "bot.log")
                bots.append(BotRun(index, shard, launch_bot(env, tmp, log), port, log))
                envs.append(env)
            for bot, env in zip(bots, envs, strict=True):
                wait_ready(bot.proc, env, bot.log, discord, bot.shard)
            redis_client = None
            calls_before: dict[str, int] = {}
            if redis_server is not None:
                import redis

                redis_client = redis.Redis(host="127.0.0.1", port=redis_server.port)
                stack.callback(redis_client.close)
                calls_before = redis_commandstats(redis_client)
            for bot in bots:
                bot.read_before()
            limited_before = discord.rate_limited
            requests_before = len(discord.requests)
            ollama_before = [len(o.requests) for o in ollamas]
            served_before = [len(o.chat_requests) for o in ollamas]
            bench_before = bench_cpu_seconds()
            started = time.perf_counter()
            ended = drive(config, discord, mentions)
            bench_cpu = bench_cpu_seconds() - bench_before
            for bot in bots:
                bot.read_after()
            redis_calls = None
            if redis_client is not None:
                redis_calls = commandstats_delta(calls_before, redis_commandstats(redis_client))
            results = analyse(config, discord, ollamas, mentions)
            limited_after = discord.rate_limited
            requests = discord.requests[requests_before:]
            chats = [
                req for o, n in zip(ollamas, ollama_before, strict=True) for req in o.requests[n:]
            ]
            served = [len(o.chat_requests) - n for o, n in zip(ollamas, served_before, strict=True)]
        finally:
            for bot in bots:
                bot.exit_code = stop_bot(bot.proc)
                kept = log_path(config, bot.index)
                if kept is not None and bot.log.exists():
                    shutil.copyfile(bot.log, kept)
        finals = [r.final_at for r in results if r.final_at is not None]
        completed_finals = [r.final_at for r in results if r.status == "complete" and r.final_at]
        answers = Counter(shard_of[r.mention.channel] for r in results if r.status == "complete")
        processes = [bot.stats(answers[bot.shard or 0]) for bot in bots]
        lag_p99, lag_samples = bucket_quantile(
            added_buckets([bot.loop_lag()[0] for bot in bots]),
            added_buckets([bot.loop_lag()[1] for bot in bots]),
            0.99,
        )
        outcomes: Counter[str] = Counter()
        log_events: Counter[str] = Counter()
        for bot, stats in zip(bots, processes, strict=True):
            outcomes.update(stats.outcomes)
            prefix = f"#{bot.index} " if sharded else ""
            log_events.update({prefix + k: v for k, v in summarise_log(bot.log).items()})
        codes = [p.exit_code for p in processes]
        return Report(
            config=config,
            replies=results,
            wall=(max(finals) if len(finals) == len(results) else ended) - started,
            tokens=sum(r.tokens_sent for r in chats),
            rate_limited={
                k: v - limited_before.get(k, 0) for k, v in sorted(limited_after.items())
            },
            bot_rate_limited=sum(p.bot_rate_limited for p in processes),
            cpu_seconds=sum(p.cpu_seconds for p in processes),
            peak_rss_kib=sum(p.peak_rss_kib for p in processes),
            loop_lag_p99=lag_p99,
            loop_lag_samples=lag_samples,
            rest_by_method=dict(Counter(r.method for r in requests)),
            rest_by_kind=dict(Counter(request_kind(r) for r in requests)),
            bot_outcomes=dict(outcomes),
            log_events=dict(log_events),
            exit_code=next((c for c in codes if c != 0), codes[0]),
            timed_out=any(r.status not in ("complete", "error") for r in results),
            processes=processes,
            backend_requests=served,
            redis_calls=redis_calls,
            bench_cpu_seconds=bench_cpu,
            answers_wall=max(completed_finals, default=started) - started,
            shard_of=shard_of,
        )
    raise AssertionError("unreachable")  # ExitStack swallows no exception


def parse_args(argv: Sequence[str] | None) -> Config:
    parser = argparse.ArgumentParser(
        prog="python -m bench.load",
        description=(__doc__ or "").split("\n\n")[0],
        epilog="See the module docstring (bench/load.py) for what each figure means.",
    )
    parser.add_argument("--channels", type=int, default=10)
    parser.add_argument("--mentions", type=int, default=3, help="mentions per channel")
    parser.add_argument("--users", type=int, default=0, help="default: one per mention")
    parser.add_argument(
        "--slots", type=int, default=1, help="the bot's MAX_CONCURRENT (per process)"
    )
    parser.add_argument(
        "--ollama-slots",
        type=int,
        default=0,
        help="generations at once, all backends together, split evenly (default: --slots)",
    )
    parser.add_argument("--token-rate", type=float, default=20.0, help="tokens per second")
    parser.add_argument("--tokens", type=int, default=120, help="tokens per reply")
    order = parser.add_mutually_exclusive_group()
    order.add_argument(
        "--burst", dest="sequential", action="store_false", help="all mentions at once (default)"
    )
    order.add_argument(
        "--sequential",
        dest="sequential",
        action="store_true",
        help="a channel's next mention once the previous reply is complete",
    )
    parser.set_defaults(sequential=False)
    parser.add_argument(
        "--stagger",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="spread the first mentions evenly over SECONDS instead of sending them at once",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="bot processes, sharded (SHARD_COUNT=N, SHARD_IDS=i); N > 1 implies --redis",
    )
    parser.add_argument(
        "--backends", type=int, default=1, help="fake Ollamas sharing --ollama-slots evenly"
    )
    parser.add_argument("--redis", action="store_true", help="HISTORY_STORE on a real redis-server")
    parser.add_argument(
        "--no-shared-budget",
        dest="shared_budget",
        action="store_false",
        help="each process its own Redis database, so its own REST budget (implies --redis)",
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait")
    parser.add_argument("--edit-interval", type=float, default=None, help="EDIT_INTERVAL")
    parser.add_argument(
        "--bot-log",
        type=Path,
        default=None,
        help="keep the bot's log here (several processes: PATH's stem + .i + its suffix)",
    )
    args = parser.parse_args(argv)
    config = Config(
        channels=args.channels,
        mentions=args.mentions,
        users=args.users,
        slots=args.slots,
        ollama_slots=args.ollama_slots,
        token_rate=args.token_rate,
        tokens=args.tokens,
        sequential=args.sequential,
        timeout=args.timeout,
        edit_interval=args.edit_interval,
        bot_log=args.bot_log,
        processes=args.processes,
        backends=args.backends,
        redis=args.redis,
        shared_budget=args.shared_budget,
        stagger=args.stagger,
    )
    if config.processes < 1 or config.backends < 1:
        parser.error("--processes and --backends must be at least 1")
    if config.parallel < config.backends:
        parser.error(
            f"{config.parallel} Ollama slots cannot be split over {config.backends} backends"
        )
    if config.stagger < 0:
        parser.error("--stagger must not be negative")
    return config


def main(argv: Sequence[str] | None = None) -> Report:
    config = parse_args(argv)
    report = run(config)
    for line in report.lines():
        print(line, flush=True)
    return report


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
