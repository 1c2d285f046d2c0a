"""`python -m bot` as a user starts it: missing token, bad settings, a token Discord rejects."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from bot import Settings, create_bot
from bot.discord.runner import EXIT_TOKEN_REJECTED, FATAL_MESSAGES
from bot.ollama_pool import OllamaPool
from tests.bot_process import BotProcess
from tests.fake_ollama import FakeOllama

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "MTAxMjM0NTY3ODkw.Gabcde.this-is-a-fake-token-value"


def run_bot(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "OLLAMA_"))}
    return subprocess.run(
        [sys.executable, "-m", "bot"],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # no .env here
        env={**clean, "PYTHONPATH": str(ROOT), "HISTORY_STORE": "memory://", **env},
        timeout=60,
        check=False,
    )


def test_missing_token_explains_how_to_get_one(tmp_path: Path) -> None:
    done = run_bot(tmp_path)
    assert done.returncode == 2
    assert "DISCORD_TOKEN is not set" in done.stderr
    assert "discord.com/developers/applications" in done.stderr


def test_invalid_setting_names_the_variable(tmp_path: Path) -> None:
    done = run_bot(tmp_path, DISCORD_TOKEN=TOKEN, EDIT_INTERVAL="soon")
    assert done.returncode == 2
    assert "EDIT_INTERVAL" in done.stderr and "'soon'" in done.stderr


def test_an_ollama_url_with_a_bad_port_stops_before_connecting(tmp_path: Path) -> None:
    done = run_bot(tmp_path, DISCORD_TOKEN=TOKEN, OLLAMA_URL="http://localhost:abc")
    assert done.returncode == 2
    assert "OLLAMA_URL" in done.stderr and "port" in done.stderr


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("OLLAMA_URL=not-a-url\n")
    done = run_bot(tmp_path)
    assert done.returncode == 2
    assert "OLLAMA_URL" in done.stderr


@dataclass
class RejectingDiscord:
    api_url: str
    requests: list[str] = field(default_factory=list)


@pytest.fixture
def discord_rejecting_tokens() -> Iterator[RejectingDiscord]:
    """A stand-in for Discord's REST API that answers 401 to every token, as Discord does."""
    import asyncio

    app = web.Application()
    rejecting = RejectingDiscord("")

    async def unauthorized(request: web.Request) -> web.Response:
        rejecting.requests.append(request.path)
        return web.Response(
            status=401,
            text='{"message": "401: Unauthorized", "code": 0}',
            content_type="application/json",
        )

    app.router.add_route("*", "/{tail:.*}", unauthorized)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, shutdown_timeout=0.2)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    rejecting.api_url = f"http://127.0.0.1:{port}/api/v10"
    yield rejecting
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.run_until_complete(runner.cleanup())
    loop.close()


def test_invalid_token_is_said_plainly_and_never_logged(
    tmp_path: Path, discord_rejecting_tokens: RejectingDiscord, fake_ollama: FakeOllama
) -> None:
    with BotProcess(
        tmp_path,
        DISCORD_TOKEN=TOKEN,
        OLLAMA_URL=fake_ollama.url,
        OLLACORD_DISCORD_API=discord_rejecting_tokens.api_url,
        LOG_LEVEL="DEBUG",
    ) as bot:
        # No terminal attached (as under Docker): it waits before exiting, so a restart policy
        # cannot send Discord the refused token again and again; a signal ends the wait.
        assert bot.wait_for_lines("event=fatal exit_code=3"), bot
        assert bot.signal() == EXIT_TOKEN_REJECTED, bot

    assert bot.err_lines("Discord rejected DISCORD_TOKEN") == [
        FATAL_MESSAGES[EXIT_TOKEN_REJECTED] + "\n"
    ]
    assert "Traceback" not in bot.stderr
    assert TOKEN not in bot.stderr + bot.stdout
    assert "this-is-a-fake-token-value" not in bot.stderr + bot.stdout
    assert discord_rejecting_tokens.requests == ["/api/v10/users/@me"]  # tried once, no retry


def test_in_a_terminal_a_rejected_token_exits_at_once(
    tmp_path: Path, discord_rejecting_tokens: RejectingDiscord, fake_ollama: FakeOllama
) -> None:
    primary, terminal = pty.openpty()
    try:
        with BotProcess(
            tmp_path,
            stdin=terminal,
            DISCORD_TOKEN=TOKEN,
            OLLAMA_URL=fake_ollama.url,
            OLLACORD_DISCORD_API=discord_rejecting_tokens.api_url,
        ) as bot:
            assert bot.wait(60) == EXIT_TOKEN_REJECTED, bot  # no signal needed
    finally:
        os.close(primary)
        os.close(terminal)
    assert "Discord rejected DISCORD_TOKEN" in bot.stderr
    assert "event=fatal" not in bot.stderr


async def test_close_releases_the_ollama_session_and_the_store(
    fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    settings = Settings.from_env(
        {"OLLAMA_URL": fake_ollama.url, "HISTORY_STORE": f"sqlite:///{tmp_path}/h.db"}
    )
    bot = create_bot(settings)
    assert await bot.ollama.list_models() == ["llama3.2:latest"]
    pool = bot.ollama
    assert isinstance(pool, OllamaPool)
    [backend] = pool.backends
    session = backend.client._session
    assert session is not None and not session.closed
    await bot.close()
    assert session.closed
    assert backend.client._session is None
