"""A bot deployment at scale, out of process, for end-to-end tests and benchmarks.

One ``python -m bot`` process per shard (``SHARD_COUNT=N``, ``SHARD_IDS=k``), all against:

- one fake Discord (tests/fake_discord.py) with ``shard_count=N``: it routes each guild's events
  to the session of shard ``(guild_id >> 22) % N`` and checks IDENTIFY's ``shard``;
- one real Redis (tests/redis_server.py, append-only file fsynced on every write), the
  processes' shared history (``HISTORY_STORE``) and whatever else they coordinate there;
- several fake Ollamas (tests/fake_ollama.py), listed in every process's ``OLLAMA_URL`` as
  ``url#slots`` (each fake runs ``slots`` generations at once, as its ``#slots`` says).

Guilds are spread evenly over the shards, one ``#general`` channel each, and one user (alice,
shown as "Alice") is a member of all of them.

The cluster only starts, stops, kills and observes: what a scenario checks is up to the test.
Everything it observes is outside the bot's code: what the fake Discord shows, what the fake
Ollamas were asked (and how far they got), the history in Redis (read through
:class:`bot.redis_store.RedisHistoryStore`, whose layout is the contract), and the processes'
logs (``event=reply`` lines).

Typical use::

    with ScaleCluster(tmp_path).start() as cluster, cluster.diagnosed():
        channel = cluster.channels[0]
        asked = cluster.mention(channel, "hello")
        cluster.eventually(lambda: cluster.reply_text(channel, asked) is not None, 20, "a reply")

``diagnosed()`` prints every process's output tail (and the fakes' state) when the block fails;
:meth:`ScaleCluster.close` (also on ``__exit__``) stops every process and server, whatever
state they are in.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from bot.history_store import Turn
from bot.logging_setup import parse_fields
from bot.redis_store import RedisHistoryStore
from tests.bot_process import BotProcess
from tests.fake_discord import FakeDiscord
from tests.fake_ollama import FakeOllama
from tests.fake_ollama import RecordedRequest as OllamaRequest
from tests.helpers import free_port
from tests.redis_server import RedisServer, started_redis

JSON = dict[str, Any]

MODEL = "llama3.2"
#: Seconds a bot process gets to identify and become ready (two start at once on a small box).
START_SECONDS = 45.0
#: Lines of each process's output shown by :meth:`ScaleCluster.diagnostics`.
TAIL_LINES = 60


@dataclass(frozen=True)
class Channel:
    """A guild's ``#general``: where its shard's process answers."""

    guild: int
    id: int
    shard: int

    @property
    def conversation(self) -> str:
        """Its conversation id in the history store (bot/discord/intake.py)."""
        return f"discord:{self.id}"


@dataclass
class ShardRun:
    """One process of one shard. A restarted shard gets a new run (``generation`` + 1); the
    old one is kept for its output."""

    shard: int
    generation: int
    process: BotProcess
    health_port: int
    #: Killed or stopped on purpose (not a crash).
    ended_on_purpose: bool = False

    @property
    def pid(self) -> int:
        return self.process.proc.pid

    @property
    def alive(self) -> bool:
        return self.process.proc.poll() is None

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.health_port}"

    def reply_events(self) -> list[dict[str, str]]:
        """Its ``event=reply`` log lines (one per finished turn), as key=value fields."""
        return [parse_fields(line) for line in self.process.err_lines("event=reply ")]


@dataclass
class ScaleCluster:
    """N bot processes (one per shard), one fake Discord, one Redis, M fake Ollamas.

    ``env`` is added to every process's environment (``.env`` names); ``ollama_options`` and
    ``discord_options`` go to the fakes' constructors.
    """

    workdir: Path
    shard_count: int = 2
    guilds_per_shard: int = 6
    backends: int = 2
    slots: int = 2
    env: Mapping[str, str] = field(default_factory=dict)
    ollama_options: Mapping[str, Any] = field(default_factory=dict)
    discord_options: Mapping[str, Any] = field(default_factory=dict)

    redis: RedisServer | None = field(default=None, init=False)
    ollamas: list[FakeOllama] = field(default_factory=list, init=False)
    _discord: FakeDiscord | None = field(default=None, init=False)
    channels: list[Channel] = field(default_factory=list, init=False)
    user: int = field(default=0, init=False)
    runs: dict[int, list[ShardRun]] = field(default_factory=dict, init=False)

    # --- life cycle --------------------------------------------------------------------------

    def start(self) -> Self:
        """Redis, the fake Ollamas, the fake Discord with its guilds, then every shard's
        process (started together; returns once each has identified and is ready). On a
        failure everything started so far is stopped again."""
        try:
            (self.workdir / "redis").mkdir(parents=True, exist_ok=True)
            self.redis = started_redis(self.workdir / "redis")
            for _ in range(self.backends):
                self.ollamas.append(self._new_ollama(port=0))
            self._discord = FakeDiscord(shard_count=self.shard_count, **self.discord_options)
            self._discord.start()
            for shard in range(self.shard_count):
                for index in range(self.guilds_per_shard):
                    guild = self.discord.create_guild(f"guild {shard}.{index}", shard=shard)
                    channel = self.discord.create_channel(guild, "general")
                    self.channels.append(Channel(guild, channel, shard))
            # Created last: a new user joins every guild there is.
            self.user = self.discord.create_user("alice", global_name="Alice")
            self.start_bots(range(self.shard_count))
        except BaseException:
            print(self.diagnostics())
            self.close()
            raise
        return self

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Kill every bot process, stop the fakes and Redis. Idempotent; every step is tried
        even if one fails (the first failure is raised at the end)."""
        errors: list[BaseException] = []
        for runs in self.runs.values():
            for run in runs:
                try:
                    run.process.kill()
                except BaseException as exc:
                    errors.append(exc)
        stoppers: list[Callable[[], None]] = [o.stop for o in self.ollamas]
        if self._discord is not None:
            stoppers.append(self._discord.stop)
        if self.redis is not None:
            stoppers.append(self.redis.stop)
        for stop in stoppers:
            try:
                stop()
            except BaseException as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    @property
    def discord(self) -> FakeDiscord:
        assert self._discord is not None, "the cluster is not started"
        return self._discord

    # --- bot processes -----------------------------------------------------------------------

    def bot_env(self, shard: int, health_port: int) -> dict[str, str]:
        """The environment of shard ``shard``'s process."""
        assert self.redis is not None
        return {
            "DISCORD_TOKEN": self.discord.token,
            "OLLACORD_DISCORD_API": self.discord.api_url,
            "OLLACORD_DISCORD_GATEWAY": self.discord.gateway_url,
            "OLLAMA_URL": self.ollama_url,
            "OLLAMA_MODEL": MODEL,
            "HISTORY_STORE": self.redis.url,
            "SHARD_COUNT": str(self.shard_count),
            "SHARD_IDS": str(shard),
            "HEALTH_HOST": "127.0.0.1",
            "HEALTH_PORT": str(health_port),
            "EDIT_INTERVAL": "1.0",
            "SHUTDOWN_GRACE": "1",
            **self.env,
        }

    @property
    def ollama_url(self) -> str:
        """``OLLAMA_URL`` as every process gets it: each fake with its slots."""
        return ",".join(f"{o.url}#{self.slots}" for o in self.ollamas)

    def start_bots(self, shards: Iterable[int]) -> list[ShardRun]:
        """Start these shards' processes together; return once each one is ready."""
        shards = list(shards)
        before = self.discord.identifies_by_shard
        started = [self._spawn(shard) for shard in shards]
        for run in started:
            self._wait_ready(run, before.get(run.shard, 0))
        return started

    def _spawn(self, shard: int) -> ShardRun:
        runs = self.runs.setdefault(shard, [])
        cwd = self.workdir / f"shard-{shard}"  # no .env there
        cwd.mkdir(exist_ok=True)
        port = free_port()
        process = BotProcess(cwd, stdin=subprocess.DEVNULL, **self.bot_env(shard, port))
        run = ShardRun(shard, len(runs) + 1, process, port)
        runs.append(run)
        return run

    def _wait_ready(self, run: ShardRun, identifies_before: int) -> None:
        """Identified on its shard (a new IDENTIFY: a restart does not resume the dead
        process's session), READY and every GUILD_CREATE on the wire, slash commands synced
        (before the gateway, in setup_hook) and discord.py's on_ready logged."""

        def ready() -> bool:
            identified = self.discord.identifies_by_shard.get(run.shard, 0) > identifies_before
            return (
                identified
                and self.discord.wait_until_ready(0, shard=run.shard)
                and "reset" in self.discord.commands
                and bool(run.process.err_lines("event=ready "))
            )

        if not run.process.wait_until(ready, START_SECONDS):
            raise AssertionError(
                f"shard {run.shard}'s process (generation {run.generation}) did not become "
                f"ready within {START_SECONDS:g} s\n{self.diagnostics()}"
            )

    def bot(self, shard: int) -> ShardRun:
        """Shard ``shard``'s latest process."""
        return self.runs[shard][-1]

    def kill_bot(self, shard: int, sig: int = signal.SIGKILL) -> int:
        """Send ``sig`` (default: ``kill -9``) to shard ``shard``'s process; its exit code."""
        run = self.bot(shard)
        run.ended_on_purpose = True
        os.kill(run.pid, sig)
        return run.process.wait(30)

    def restart_bot(self, shard: int) -> ShardRun:
        """Start shard ``shard`` again with the same settings (its old process must be gone)."""
        assert not self.bot(shard).alive, "stop the old process first"
        [run] = self.start_bots([shard])
        return run

    # --- fake Ollamas ------------------------------------------------------------------------

    def _new_ollama(self, port: int) -> FakeOllama:
        options: dict[str, Any] = {"models": (MODEL,), "num_parallel": self.slots}
        options.update(self.ollama_options)
        return FakeOllama(port=port, **options).start()

    def stop_ollama(self, index: int) -> None:
        """Stop fake Ollama ``index`` (a crash, as far as clients can tell): its open connections
        are cut, streams mid-answer included, then its port refuses connections."""
        self.ollamas[index].stop()

    def restart_ollama(self, index: int) -> FakeOllama:
        """A fresh fake Ollama on the stopped one's port (same URL), same responder."""
        old = self.ollamas[index]
        new = self._new_ollama(port=old.port)
        new.responder = old.responder
        self.ollamas[index] = new
        return new

    @staticmethod
    def chat_requests(ollama: FakeOllama) -> list[OllamaRequest]:
        """The generation requests (``/api/chat`` with messages) a fake received, in order;
        ``tokens_sent`` and ``events`` tell how far each got."""
        return [
            r
            for r in list(ollama.requests)
            if r.path == "/api/chat" and isinstance(r.json, dict) and r.json.get("messages")
        ]

    # --- Discord: acting and observing ---------------------------------------------------------

    def channels_on(self, shard: int) -> list[Channel]:
        return [c for c in self.channels if c.shard == shard]

    def mention(self, channel: Channel, text: str) -> int:
        """alice mentions the bot in ``channel``; the message id."""
        return self.discord.user_message(channel.id, self.user, text, mention_bot=True)

    def bot_messages(self, channel: Channel) -> list[JSON]:
        bot_id = str(self.discord.application_id)
        return [m for m in self.discord.messages(channel.id) if m["author"]["id"] == bot_id]

    def replies_to(self, channel: Channel, message_id: int) -> list[JSON]:
        """The bot's messages in ``channel`` that reply to ``message_id``."""
        return [
            m
            for m in self.bot_messages(channel)
            if (m.get("message_reference") or {}).get("message_id") == str(message_id)
        ]

    def reply_text(self, channel: Channel, message_id: int) -> str | None:
        """What the bot's (first) reply to ``message_id`` says now; None if there is none."""
        replies = self.replies_to(channel, message_id)
        return replies[0]["content"] if replies else None

    # --- logs and history --------------------------------------------------------------------

    def reply_events(self) -> list[tuple[ShardRun, dict[str, str]]]:
        """Every process's ``event=reply`` lines, with the process that logged each."""
        return [(run, e) for runs in self.runs.values() for run in runs for e in run.reply_events()]

    def history(self, conversations: Iterable[str]) -> dict[str, list[Turn]]:
        """The stored turns of these conversations, read from Redis as the bot reads them."""
        assert self.redis is not None
        url = self.redis.url

        async def load() -> dict[str, list[Turn]]:
            store = RedisHistoryStore(url)
            try:
                return {c: await store.load(c) for c in conversations}
            finally:
                await store.close()

        return asyncio.run(load())

    # --- waiting and diagnosing --------------------------------------------------------------

    def crashed(self) -> list[ShardRun]:
        """Processes that exited without being told to."""
        return [
            run
            for runs in self.runs.values()
            for run in runs
            if not run.alive and not run.ended_on_purpose
        ]

    def eventually(self, predicate: Callable[[], bool], seconds: float, what: str) -> None:
        """Poll ``predicate`` until it holds; fail (with diagnostics) after ``seconds``, or at
        once if a bot process died on its own meanwhile."""
        deadline = time.monotonic() + seconds
        while not predicate():
            if crashed := self.crashed():
                shards = ", ".join(
                    f"shard {r.shard} (exit {r.process.proc.poll()})" for r in crashed
                )
                raise AssertionError(f"waiting for {what}: a bot process died: {shards}")
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {seconds:g} s: {what}")
            time.sleep(0.05)

    @contextlib.contextmanager
    def diagnosed(self) -> Iterator[None]:
        """Print :meth:`diagnostics` if the block raises (pytest shows it with the failure)."""
        try:
            yield
        except BaseException:
            print(self.diagnostics())
            raise

    def diagnostics(self) -> str:
        """Each process's output tail, the fakes' records and Redis's log tail."""
        lines = ["===== scale cluster diagnostics ====="]
        for shard, runs in sorted(self.runs.items()):
            for run in runs:
                code = run.process.proc.poll()
                lines.append(
                    f"----- shard {shard}, generation {run.generation}, pid {run.pid}, "
                    f"{'running' if code is None else f'exit {code}'} -----"
                )
                lines.extend(run.process.stderr.splitlines()[-TAIL_LINES:])
                out = run.process.stdout.strip()
                if out:
                    lines.append("(stdout)")
                    lines.extend(out.splitlines()[-TAIL_LINES:])
        if self._discord is not None:
            d = self._discord
            lines.append(
                f"----- fake Discord: identifies by shard {d.identifies_by_shard}, close codes "
                f"{d.gateway_close_codes}, 429s {d.rate_limited}, server errors "
                f"{len(d.server_errors)} -----"
            )
            lines.extend(d.server_errors[-3:])
        for index, ollama in enumerate(self.ollamas):
            lines.append(f"----- fake Ollama {index} ({ollama.url}) -----")
            for r in self.chat_requests(ollama):
                last = str(r.json["messages"][-1].get("content", ""))[:60] if r.json else ""
                events = ",".join(name for name, _ in r.events)
                lines.append(f"{last!r} tokens_sent={r.tokens_sent} events={events}")
        if self.redis is not None:
            log = self.redis.directory / "redis.log"
            if log.exists():
                lines.append("----- redis.log -----")
                lines.extend(log.read_text(errors="replace").splitlines()[-10:])
        return "\n".join(lines)
