"""Benchmark: the real bot (``python -m bot``) under load, many replies streaming at once.

Starts the fake Discord (tests/fake_discord.py, Discord's default rate limits on: 5 message
creates/edits per 5 s per channel, 50 requests per second globally, 429s with a ``Via`` header)
and the fake Ollama (tests/fake_ollama.py, ``--ollama-slots`` generations at a time, each reply
``--tokens`` tokens streamed at ``--token-rate`` tokens per second), then the bot as a
subprocess, as tests/test_e2e.py does, with ``MAX_CONCURRENT=--slots``. It creates
``--channels`` channels and ``--users`` users, and sends ``--mentions`` mentions per channel:
by default all of them at the start (``--burst``), from different users, so the per-channel
queue and the Ollama slots are exercised; with ``--sequential`` the next mention in a channel
waits until the previous reply is complete. It waits until every reply is final (complete, or
ended with an error) or ``--timeout`` seconds pass, then prints:

* replies completed and lost (complete = the reply's final Discord text is exactly the model's
  output; lost = error replies, wrong text, or never finished);
* HTTP 429s the fake Discord sent the bot, by scope (and how many the bot itself counted);
* time from a mention to the first visible text (the bot's first message create replying to
  it, as the fake Discord received it), p50 and p95;
* lag of the final text behind Ollama's last token (the create/edit that made the reply's text
  final, minus the moment the fake Ollama wrote that reply's last token line), p50 and p95;
* Discord creates + edits per reply (mean, max), and the REST requests made, by method;
* the bot's CPU seconds per 1,000 tokens (utime + stime from /proc, first mention to the end),
  its peak RSS (VmHWM), and the event-loop lag p99 over the run (from the bot's
  ``ollacord_event_loop_lag_seconds`` histogram: the upper bound of the bucket holding p99);
* wall time and tokens streamed; warnings and errors in the bot's log, by event.

Replies are correlated through the mention text: each mention carries a tag
(``bench-c<channel>-m<n>``), the fake Ollama finds it in the request's last message and streams
a reply starting with the same tag, and the bot's Discord reply points at the mention through
``message_reference``; the reply's further messages (overflow) are the bot's messages that
follow it without a reference.

Run by hand (Linux: it reads /proc), e.g.::

    .venv/bin/python -m bench.load --channels 10 --mentions 3 --slots 1 --token-rate 20 --tokens 120
    .venv/bin/python -m bench.load --channels 100 --mentions 1 --slots 100 --ollama-slots 100

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
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.fake_discord import FakeDiscord
from tests.fake_discord import RecordedRequest as DiscordRequest
from tests.fake_ollama import FakeOllama, Reply
from tests.fake_ollama import RecordedRequest as OllamaRequest

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

    @property
    def user_count(self) -> int:
        return self.users or self.mentions

    @property
    def parallel(self) -> int:
        return self.ollama_slots or self.slots


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

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.replies)

    @property
    def completed(self) -> int:
        return self.count("complete")

    @property
    def lost(self) -> int:
        return len(self.replies) - self.completed

    def lines(self) -> list[str]:
        c = self.config
        mode = "sequential" if c.sequential else "burst"
        ttfv = [t for r in self.replies if (t := r.time_to_first_text) is not None]
        lags = [t for r in self.replies if (t := r.final_lag) is not None]
        n = len(self.replies)
        updates = [r.updates for r in self.replies if r.updates]
        cpu_per_k = self.cpu_seconds / self.tokens * 1000 if self.tokens else float("nan")
        if self.loop_lag_p99 is None:
            lag_text = "n/a (no samples)"
        elif self.loop_lag_p99 == float("inf"):
            lag_text = "> 1 s (+Inf bucket)"
        else:
            lag_text = f"<= {self.loop_lag_p99:g} s"
        outcomes = ", ".join(f"{k} {v:g}" for k, v in sorted(self.bot_outcomes.items()))
        return [
            f"ollacord load: {c.channels} channels x {c.mentions} mentions ({mode}, "
            f"{c.user_count} users), {c.tokens} tokens per reply at {c.token_rate:g} tokens/s; "
            f"MAX_CONCURRENT={c.slots}, Ollama slots {c.parallel}",
            f"replies             {self.completed} completed, {self.lost} lost of "
            f"{len(self.replies)} (error replies {self.count('error')}, wrong text "
            f"{self.count('wrong')}, never finished "
            f"{self.count('unfinished') + self.count('missing')}, of which "
            f"{self.count('missing')} without any message)",
            f"wall time           {self.wall:.1f} s ("
            + ("timed out" if self.timed_out else "first mention to last final text")
            + f"); {self.tokens:,} tokens streamed",
            "HTTP 429s to the bot "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.rate_limited.items()))
            + f" (total {sum(self.rate_limited.values())}; the bot counted "
            f"{self.bot_rate_limited:g})",
            f"first visible text  {_spread(ttfv, n)} (mention -> first message create)",
            f"final text lag      {_spread(lags, n)} (Ollama's last token -> final create/edit)",
            "Discord updates     "
            + (
                f"per reply mean {sum(updates) / len(updates):.1f}, max {max(updates)} "
                f"(creates + edits accepted)"
                if updates
                else "none"
            ),
            f"bot CPU             {cpu_per_k:.3f} s per 1,000 tokens "
            f"({self.cpu_seconds:.2f} s over the run)",
            f"bot peak RSS        {self.peak_rss_kib / 1024:.1f} MiB (VmHWM)",
            f"event-loop lag p99  {lag_text} ({self.loop_lag_samples} samples during the run)",
            "REST requests       "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.rest_by_method.items()))
            + " ("
            + ", ".join(f"{k} {v}" for k, v in sorted(self.rest_by_kind.items()))
            + ")",
            f"bot replies metric  {outcomes or 'none'}",
            "bot log (WARNING+)  "
            + (", ".join(f"{k} x{v}" for k, v in sorted(self.log_events.items())) or "none"),
            f"bot exit code       {self.exit_code}",
        ]


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


def _spread(values: Sequence[float], total: int) -> str:
    """p50 and p95, noting when only some replies have the figure."""
    if not values:
        return "n/a"
    spread = f"p50 {percentile(values, 0.5):.2f} s  p95 {percentile(values, 0.95):.2f} s"
    return spread if len(values) == total else f"{spread} (over {len(values)} of {total})"


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
        what = event.group(1) if event else " ".join(parts[3].split()[:8])
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


def bot_env(config: Config, discord: FakeDiscord, ollama: FakeOllama, tmp: Path, port: int) -> JSON:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "OLLAMA_"))}
    env: JSON = {
        **clean,
        "PYTHONPATH": str(ROOT),
        "DISCORD_TOKEN": "fake-token",
        "OLLACORD_DISCORD_API": discord.api_url,
        "OLLACORD_DISCORD_GATEWAY": discord.gateway_url,
        "OLLAMA_URL": ollama.url,
        "OLLAMA_MODEL": MODEL,
        "HISTORY_STORE": f"sqlite:///{tmp / 'history.db'}",
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
    if config.edit_interval is not None:
        env["EDIT_INTERVAL"] = str(config.edit_interval)
    return env


def ollama_ready(health_url: str) -> bool:
    status, body = http_get(health_url, 1.0)
    try:
        return status == 200 and json.loads(body)["ollama"]["state"] == "ready"
    except (ValueError, KeyError, TypeError):
        return False


def start_bot(env: JSON, cwd: Path, log: Path, discord: FakeDiscord) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bot"], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT
        )

    def alive_and(predicate: Callable[[], bool]) -> Callable[[], bool]:
        return lambda: proc.poll() is not None or predicate()

    health = f"http://127.0.0.1:{env['HEALTH_PORT']}/healthz"
    steps = [
        lambda: discord.identifies > 0 and discord.wait_until_ready(0.1),
        lambda: "reset" in discord.commands,  # slash commands are synced before the gateway
        lambda: ollama_ready(health),  # the model is loaded: no "still loading" answers
    ]
    for step in steps:
        if not wait_until(alive_and(step), 60) or proc.poll() is not None:
            stop_bot(proc)
            tail = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the bot did not get ready; its log ends with:\n{tail}")
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


def send(discord: FakeDiscord, mention: Mention) -> None:
    mention.message_id = discord.user_message(
        mention.channel, mention.user, mention.text, mention_bot=True
    )
    mention.sent_at = time.perf_counter()  # the event is on the gateway socket now


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
    if config.sequential:
        for queue in queues.values():
            send(discord, queue[0])
    else:
        for mention in mentions:
            send(discord, mention)
    done: set[str] = set()
    deadline = time.perf_counter() + config.timeout
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
    return time.perf_counter()


def analyse(
    config: Config, discord: FakeDiscord, ollama: FakeOllama, mentions: list[Mention]
) -> list[ReplyResult]:
    bot_id = str(discord.application_id)
    groups: dict[int, list[JSON]] = {}
    for channel in sorted({m.channel for m in mentions}):
        groups.update(group_replies(discord.messages(channel), bot_id))
    timelines = message_timelines(groups, discord.message_history, discord.requests)
    chats = last_tokens(list(ollama.requests))
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


def run(config: Config) -> Report:
    with (
        tempfile.TemporaryDirectory(prefix="ollacord-load-") as tmp_name,
        FakeDiscord() as discord,
        FakeOllama(models=(MODEL,), num_parallel=config.parallel) as ollama,
    ):
        tmp = Path(tmp_name)
        ollama.responder = make_responder(config.tokens, config.token_rate)
        guild = discord.create_guild("Load")
        channels = [discord.create_channel(guild, f"load-{i}") for i in range(config.channels)]
        users = [
            discord.create_user(f"user{i}", global_name=f"User{i}")
            for i in range(config.user_count)
        ]
        mentions = make_mentions(config, channels, users)
        port = free_port()
        log = tmp / "bot.log"
        proc = start_bot(bot_env(config, discord, ollama, tmp, port), tmp, log, discord)
        metrics_url = f"http://127.0.0.1:{port}/metrics"
        try:
            before = parse_samples(http_get(metrics_url)[1])
            limited_before = discord.rate_limited
            requests_before = len(discord.requests)
            ollama_before = len(ollama.requests)
            cpu_before = cpu_seconds(proc.pid)
            started = time.perf_counter()
            ended = drive(config, discord, mentions)
            cpu_after = cpu_seconds(proc.pid)
            rss = peak_rss_kib(proc.pid)
            after = parse_samples(http_get(metrics_url)[1])
            results = analyse(config, discord, ollama, mentions)
            limited_after = discord.rate_limited
            requests = discord.requests[requests_before:]
            chats = list(ollama.requests)[ollama_before:]
        finally:
            exit_code = stop_bot(proc)
            if config.bot_log is not None and log.exists():
                shutil.copyfile(log, config.bot_log)
        finals = [r.final_at for r in results if r.final_at is not None]
        lag_p99, lag_samples = bucket_quantile(
            histogram_buckets(before, LOOP_LAG), histogram_buckets(after, LOOP_LAG), 0.99
        )
        return Report(
            config=config,
            replies=results,
            wall=(max(finals) if len(finals) == len(results) else ended) - started,
            tokens=sum(r.tokens_sent for r in chats),
            rate_limited={
                k: v - limited_before.get(k, 0) for k, v in sorted(limited_after.items())
            },
            bot_rate_limited=counter_delta(before, after, "ollacord_discord_rate_limited_total"),
            cpu_seconds=cpu_after - cpu_before,
            peak_rss_kib=rss,
            loop_lag_p99=lag_p99,
            loop_lag_samples=lag_samples,
            rest_by_method=dict(Counter(r.method for r in requests)),
            rest_by_kind=dict(Counter(request_kind(r) for r in requests)),
            bot_outcomes=labelled_deltas(before, after, "ollacord_replies_total", "outcome"),
            log_events=summarise_log(log),
            exit_code=exit_code,
            timed_out=any(r.status not in ("complete", "error") for r in results),
        )


def parse_args(argv: Sequence[str] | None) -> Config:
    parser = argparse.ArgumentParser(
        prog="python -m bench.load", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--channels", type=int, default=10)
    parser.add_argument("--mentions", type=int, default=3, help="mentions per channel")
    parser.add_argument("--users", type=int, default=0, help="default: one per mention")
    parser.add_argument("--slots", type=int, default=1, help="the bot's MAX_CONCURRENT")
    parser.add_argument("--ollama-slots", type=int, default=0, help="default: --slots")
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
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait")
    parser.add_argument("--edit-interval", type=float, default=None, help="EDIT_INTERVAL")
    parser.add_argument("--bot-log", type=Path, default=None, help="keep the bot's log here")
    args = parser.parse_args(argv)
    return Config(
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
    )


def main(argv: Sequence[str] | None = None) -> Report:
    config = parse_args(argv)
    report = run(config)
    for line in report.lines():
        print(line, flush=True)
    return report


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
