"""Reasoning models: a live "thinking" status while they reason, only the answer on Discord and
in the history, and the reasoning shown privately to whoever presses the Reasoning button, also
after a restart. The ``think`` field goes only to models that can think."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import discord
import pytest
import pytest_asyncio
from simcord import Env

from bot import OllacordBot
from bot.history_store import Turn
from bot.user_messages import REASONING_ATTACHED, reasoning_shown
from tests.conftest import NO_LIMITS, SteppingClock, settings_for
from tests.fake_ollama import FakeOllama, Reply
from tests.helpers import bot_messages, bot_of, setup_channel, stored

THOUGHT = ["The user", " asks for", " a sum:", " 2 + 2 = 4."]


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/history.db"


@pytest_asyncio.fixture
async def simcord_bot(
    fake_ollama: FakeOllama, clock: SteppingClock, bot_env: dict[str, str], db: str
) -> AsyncIterator[OllacordBot]:
    settings = settings_for(fake_ollama, {"HISTORY_STORE": db, **bot_env})
    bot = OllacordBot(settings, clock=clock, discord_limits=NO_LIMITS)
    bot.models.retry_delays = (3600.0,)
    yield bot
    await bot.close_resources()


def labels(message: discord.Message) -> list[str]:
    return [
        child.label  # type: ignore[union-attr]
        for row in message.components
        for child in getattr(row, "children", [])
    ]


def shown(env: Env) -> list[str]:
    """Every text the bot put in a message (creates and edits), in order."""
    return [
        r.json["content"]
        for r in env.http_requests
        if r.method in ("POST", "PATCH") and r.json and "content" in r.json
    ]


@pytest.mark.fake_ollama(thinking_models=("llama3.2",))
@pytest.mark.bot_clock(step=1.0)
async def test_a_reasoning_model_shows_a_thinking_status_then_only_its_answer(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    channel, alice = setup_channel(simcord_env)
    fake_ollama.queue(Reply(thinking=THOUGHT, tokens=["It", " is 4."], token_delay=0.05))

    await alice.send(channel, f"{simcord_env.bot.user.mention} what is 2+2?")

    assert fake_ollama.chat_requests[0]["think"] is True  # THINKING=hide: it may reason
    texts = shown(simcord_env)
    assert any(t.startswith("💭 Thinking… ") and t.endswith(" s") for t in texts)
    [answer] = bot_messages(simcord_env, channel)
    assert answer.content == "It is 4."
    assert not any("2 + 2" in t for t in texts)  # the reasoning never reaches the channel
    assert labels(answer) == ["Regenerate", "Reasoning"]
    [_, kept] = await stored(simcord_env, channel)
    assert kept == Turn("assistant", "It is 4.") and kept.reasoning == "".join(THOUGHT)
    # Reasoning never enters a later prompt.
    await alice.send(channel, f"{simcord_env.bot.user.mention} and 3+3?")
    assert fake_ollama.chat_requests[-1]["messages"][1]["content"] == "It is 4."


@pytest.mark.fake_ollama(thinking_models=("llama3.2",))
async def test_the_reasoning_button_shows_it_privately_to_whoever_presses_also_after_a_restart(
    simcord_env: Env, fake_ollama: FakeOllama, clock: SteppingClock, db: str
) -> None:
    channel, alice = setup_channel(simcord_env)
    bob = simcord_env.guild.add_member(simcord_env.create_user("bob"))
    fake_ollama.queue(Reply(thinking=THOUGHT, tokens=["It", " is 4."]))
    await alice.send(channel, f"{simcord_env.bot.user.mention} what is 2+2?")
    [answer] = bot_messages(simcord_env, channel)

    pressed = await bob.click(answer, label="Reasoning")
    assert pressed.ephemeral and pressed.response.content == reasoning_shown("".join(THOUGHT))

    await bot_of(simcord_env).close_resources()
    await simcord_env.restart_bot(
        OllacordBot(
            settings_for(fake_ollama, {"HISTORY_STORE": db}), clock=clock, discord_limits=NO_LIMITS
        )
    )
    again = await alice.click(answer, label="Reasoning")
    assert again.ephemeral and "2 + 2 = 4." in again.response.content


@pytest.mark.fake_ollama(thinking_models=("llama3.2",))
async def test_long_reasoning_comes_as_a_file(simcord_env: Env, fake_ollama: FakeOllama) -> None:
    channel, alice = setup_channel(simcord_env)
    long_thought = [f" step {i} of a long chain of thought." for i in range(120)]
    fake_ollama.queue(Reply(thinking=long_thought, tokens=["Done."]))
    await alice.send(channel, f"{simcord_env.bot.user.mention} think hard")
    [answer] = bot_messages(simcord_env, channel)

    pressed = await alice.click(answer, label="Reasoning")

    assert pressed.ephemeral and pressed.response.content == REASONING_ATTACHED
    [file] = pressed.response.attachments
    assert file.filename == "reasoning.md"
    assert (await file.read()).decode().strip() == "".join(long_thought).strip()


@pytest.mark.fake_ollama(thinking_models=("llama3.2",))
async def test_an_older_answer_keeps_its_reasoning_button_but_loses_regenerate(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    channel, alice = setup_channel(simcord_env)
    mention = simcord_env.bot.user.mention
    fake_ollama.queue(Reply(thinking=THOUGHT, tokens=["One."]), Reply(tokens=["Two."]))
    await alice.send(channel, f"{mention} first")
    await alice.send(channel, f"{mention} second")
    first, second = bot_messages(simcord_env, channel)
    assert labels(first) == ["Reasoning"]
    assert labels(second) == ["Regenerate", "Reasoning"]


@pytest.mark.fake_ollama(thinking_models=("llama3.2",))
@pytest.mark.bot_env(THINKING="off")
async def test_thinking_off_asks_the_model_not_to_think(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    channel, alice = setup_channel(simcord_env)
    await alice.send(channel, f"{simcord_env.bot.user.mention} quick")
    assert fake_ollama.chat_requests[0]["think"] is False
    [answer] = bot_messages(simcord_env, channel)
    assert labels(answer) == ["Regenerate"]


async def test_think_tags_from_older_servers_are_kept_as_reasoning_too(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    channel, alice = setup_channel(simcord_env)
    fake_ollama.queue(
        Reply(tokens=["<think>", "The user wants", " a sum.", "</think>", "It is 4."])
    )
    await alice.send(channel, f"{simcord_env.bot.user.mention} what is 2+2?")
    [answer] = bot_messages(simcord_env, channel)
    assert answer.content == "It is 4."
    pressed: Any = await alice.click(answer, label="Reasoning")
    assert "The user wants a sum." in pressed.response.content
