"""`python -m bot` starting while Discord is away, refusing, or fine: real processes, real
signals, the fake Discord (tests/fake_discord.py) and the fake Ollama on 127.0.0.1."""

from __future__ import annotations

import json
import signal
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bot.discord.runner import EXIT_INTENTS_REFUSED, FATAL_MESSAGES
from bot.logging_setup import parse_fields
from tests.bot_process import BotProcess
from tests.fake_discord import FakeDiscord
from tests.fake_ollama import FakeOllama
from tests.threaded_server import ThreadedServer

TOKEN = "fake-token"  # FakeDiscord's token


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def health(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return 0, {}


class FailingDiscord(ThreadedServer):
    """Discord's REST API having an outage: every request gets ``status``."""

    name = "failing-discord"

    def __init__(self, status: int) -> None:
        super().__init__("127.0.0.1", 0)
        self.status = status
        self._lock = threading.Lock()
        self.requests = 0

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v10"

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._answer)
        return app

    async def _answer(self, request: web.Request) -> web.Response:
        with self._lock:
            self.requests += 1
        return web.Response(status=self.status, text="<html>upstream unavailable</html>")


def unreachable_lines(bot: BotProcess) -> list[dict[str, str]]:
    return [parse_fields(line) for line in bot.err_lines("event=discord_unreachable")]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_discord_unreachable_at_start_is_retried_with_one_line_each_until_a_signal(
    tmp_path: Path, fake_ollama: FakeOllama, sig: int
) -> None:
    api = f"http://127.0.0.1:{closed_port()}/api/v10"
    with BotProcess(
        tmp_path, DISCORD_TOKEN=TOKEN, OLLAMA_URL=fake_ollama.url, OLLACORD_DISCORD_API=api
    ) as bot:
        assert bot.wait_for_lines("event=discord_unreachable", count=2, seconds=60), bot
        assert bot.proc.poll() is None, bot  # still running, waiting for the third attempt
        assert bot.signal(sig) == 0, bot  # the wait (10 s) is cut short

    first, second = unreachable_lines(bot)
    assert (first["stage"], first["attempt"], first["retry_in"]) == ("login", "1", "5s")
    assert (second["attempt"], second["retry_in"]) == ("2", "10s")
    assert "Cannot connect to host 127.0.0.1" in first["cause"]
    assert "Traceback" not in bot.stderr
    assert "event=signal action=exit" in bot.stderr


def test_the_bot_connects_once_discord_is_reachable_again(
    tmp_path: Path, fake_ollama: FakeOllama
) -> None:
    port = closed_port()
    with BotProcess(
        tmp_path,
        DISCORD_TOKEN=TOKEN,
        OLLAMA_URL=fake_ollama.url,
        OLLACORD_DISCORD_API=f"http://127.0.0.1:{port}/api/v10",
        OLLACORD_DISCORD_GATEWAY=f"ws://127.0.0.1:{port}/gateway",
    ) as bot:
        assert bot.wait_for_lines("event=discord_unreachable", seconds=60), bot
        # Discord comes back on the same address: the next attempt logs in and connects.
        with FakeDiscord(port=port) as discord:
            discord.create_guild()
            assert discord.wait_until_ready(60), bot
            assert bot.wait_for_lines("event=ready"), bot
            assert bot.signal() == 0, bot
    assert "Traceback" not in bot.stderr


def test_discord_5xx_at_login_is_retried(tmp_path: Path, fake_ollama: FakeOllama) -> None:
    with (
        FailingDiscord(503) as outage,
        BotProcess(
            tmp_path,
            DISCORD_TOKEN=TOKEN,
            OLLAMA_URL=fake_ollama.url,
            OLLACORD_DISCORD_API=outage.api_url,
        ) as bot,
    ):
        assert bot.wait_for_lines("event=discord_unreachable", count=2, seconds=60), bot
        assert bot.signal() == 0, bot
    first = unreachable_lines(bot)[0]
    assert first["stage"] == "login"
    assert first["cause"] == "Discord answered HTTP 503"  # not the HTML error page
    assert "Traceback" not in bot.stderr


def test_gateway_unreachable_at_start_is_retried_and_health_says_so(
    tmp_path: Path, fake_ollama: FakeOllama
) -> None:
    health_port = closed_port()
    with (
        FakeDiscord() as discord,
        BotProcess(
            tmp_path,
            DISCORD_TOKEN=TOKEN,
            OLLAMA_URL=fake_ollama.url,
            OLLACORD_DISCORD_API=discord.api_url,
            OLLACORD_DISCORD_GATEWAY=f"ws://127.0.0.1:{closed_port()}/gateway",
            HEALTH_HOST="127.0.0.1",
            HEALTH_PORT=str(health_port),
        ) as bot,
    ):
        assert bot.wait_for_lines("event=discord_unreachable", count=2, seconds=60), bot
        # Logged in once: only the gateway connection is retried, and /healthz answers.
        status, body = health(health_port)
        assert status == 503 and body["gateway"] == "disconnected", (status, body)
        assert bot.signal() == 0, bot

    lines = unreachable_lines(bot)
    assert [line["stage"] for line in lines] == ["gateway"] * len(lines)
    assert "Cannot connect to host 127.0.0.1" in lines[0]["cause"]
    assert [r.path for r in discord.requests].count("/users/@me") == 1
    assert "Traceback" not in bot.stderr
    assert "Attempting a reconnect" not in bot.stderr  # discord.py's misleading line


