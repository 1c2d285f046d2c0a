"""Access control through the real bot: channels, categories, threads, roles, users, blocks,
DMs, the once-an-hour note, and who may use which command."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import discord
import pytest
from simcord import Env

from bot import Settings
from bot.access import AccessPolicy, NoticeLimiter, Verdict
from bot.settings import ConfigError
from bot.user_messages import DM_NOT_ALLOWED, DMS_OFF, NOT_FOR_YOU, RESET_DONE, RESET_REFUSED
from tests.conftest import SteppingClock
from tests.fake_ollama import FakeOllama
from tests.helpers import bot_of, bot_texts, final_text


def policy(env: Env, **lists: Any) -> None:
    """Set the bot's lists as `.env` would (ids are only known once the world is built)."""
    bot_of(env).permissions.policy = replace(
        bot_of(env).permissions.policy,
        **{k: frozenset(v) if isinstance(v, set) else v for k, v in lists.items()},
    )


async def ask(env: Env, member: Any, channel: Any, text: str = "hello") -> None:
    await member.send(channel, f"{env.bot.user.mention} {text}")


@pytest.fixture
def world(simcord_env: Env) -> dict[str, Any]:
    guild = simcord_env.create_guild()
    ai_role = guild.create_role("AI")
    muted = guild.create_role("Muted")
    category = guild.create_category("Bots")
    return {
        "guild": guild,
        "ai_chat": guild.create_text_channel("ai-chat"),
        "general": guild.create_text_channel("general"),
        "in_category": guild.create_text_channel("lab", category=category),
        "category": category,
        "ai_role": ai_role,
        "muted": muted,
        "with_role": guild.add_member(simcord_env.create_user("ada"), roles=[ai_role]),
        "without_role": guild.add_member(simcord_env.create_user("bo")),
        "muted_member": guild.add_member(simcord_env.create_user("cy"), roles=[ai_role, muted]),
    }


async def test_only_allowed_channels_are_answered_and_others_stay_silent(
    simcord_env: Env, fake_ollama: FakeOllama, world: dict[str, Any]
) -> None:
    policy(simcord_env, allowed_channels={world["ai_chat"].id})
    member = world["without_role"]
    await ask(simcord_env, member, world["general"])
    assert bot_texts(simcord_env, world["general"]) == []  # silent, no model call
    assert fake_ollama.chat_requests == []
    await ask(simcord_env, member, world["ai_chat"])
    assert bot_texts(simcord_env, world["ai_chat"]) == ["You said: bo: hello"]


async def test_a_thread_follows_its_parent_and_a_category_allows_its_channels(
    simcord_env: Env, fake_ollama: FakeOllama, world: dict[str, Any]
) -> None:
    policy(simcord_env, allowed_channels={world["ai_chat"].id, world["category"].id})
    member = world["without_role"]
    simcord_env.backend.create_thread(world["ai_chat"].id, "deep dive", member.id)
    [thread] = world["ai_chat"].threads
    simcord_env.backend.create_thread(world["general"].id, "off topic", member.id)
    [other_thread] = world["general"].threads
    await ask(simcord_env, member, thread)
    await ask(simcord_env, member, world["in_category"])
    await ask(simcord_env, member, other_thread)
    assert bot_texts(simcord_env, thread) == ["You said: bo: hello"]
    assert bot_texts(simcord_env, world["in_category"]) == ["You said: bo: hello"]
    assert bot_texts(simcord_env, other_thread) == []


async def test_allowed_roles_and_users_with_a_note_once_an_hour(
    simcord_env: Env, fake_ollama: FakeOllama, world: dict[str, Any], clock: SteppingClock
) -> None:
    channel = world["ai_chat"]
    outsider = world["without_role"]
    policy(simcord_env, allowed_roles={world["ai_role"].id})
    await ask(simcord_env, world["with_role"], channel)
    await ask(simcord_env, outsider, channel, "one")
    await ask(simcord_env, outsider, channel, "two")  # within the hour: no second note
    assert bot_texts(simcord_env, channel) == ["You said: ada: hello", NOT_FOR_YOU]
    clock.now += 3601
    await ask(simcord_env, outsider, channel, "three")
    assert bot_texts(simcord_env, channel)[-1] == NOT_FOR_YOU
    assert len(fake_ollama.chat_requests) == 1  # refused messages never reach the model
    # A listed user needs no role.
    policy(simcord_env, allowed_users={outsider.id})
    await ask(simcord_env, outsider, channel, "four")
    assert bot_texts(simcord_env, channel)[-1] == "You said: bo: four"


async def test_a_block_always_wins_over_an_allow(
    simcord_env: Env, fake_ollama: FakeOllama, world: dict[str, Any]
) -> None:
    channel = world["ai_chat"]
    blocked = world["muted_member"]  # has the allowed AI role and the blocked Muted role
    policy(
        simcord_env,
        allowed_roles={world["ai_role"].id},
        allowed_users={blocked.id},
        blocked_roles={world["muted"].id},
    )
    await ask(simcord_env, blocked, channel)
    assert bot_texts(simcord_env, channel) == [NOT_FOR_YOU]
    policy(simcord_env, blocked_roles=frozenset(), blocked_users={world["with_role"].id})
    await ask(simcord_env, world["with_role"], channel)
    assert bot_texts(simcord_env, channel)[-1] == NOT_FOR_YOU
    assert fake_ollama.chat_requests == []


async def test_dms_can_be_turned_off_with_one_sentence_an_hour(
    simcord_env: Env, fake_ollama: FakeOllama, world: dict[str, Any]
) -> None:
    policy(simcord_env, allow_dms=False)
    member = world["with_role"]
    await member.send_dm("hello")
    await member.send_dm("hello again")
    assert bot_texts(simcord_env, member.user.dm_channel) == [DMS_OFF]
    assert fake_ollama.chat_requests == []


