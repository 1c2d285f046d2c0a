"""End to end, out of process: `python -m bot` as a subprocess, against a fake Discord (REST +
gateway) and the fake Ollama, both on 127.0.0.1. Real clock, real signals, real restarts."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bot.context_window import is_summary_request
from bot.user_messages import RESTART_NOTE
from tests.fake_discord import FakeDiscord
from tests.fake_ollama import FakeOllama, Reply
from tests.helpers import free_port
from tests.test_container import healthcheck_command

ROOT = Path(__file__).resolve().parent.parent


def eventually(predicate: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@dataclass
class World:
    """The fakes, a guild with #general and alice, and a way to start the bot process."""

    discord: FakeDiscord
    ollama: FakeOllama
    tmp: Path
    channel: int = 0
    alice: int = 0
    health_port: int = 0
    processes: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def db(self) -> Path:
        return self.tmp / "data" / "history.db"

    def start_bot(self, **env: str) -> subprocess.Popen[str]:
        identifies = self.discord.identifies
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "OLLAMA_"))}
        proc = subprocess.Popen(
            [sys.executable, "-m", "bot"],
            cwd=self.tmp,
            env={
                **clean,
                "PYTHONPATH": str(ROOT),
                "DISCORD_TOKEN": "fake-token",
                "OLLACORD_DISCORD_API": self.discord.api_url,
                "OLLACORD_DISCORD_GATEWAY": self.discord.gateway_url,
                "OLLAMA_URL": self.ollama.url,
                "OLLAMA_MODEL": "llama3.2",
                "HISTORY_STORE": f"sqlite:///{self.db}",
                "HEALTH_HOST": "127.0.0.1",
                "HEALTH_PORT": str(self.health_port),
                "EDIT_INTERVAL": "1.0",
                "SHUTDOWN_GRACE": "1",
                **env,
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.processes.append(proc)
        ready = eventually(lambda: self.discord.identifies > identifies, 20)
        assert ready and self.discord.wait_until_ready(10), self.output(proc)
        # Ready once slash commands are synced (they are synced before the gateway connects).
        assert eventually(lambda: "reset" in self.discord.commands, 10)
        return proc

    def output(self, proc: subprocess.Popen[str]) -> str:
        if proc.poll() is None:
            proc.kill()
        out, _ = proc.communicate(timeout=10)
        return out

    def bot_messages(self) -> list[dict[str, Any]]:
        bot_id = str(self.discord.application_id)
        return [m for m in self.discord.messages(self.channel) if m["author"]["id"] == bot_id]

    def mention(self, text: str) -> int:
        return self.discord.user_message(self.channel, self.alice, text, mention_bot=True)

    def health(self, path: str = "/healthz") -> tuple[int, str]:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.health_port}{path}", timeout=5
            ) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def stored_turns(self) -> list[tuple[str, str]]:
        with sqlite3.connect(self.db) as db:
            return db.execute("SELECT role, content FROM turns ORDER BY id").fetchall()


@pytest.fixture
def world(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[World]:
    marker = request.node.get_closest_marker("fake_ollama")
    options: dict[str, Any] = {"models": ("llama3.2",)}
    options.update(marker.kwargs if marker else {})
    discord_marker = request.node.get_closest_marker("fake_discord")
    discord_options = discord_marker.kwargs if discord_marker else {}
    with FakeDiscord(**discord_options) as discord, FakeOllama(**options) as ollama:
        w = World(discord, ollama, tmp_path, health_port=free_port())
        guild = discord.create_guild()
        w.channel = discord.create_channel(guild, "general")
        w.alice = discord.create_user("alice", global_name="Alice")
        yield w
        for proc in w.processes:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)


def test_a_mention_gets_a_streamed_reply_and_health_and_metrics_report_it(world: World) -> None:
    proc = world.start_bot()
    world.ollama.queue(Reply(tokens=[f" part{i}" for i in range(30)], token_delay=0.1))

    world.mention("tell me something")

    assert eventually(lambda: any(m["content"].endswith("part29") for m in world.bot_messages()))
    [reply] = world.bot_messages()
    history = world.discord.message_history(int(reply["id"]))
    assert len(history) >= 3, history  # created, then edited as tokens arrived
    assert history[-1] == "part0" + "".join(f" part{i}" for i in range(1, 30))
    assert reply["message_reference"]["message_id"]

    status, body = world.health()
    assert status == 200, body
    assert json.loads(body)["gateway"] == "connected"
    assert eventually(
        lambda: 'ollacord_replies_total{outcome="ok"} 1.0' in world.health("/metrics")[1]
    )
    # The image's HEALTHCHECK command passes against the running bot.
    command = [sys.executable if c == "python" else c for c in healthcheck_command()]
    done = subprocess.run(command, env={"HEALTH_PORT": str(world.health_port)}, check=False)
    assert done.returncode == 0
    assert world.discord.rate_limited == {} or sum(world.discord.rate_limited.values()) == 0

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0