def test_refused_message_content_intent_stops_with_the_sentence_and_its_exit_code(
    tmp_path: Path, fake_ollama: FakeOllama
) -> None:
    with (
        FakeDiscord(message_content_allowed=False) as discord,
        BotProcess(
            tmp_path,
            DISCORD_TOKEN=TOKEN,
            OLLAMA_URL=fake_ollama.url,
            OLLACORD_DISCORD_API=discord.api_url,
            OLLACORD_DISCORD_GATEWAY=discord.gateway_url,
        ) as bot,
    ):
        # No terminal attached (as under Docker): it waits before exiting, so that a restart
        # policy does not send Discord the same refused IDENTIFY over and over.
        assert bot.wait_for_lines("event=fatal exit_code=4"), bot
        assert bot.signal() == EXIT_INTENTS_REFUSED, bot

    assert bot.err_lines("Message Content intent") == [FATAL_MESSAGES[EXIT_INTENTS_REFUSED] + "\n"]
    assert "MESSAGE_CONTENT_INTENT=false" in bot.stderr
    assert "Traceback" not in bot.stderr
    assert discord.gateway_connections == 1 and discord.identifies == 0


def test_a_normal_start_shows_no_voice_warnings_and_writes_the_log_file_too(
    tmp_path: Path, fake_ollama: FakeOllama
) -> None:
    log_file = tmp_path / "logs" / "bot.log"
    log_file.parent.mkdir()
    with (
        FakeDiscord() as discord,
        BotProcess(
            tmp_path,
            DISCORD_TOKEN=TOKEN,
            OLLAMA_URL=fake_ollama.url,
            OLLACORD_DISCORD_API=discord.api_url,
            OLLACORD_DISCORD_GATEWAY=discord.gateway_url,
            LOG_FILE=str(log_file),
        ) as bot,
    ):
        discord.create_guild()
        assert bot.wait_for_lines("event=ready"), bot
        assert bot.signal() == 0, bot

    assert "voice will NOT be supported" not in bot.stderr
    assert "PyNaCl" not in bot.stderr and "davey" not in bot.stderr
    logged = log_file.read_text()
    # The terminal keeps everything it showed before; the file gets the same lines.
    for event in ("event=start", "event=ready", "event=shutdown"):
        assert event in bot.stderr and event in logged, event
    assert TOKEN not in logged


def _not_a_database(tmp_path: Path) -> Path:
    path = tmp_path / "history.db"
    path.write_bytes(b"these are my notes, not a database\n" * 200)
    return path


def _a_directory(tmp_path: Path) -> Path:
    path = tmp_path / "history-dir"
    path.mkdir()
    return path


def _under_a_file(tmp_path: Path) -> Path:
    (tmp_path / "a-file").write_text("x")
    return tmp_path / "a-file" / "history.db"  # its "directory" is a file: nothing can be made


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (_not_a_database, "not a SQLite database"),
        (_a_directory, "is a directory"),
        (_under_a_file, "cannot be opened or created"),
    ],
)
@pytest.mark.parametrize("mode", ["bot", "console"])
def test_a_history_store_that_cannot_be_used_stops_before_connecting(
    tmp_path: Path, fake_ollama: FakeOllama, make: Any, says: str, mode: str
) -> None:
    path = make(tmp_path)
    before = path.read_bytes() if path.is_file() else None
    args = ("console",) if mode == "console" else ()
    with (
        FakeDiscord() as discord,
        BotProcess(
            tmp_path,
            *args,
            DISCORD_TOKEN=TOKEN,
            OLLAMA_URL=fake_ollama.url,
            OLLACORD_DISCORD_API=discord.api_url,
            OLLACORD_DISCORD_GATEWAY=discord.gateway_url,
            HISTORY_STORE=f"sqlite:///{path}",
        ) as bot,
    ):
        assert bot.wait(30) == 2, bot
        assert discord.requests == [] and discord.identifies == 0  # never connected
    [line] = bot.err_lines("HISTORY_STORE")
    assert str(path) in line and says in line, line
    assert "Traceback" not in bot.stderr
    if before is not None:
        assert path.read_bytes() == before  # a damaged file is never overwritten
