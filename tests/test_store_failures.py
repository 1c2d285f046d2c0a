"""The history store failing while the bot runs (Redis stopped, here a real redis-server): one
clear sentence in Discord, a log line with the cause, nothing half-written; when it is back the
conversation goes on from what was stored."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from simcord import Env

from bot import OllacordBot
from bot.history_store import StoreError
from bot.user_messages import STORE_UNAVAILABLE, STORE_UNAVAILABLE_COMMAND
from tests.conftest import NO_LIMITS, SteppingClock, settings_for, until
from tests.fake_ollama import FakeOllama, Reply
from tests.helpers import bot_messages, setup_channel
from tests.redis_server import RedisServer, started_redis


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = started_redis(tmp_path)
    yield server
    server.stop()


@pytest.fixture
async def redis_env(
    simcord_env: Env, fake_ollama: FakeOllama, redis_server: RedisServer, clock: SteppingClock
) -> AsyncIterator[Env]:
    default = simcord_env.bot
    assert isinstance(default, OllacordBot)
    await default.close_resources()
    bot = OllacordBot(
        settings_for(fake_ollama, {"HISTORY_STORE": redis_server.url}),
        clock=clock,
        discord_limits=NO_LIMITS,
    )
    await simcord_env.restart_bot(bot)
    yield simcord_env
    await bot.close_resources()


def prompt(fake: FakeOllama, index: int = -1) -> list[str]:
    return [m["content"] for m in fake.chat_requests[index]["messages"]]


async def test_redis_down_gets_one_sentence_and_the_conversation_resumes_when_it_is_back(
    redis_env: Env,
    fake_ollama: FakeOllama,
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    channel, alice = setup_channel(redis_env)
    mention = redis_env.bot.user.mention
    await alice.send(channel, f"{mention} the password is swordfish")

    redis_server.stop()
    await alice.send(channel, f"{mention} are you there?")
    replies = bot_messages(redis_env, channel)
    assert replies[-1].content == STORE_UNAVAILABLE
    assert len(fake_ollama.chat_requests) == 1  # no answer without the history
    assert "outcome=store_error" in caplog.text
    # The cause, naming the server (its lease is the first thing a turn asks Redis for).
    assert f"127.0.0.1:{redis_server.port}" in caplog.text
    assert "HISTORY_STORE" in caplog.text
    result = await alice.slash(channel, "reset")
    assert result.response.content == STORE_UNAVAILABLE_COMMAND
    # The tree's error handler saw it (SimCord records what reached it; reading acknowledges).
    [error] = redis_env.errors
    assert isinstance(error.__cause__, StoreError)
    assert "Traceback" not in caplog.text

    redis_server.start()  # same port and directory: its append-only file comes back
    await alice.send(channel, f"{mention} what is the password?")
    assert prompt(fake_ollama) == [
        "Alice: the password is swordfish",
        "You said: Alice: the password is swordfish",
        "Alice: what is the password?",
    ]
    assert bot_messages(redis_env, channel)[-1].content == (
        "You said: Alice: what is the password?"
    )


async def test_redis_gone_before_an_answer_is_stored_keeps_the_answer_on_discord_only(
    redis_env: Env,
    fake_ollama: FakeOllama,
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    channel, alice = setup_channel(redis_env)
    mention = redis_env.bot.user.mention
    fake_ollama.queue(Reply(tokens=[f" w{i}" for i in range(30)], token_delay=0.03))
    redis_env.backend.create_message(channel.id, alice.id, f"{mention} talk a while")
    assert await until(lambda: bool(bot_messages(redis_env, channel)))
    redis_server.stop()  # while the answer streams: it is shown, but cannot be kept
    await redis_env.settle()
    [reply] = bot_messages(redis_env, channel)
    assert reply.content == "".join(f" w{i}" for i in range(30)).strip()
    assert "outcome=not_stored" in caplog.text

    redis_server.start()
    await alice.send(channel, f"{mention} and now?")
    # The history holds no half of that exchange: the next prompt starts clean.
    assert prompt(fake_ollama) == ["Alice: and now?"]