def test_sigterm_during_a_long_reply_ends_it_with_a_note_and_exits_0(world: World) -> None:
    proc = world.start_bot()
    world.mention("a short one first")
    assert eventually(lambda: len(world.stored_turns()) == 2)
    world.ollama.queue(Reply(tokens=[f" w{i}" for i in range(400)], token_delay=0.05))
    world.mention("now talk for a long time")
    assert eventually(lambda: len(world.bot_messages()) == 2)

    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=15)
    out = world.output(proc)

    assert code == 0, out
    last = world.bot_messages()[-1]["content"]
    assert last.startswith("w0") and last.endswith(RESTART_NOTE), out
    assert "w399" not in last
    # History holds the completed exchange only: the interrupted one left nothing behind.
    assert [role for role, _ in world.stored_turns()] == ["user", "assistant"]
    assert "fake-token" not in out
    assert "event=shutdown" in out


def test_sigterm_while_a_summary_is_being_written_exits_cleanly(world: World) -> None:
    summary_asked: list[int] = []

    def respond(messages: list[dict[str, Any]]) -> str | Reply | None:
        if is_summary_request(messages):
            summary_asked.append(1)
            return Reply(hang=True)  # still writing when the bot is told to stop
        return None

    world.ollama.responder = respond
    proc = world.start_bot(CONTEXT_TOKENS="1024")
    for i in range(12):
        world.mention(f"topic {i}: " + " ".join(f"detail{i}x{j}" for j in range(40)))
        assert eventually(lambda i=i: len(world.stored_turns()) == 2 * (i + 1), 20)
        # A summary is prepared (in the background) right after a reply, when one is due.
        if eventually(lambda: bool(summary_asked), 1):
            break
    assert summary_asked, world.output(proc)

    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=15)
    out = world.output(proc)

    assert code == 0, out
    assert "Traceback" not in out, out
    assert "cannot schedule new futures" not in out


def test_a_channel_deleted_mid_reply_gets_at_most_one_more_request(world: World) -> None:
    proc = world.start_bot()
    world.ollama.queue(Reply(tokens=[f" w{i}" for i in range(400)], token_delay=0.05))
    world.mention("talk for a long time")
    assert eventually(lambda: len(world.bot_messages()) == 1), world.output(proc)

    deleted_at = time.perf_counter()
    world.discord.delete_channel(world.channel)
    # Ollama stops generating (the stream is closed), so its slot is free again.
    assert eventually(lambda: world.ollama.cancelled == 1, 15), world.output(proc)
    time.sleep(1.5)  # room for any further update the bot might (wrongly) still try

    after = [
        r
        for r in world.discord.requests
        if r.time > deleted_at and r.path.startswith(f"/channels/{world.channel}/")
    ]
    print(f"requests to the deleted channel after its deletion: {len(after)}")
    assert len(after) <= 1, [(r.method, r.path) for r in after]
    out = world.output(proc)
    assert out.count("outcome=undeliverable") == 1, out
    assert "10003" in out and "Traceback" not in out
    assert world.stored_turns() == []


def test_kill_9_mid_reply_then_restart_keeps_completed_turns_and_answers(world: World) -> None:
    proc = world.start_bot()
    world.mention("remember the word apricot")
    assert eventually(lambda: len(world.stored_turns()) == 2)
    world.ollama.queue(Reply(tokens=[f" w{i}" for i in range(400)], token_delay=0.05))
    world.mention("a reply that will be killed")
    assert eventually(lambda: len(world.bot_messages()) == 2)

    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert len(world.stored_turns()) == 2
    killed = world.bot_messages()[1]
    assert not killed["content"].endswith(RESTART_NOTE)

    world.start_bot()
    # The reply the kill left half-written is ended by the next start: the restart note, and
    # its Stop button gone, so the asker knows to ask again.
    assert eventually(lambda: world.bot_messages()[1]["content"].endswith(f"\n\n{RESTART_NOTE}"))
    ended = world.bot_messages()[1]
    assert ended["id"] == killed["id"] and ended["content"].startswith(killed["content"][:20])
    assert not ended.get("components")
    world.mention("what was the word?")
    assert eventually(lambda: len(world.bot_messages()) == 3)
    assert eventually(lambda: len(world.stored_turns()) == 4)
    request = world.ollama.chat_requests[-1]
    assert [m["content"] for m in request["messages"]] == [
        "Alice: remember the word apricot",
        "You said: Alice: remember the word apricot",
        "Alice: what was the word?",
    ]
    assert world.bot_messages()[-1]["content"] == "You said: Alice: what was the word?"


@pytest.mark.fake_ollama(models=(), pull_delay=0.4)
def test_mentions_during_the_first_start_pull_are_told_the_progress(world: World) -> None:
    world.start_bot()
    assert eventually(lambda: any(r.path == "/api/pull" for r in world.ollama.requests))
    world.mention("are you ready?")
    assert eventually(lambda: len(world.bot_messages()) == 1)
    first = world.bot_messages()[0]["content"]
    assert "still downloading" in first and "%" in first, first

    # Once pulled (and preloaded), mentions are answered.
    assert eventually(lambda: "llama3.2:latest" in world.ollama.loaded_models(), 15)
    world.mention("and now?")
    assert eventually(lambda: len(world.bot_messages()) == 2)
    # (the answer streams: its message may show the first words before the rest)
    assert eventually(lambda: world.bot_messages()[-1]["content"] == "You said: Alice: and now?")
    status, body = world.health()
    assert status == 200 and json.loads(body)["ollama"]["state"] == "ready"


