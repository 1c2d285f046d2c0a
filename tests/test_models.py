"""Model management: auto-pull at start-up, /pull for admins, retry while Ollama is down."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import discord
import pytest
from aiohttp import web
from simcord import Env

from bot import OllacordBot
from bot.model_manager import ModelManager, ModelState, PullTracker
from bot.ollama import OllamaClient, PullProgress
from bot.user_messages import NOT_ADMIN
from tests.conftest import SteppingClock
from tests.fake_ollama import FakeOllama

ADMIN_ID = 123456789012345678


def pull_requests(fake: FakeOllama) -> list[Any]:
    return [r for r in fake.requests if r.path == "/api/pull"]


# --- auto-pull at start-up (SimCord) ---------------------------------------------------------


@pytest.mark.fake_ollama(models=(), pull_delay=0.01)
async def test_a_missing_model_is_pulled_at_start_then_preloaded_and_answers(
    simcord_env: Env, fake_ollama: FakeOllama, caplog: pytest.LogCaptureFixture
) -> None:
    bot = simcord_env.bot
    assert isinstance(bot, OllacordBot)
    assert [r.json["model"] for r in pull_requests(fake_ollama)] == ["llama3.2"]
    assert bot.models.state is ModelState.READY
    # Preloaded: a chat request without messages (docs/ollama-protocol.md#loading).
    loads = [
        r
        for r in fake_ollama.requests
        if r.path == "/api/chat" and "messages" not in (r.json or {})
    ]
    assert len(loads) == 1
    startup = [r.getMessage() for r in caplog.get_records("setup")]
    progress = [line for line in startup if "event=pull_progress" in line]
    assert progress, "progress is logged (then at most every few seconds)"
    assert any("event=pull model=llama3.2 ok=true size_mb=" in line for line in startup)

    channel = simcord_env.create_guild().create_text_channel("general")
    alice = simcord_env.guild.add_member(simcord_env.create_user("alice"))
    await alice.send(channel, f"{bot.user.mention} hi")
    assert channel.last_message.content == "You said: alice: hi"


@pytest.mark.bot_env(AUTO_PULL="false")
@pytest.mark.fake_ollama(models=())
async def test_without_auto_pull_a_missing_model_is_reported_not_pulled(
    simcord_env: Env, fake_ollama: FakeOllama, caplog: pytest.LogCaptureFixture
) -> None:
    bot = simcord_env.bot
    assert isinstance(bot, OllacordBot)
    assert pull_requests(fake_ollama) == []
    assert bot.models.state is ModelState.MISSING
    assert any("fix='ollama pull llama3.2'" in r.getMessage() for r in caplog.get_records("setup"))


# --- /pull (SimCord) -------------------------------------------------------------------------


def guild_with(env: Env, *, admin_perm: bool) -> tuple[Any, Any]:
    guild = env.create_guild()
    channel = guild.create_text_channel("ops")
    roles = []
    if admin_perm:
        roles.append(
            guild.create_role("Admins", permissions=discord.Permissions(manage_guild=True))
        )
    member = guild.add_member(env.create_user("mod"), roles=roles)
    return channel, member


@pytest.mark.fake_ollama(pull_delay=0.01)
@pytest.mark.bot_clock(step=1.0)
async def test_pull_by_a_member_with_manage_server_shows_progress_and_success(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    channel, mod = guild_with(simcord_env, admin_perm=True)

    result = await mod.slash(channel, "pull", model="qwen3")

    callbacks = [r.json for r in simcord_env.http_requests if r.path.endswith("/callback")]
    assert callbacks[0]["type"] == 5  # deferred ("thinking") within Discord's 3 s
    assert [r.json["model"] for r in pull_requests(fake_ollama)][-1] == "qwen3"
    edits = [
        r.json["content"]
        for r in simcord_env.http_requests
        if r.method == "PATCH" and r.path.endswith("/messages/@original")
    ]
    assert any(e.startswith("⬇️ Pulling `qwen3`") and "%" in e for e in edits)
    assert edits[-1].startswith("✅ `qwen3` is ready")
    assert result.response.content.startswith("✅ `qwen3` is ready")


@pytest.mark.fake_ollama(pull_delay=0.01)
async def test_pull_progress_edits_are_at_most_one_a_second(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    # The clock does not move: after the first progress edit, only the final one goes out.
    channel, mod = guild_with(simcord_env, admin_perm=True)
    await mod.slash(channel, "pull", model="mistral")
    edits = [
        r.json["content"]
        for r in simcord_env.http_requests
        if r.method == "PATCH" and r.path.endswith("/messages/@original")
    ]
    assert len(edits) == 2
    assert edits[0].startswith("⬇️") and edits[1].startswith("✅")


@pytest.mark.bot_env(ADMIN_USER_IDS=str(ADMIN_ID))
async def test_pull_by_a_listed_admin_without_permissions(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    guild = simcord_env.create_guild()
    channel = guild.create_text_channel("ops")
    user = simcord_env.create_user("owner")
    user._user.id = ADMIN_ID  # the id listed in ADMIN_USER_IDS
    simcord_env.backend.users[ADMIN_ID] = user._user
    admin = guild.add_member(user)
    result = await admin.slash(channel, "pull", model="mistral")
    assert result.response.content.startswith("✅ `mistral` is ready")


async def test_pull_by_anyone_else_is_refused_ephemerally(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    channel, member = guild_with(simcord_env, admin_perm=False)
    result = await member.slash(channel, "pull", model="qwen3")
    assert result.ephemeral
    assert result.response.content == NOT_ADMIN
    assert pull_requests(fake_ollama) == []


async def test_pull_of_an_unknown_model_says_why(simcord_env: Env, fake_ollama: FakeOllama) -> None:
    channel, mod = guild_with(simcord_env, admin_perm=True)
    result = await mod.slash(channel, "pull", model="no-such-model")
    assert result.response.content == (
        "⚠️ Pulling `no-such-model` failed: pull model manifest: file does not exist"
    )


# --- the manager on its own (real timers, no SimCord) ----------------------------------------


async def test_unreachable_ollama_is_retried_with_backoff_until_it_answers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = FakeOllama(models=(), pull_delay=0.0)
    client = OllamaClient("http://127.0.0.1:9")  # nothing listens there yet
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 3:  # Ollama comes up after the third retry
            fake.start()
            client.base_url = fake.url

    manager = ModelManager(
        client, "llama3.2", clock=SteppingClock(1.0), sleep=sleep, retry_delays=(5, 10, 20)
    )
    try:
        await manager.run()
    finally:
        await client.close()
        fake.stop()
    assert sleeps == [5, 10, 20]
    assert manager.state is ModelState.READY
    assert sum("retry_in=" in r.getMessage() for r in caplog.records) == 3


async def test_an_ollama_answering_errors_at_start_is_retried_not_given_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A proxy in front of a still-starting Ollama answers 502 with an HTML page.
    app = web.Application()

    async def bad_gateway(request: web.Request) -> web.Response:
        return web.Response(
            status=502, text="<html>502 Bad Gateway</html>", content_type="text/html"
        )

    app.router.add_route("*", "/{tail:.*}", bad_gateway)
    runner = web.AppRunner(app, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    proxy_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    fake = FakeOllama(models=("llama3.2",))
    client = OllamaClient(f"http://127.0.0.1:{proxy_port}")
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        fake.start()  # Ollama is up behind the proxy now
        client.base_url = fake.url

    manager = ModelManager(client, "llama3.2", clock=SteppingClock(1.0), sleep=sleep)
    try:
        await manager.run()
    finally:
        await client.close()
        await runner.cleanup()
        fake.stop()
    assert len(sleeps) == 1
    assert manager.state is ModelState.READY
    assert any("502" in r.getMessage() and "retry_in=" in r.getMessage() for r in caplog.records)


async def test_busy_message_while_pulling(fake_ollama: FakeOllama) -> None:
    fake_ollama.remove_model("llama3.2")
    client = OllamaClient(fake_ollama.url)
    manager = ModelManager(client, "llama3.2", clock=SteppingClock(1.0))
    seen: list[str | None] = []

    async def observe(tracker: PullTracker) -> None:
        seen.append(manager.busy_message())

    manager.state = ModelState.PULLING
    await manager.pull("llama3.2", on_progress=observe)
    await client.close()
    assert any(m and "still downloading" in m and "%" in m for m in seen)
    assert manager.busy_message() is None


def test_pull_tracker_adds_up_layers() -> None:
    tracker = PullTracker()
    tracker.feed(PullProgress("pulling manifest"))
    assert tracker.percent == 0 and tracker.describe() == "pulling manifest"
    tracker.feed(
        PullProgress("pulling a", "sha256:a", total=300 * 1048576, completed=150 * 1048576)
    )
    tracker.feed(PullProgress("pulling b", "sha256:b", total=100 * 1048576))
    assert tracker.percent == 37
    assert tracker.describe() == "37% (150 of 400 MB)"
    tracker.feed(PullProgress("success"))
    assert tracker.percent == 100


def test_progress_is_logged_at_most_every_few_seconds(
    fake_ollama: FakeOllama, caplog: pytest.LogCaptureFixture
) -> None:
    fake_ollama.remove_model("llama3.2")
    caplog.set_level(logging.INFO)

    async def go() -> None:
        client = OllamaClient(fake_ollama.url)
        # A frozen clock: only the first progress line is logged, however many arrive.
        await ModelManager(client, "x", clock=SteppingClock(0.0)).pull("llama3.2")
        await client.close()

    asyncio.run(go())
    assert sum("event=pull_progress" in r.getMessage() for r in caplog.records) == 1