async def test_with_allowed_roles_a_dm_needs_that_role_in_a_shared_server(
    simcord_env: Env, fake_ollama: FakeOllama, world: dict[str, Any]
) -> None:
    policy(simcord_env, allowed_roles={world["ai_role"].id})
    await world["with_role"].send_dm("hi")
    await world["without_role"].send_dm("hi")
    assert bot_texts(simcord_env, world["with_role"].user.dm_channel) == ["You said: hi"]
    assert bot_texts(simcord_env, world["without_role"].user.dm_channel) == [DM_NOT_ALLOWED]


async def test_reset_follows_the_talk_rules_or_admins_only(
    simcord_env: Env, fake_ollama: FakeOllama, world: dict[str, Any]
) -> None:
    channel = world["ai_chat"]
    policy(simcord_env, allowed_roles={world["ai_role"].id})
    allowed = await world["with_role"].slash(channel, "reset")
    refused = await world["without_role"].slash(channel, "reset")
    assert allowed.response.content == RESET_DONE
    assert refused.ephemeral and refused.response.content == RESET_REFUSED
    policy(simcord_env, reset_requires_admin=True)
    refused = await world["with_role"].slash(channel, "reset")
    assert refused.ephemeral and refused.response.content == RESET_REFUSED
    admins = world["guild"].create_role(
        "Admins", permissions=discord.Permissions(manage_guild=True)
    )
    admin = world["guild"].add_member(simcord_env.create_user("root"), roles=[admins])
    assert (await admin.slash(channel, "reset")).response.content == RESET_DONE


async def test_status_shows_the_lists_to_admins_only(
    simcord_env: Env, fake_ollama: FakeOllama, world: dict[str, Any]
) -> None:
    channel = world["ai_chat"]
    policy(simcord_env, allowed_roles={world["ai_role"].id})
    admins = world["guild"].create_role(
        "Admins", permissions=discord.Permissions(manage_guild=True)
    )
    admin = world["guild"].add_member(simcord_env.create_user("root"), roles=[admins])

    shown = final_text(await admin.slash(channel, "status"))
    assert str(world["ai_role"].id) in shown
    # Admins also see the Ollama servers and their state (which URL, up, busy, models).
    assert f"- {fake_ollama.url}: up, 0/1 busy here, 1 models" in shown
    member_view = final_text(await world["with_role"].slash(channel, "status"))
    assert str(world["ai_role"].id) not in member_view
    assert fake_ollama.url not in member_view


# --- the pure rules and the settings -------------------------------------------------------------


def test_verdicts() -> None:
    p = AccessPolicy(
        allowed_roles=frozenset({1}),
        allowed_users=frozenset({10}),
        blocked_users=frozenset({11}),
        blocked_roles=frozenset({2}),
    )
    assert p.user_verdict(10, []) is Verdict.ALLOWED
    assert p.user_verdict(12, [1]) is Verdict.ALLOWED
    assert p.user_verdict(12, []) is Verdict.NOT_ALLOWED
    assert p.user_verdict(11, [1]) is Verdict.BLOCKED
    assert p.user_verdict(10, [1, 2]) is Verdict.BLOCKED
    assert AccessPolicy().user_verdict(99, []) is Verdict.ALLOWED


def test_notices_once_per_person_per_hour() -> None:
    clock = SteppingClock(0.0)
    notices = NoticeLimiter(clock)
    assert notices.should_tell("refused", 1)
    assert not notices.should_tell("refused", 1)
    assert notices.should_tell("refused", 2)
    clock.now += 3600
    assert notices.should_tell("refused", 1)


def test_lists_come_from_env_and_bad_entries_name_the_variable_and_value() -> None:
    settings = Settings.from_env(
        {
            "ALLOWED_CHANNEL_IDS": "111111111111111111",
            "ALLOWED_ROLE_IDS": "222222222222222222,333333333333333333",
            "BLOCKED_USER_IDS": "444444444444444444",
            "ALLOW_DMS": "false",
            "RESET_REQUIRES_ADMIN": "true",
        }
    )
    p = AccessPolicy.from_settings(settings)
    assert p.allowed_channels == {111111111111111111}
    assert p.allowed_roles == {222222222222222222, 333333333333333333}
    assert p.blocked_users == {444444444444444444} and not p.allow_dms and p.reset_requires_admin
    for name in (
        "ALLOWED_CHANNEL_IDS",
        "ALLOWED_ROLE_IDS",
        "ALLOWED_USER_IDS",
        "BLOCKED_USER_IDS",
        "BLOCKED_ROLE_IDS",
    ):
        with pytest.raises(ConfigError, match=f"{name}.*'#ai-chat'"):
            Settings.from_env({name: "123456789012345678, #ai-chat"})


def test_the_readme_example_is_valid_configuration(tmp_path: Any) -> None:
    """The worked example in the README parses as a `.env` and means what it says."""
    from pathlib import Path

    from dotenv import dotenv_values

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    example = readme.split("Worked example", 1)[1].split("```ini\n", 1)[1].split("```", 1)[0]
    env_file = tmp_path / ".env"
    env_file.write_text(example)
    values = {k: v for k, v in dotenv_values(env_file).items() if v is not None}
    p = AccessPolicy.from_settings(Settings.from_env(values))
    assert p.allowed_channels == {1180000000000000001}
    assert p.allowed_roles == {1180000000000000002}
    assert p.admin_users == {1180000000000000003, 1180000000000000004}
    assert p.allow_dms and not p.reset_requires_admin