def test_ollama_down_at_start_the_bot_still_connects_and_explains(world: World) -> None:
    url = world.ollama.url
    world.ollama.stop()
    world.start_bot(OLLAMA_URL=url)
    world.mention("hello?")
    assert eventually(lambda: len(world.bot_messages()) == 1)
    assert f"can't reach Ollama at {url}" in world.bot_messages()[0]["content"]
    status, body = world.health()
    # Ollama's state is reported, not fatal: the bot itself is healthy.
    assert status == 200
    assert json.loads(body)["ollama"]["state"] == "unreachable"


@pytest.mark.fake_discord(send_ratelimit_headers=False, message_limit=2, message_window=2.0)
def test_discord_429s_are_survived_and_counted(world: World) -> None:
    # If Discord's limits were ever tighter than planned (here 2 per 2 s, without headers for
    # discord.py to plan with), 429s happen: discord.py retries them itself, the reply still
    # completes, and /metrics counts them.
    world.start_bot(EDIT_INTERVAL="0.05")
    world.ollama.queue(Reply(tokens=[f" t{i}" for i in range(40)], token_delay=0.05))
    world.mention("go fast")
    assert eventually(lambda: any(m["content"].endswith("t39") for m in world.bot_messages()), 20)
    assert world.discord.rate_limited.get("user", 0) >= 1

    def counted() -> bool:
        metrics = world.health("/metrics")[1]
        line = next(
            x for x in metrics.splitlines() if x.startswith("ollacord_discord_rate_limited_total")
        )
        return float(line.split()[-1]) >= 1

    assert eventually(counted)


def test_even_a_very_fast_edit_interval_never_meets_a_429(world: World) -> None:
    # The scheduler plans from Discord's limits (5 per 5 s per channel, 50/s overall), so it
    # spaces updates out itself instead of finding the limit by hitting it.
    world.start_bot(EDIT_INTERVAL="0.05")
    world.ollama.queue(Reply(tokens=[f" t{i}" for i in range(60)], token_delay=0.05))
    world.mention("go fast")
    assert eventually(lambda: any(m["content"].endswith("t59") for m in world.bot_messages()), 20)
    assert sum(world.discord.rate_limited.values()) == 0
    [reply] = world.bot_messages()
    assert len(world.discord.message_history(int(reply["id"]))) >= 3  # it still streamed


# --- Discord's headers correct the plan --------------------------------------------------------


STEADY = [f" word{i}" for i in range(120)]  # 12 s of text: an edit per second, 429s if misplanned


@pytest.mark.fake_discord(message_limit=3, message_window=5.0)
def test_the_rate_limit_headers_keep_a_tighter_channel_than_planned_free_of_429s(
    world: World,
) -> None:
    """The bot plans for 5 writes per 5 s per channel; this channel allows 3. Discord's
    X-RateLimit-Remaining / Reset-After after each write tell the scheduler, which waits."""
    world.start_bot()
    world.ollama.queue(Reply(tokens=STEADY, token_delay=0.1))
    world.mention("talk for a while")
    assert eventually(
        lambda: any(m["content"].endswith("word119") for m in world.bot_messages()), 40
    )
    assert sum(world.discord.rate_limited.values()) == 0
    [reply] = world.bot_messages()
    assert len(world.discord.message_history(int(reply["id"]))) >= 4  # it kept streaming
    # An intermediate edit never took the bucket's last write (Remaining 0 after it): that one
    # is kept for the final text, which then never waits for the bucket to reset.
    edits = [
        r
        for r in world.discord.requests
        if r.method == "PATCH" and r.path.endswith(f"/messages/{reply['id']}") and r.json
    ]
    intermediate = [r for r in edits if not str(r.json.get("content", "")).endswith("word119")]
    assert intermediate and all(r.remaining for r in intermediate), [r.remaining for r in edits]


@pytest.mark.fake_discord(message_limit=3, message_window=5.0, send_ratelimit_headers=False)
def test_a_429_that_happens_anyway_shrinks_the_channels_plan(world: World) -> None:
    """Without headers the plan can only learn from a 429: each one costs the channel one
    write per window in the plan, so they stop after a couple."""
    proc = world.start_bot()
    world.ollama.queue(Reply(tokens=STEADY, token_delay=0.1))
    world.mention("talk for a while")
    assert eventually(
        lambda: any(m["content"].endswith("word119") for m in world.bot_messages()), 40
    )
    limited = sum(world.discord.rate_limited.values())
    assert 1 <= limited <= 2
    proc.send_signal(signal.SIGTERM)
    out = world.output(proc)
    assert "event=discord_rate_limited" in out and "plan_now=" in out
