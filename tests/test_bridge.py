"""The core bridge, end to end: real discord.py machinery (SimCord) + the fake Ollama server.

Each test drives the bot as a Discord user would and asserts what Discord ends up showing,
which REST calls the bot made, and what the fake Ollama received.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import discord
import pytest
from simcord import Env

from bot import OllacordBot
from bot.history_store import Turn
from bot.user_messages import RESET_DONE, RESET_STOPPED
from tests.conftest import NO_LIMITS, SteppingClock, settings_for, until
from tests.fake_ollama import FakeOllama, Reply
from tests.helpers import bot_messages, setup_channel, stored


def edits_of(env: Env, message: discord.Message) -> list[str]:
    return [
        r.json["content"]
        for r in env.http_requests
        if r.method == "PATCH" and r.path.endswith(f"/messages/{message.id}")
    ]


def chat_messages(fake: FakeOllama, index: int = -1) -> list[dict[str, str]]:
    return [
        {"role": m["role"], "content": m["content"]} for m in fake.chat_requests[index]["messages"]
    ]


# --- streaming -------------------------------------------------------------------------------


@pytest.mark.bot_clock(step=1.0)
async def test_mention_streams_a_reply_with_several_edits_and_the_right_final_text(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    channel, alice = setup_channel(simcord_env)
    # Tokens come 50 ms apart, as from a real model: the stream is read at Ollama's pace and
    # Discord is updated behind it.
    fake_ollama.queue(Reply(tokens=["Hello", " there", ",", " friend", "!"], token_delay=0.05))

    question = await alice.send(channel, f"{simcord_env.bot.user.mention} say hello")

    [reply] = bot_messages(simcord_env, channel)
    assert reply.content == "Hello there, friend!"
    assert reply.reference is not None and reply.reference.message_id == question.id
    # Every read of the stepping clock moves it 1 s, so each token may edit: the reply grows
    # one token per edit, each edit carrying the full text so far. (The last token may show in
    # an intermediate edit before the final one, which adds the buttons: the stream's done line
    # comes a token's delay later.)
    edits = edits_of(simcord_env, reply)
    assert [e for i, e in enumerate(edits) if i == 0 or edits[i - 1] != e] == [
        "Hello there",
        "Hello there,",
        "Hello there, friend",
        "Hello there, friend!",
    ]
    paths = [(r.method, r.path) for r in simcord_env.http_requests]
    typing_at = paths.index(("POST", f"/channels/{channel.id}/typing"))
    created_at = paths.index(("POST", f"/channels/{channel.id}/messages"))
    assert typing_at < created_at, "typing indicator shows until the first token"
    request = fake_ollama.chat_requests[0]
    assert request["model"] == "llama3.2"
    assert request["stream"] is True
    assert "think" not in request  # llama3.2 cannot think: the field is not sent
    assert chat_messages(fake_ollama) == [{"role": "user", "content": "Alice: say hello"}]


async def test_edits_are_coalesced_when_the_interval_has_not_passed(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    # The default test clock never moves: only the first text and the final text go out.
    channel, alice = setup_channel(simcord_env)
    fake_ollama.queue(Reply(tokens=["One", " two", " three", " four"], token_delay=0.05))

    await alice.send(channel, f"{simcord_env.bot.user.mention} count")

    [reply] = bot_messages(simcord_env, channel)
    assert reply.content == "One two three four"
    assert edits_of(simcord_env, reply) == ["One two three four"]
    create = [
        r.json["content"]
        for r in simcord_env.http_requests
        if r.method == "POST" and r.path == f"/channels/{channel.id}/messages"
    ]
    assert create == ["One"]


@pytest.mark.bot_clock(step=0.4)
async def test_edit_interval_is_measured_with_the_injected_clock(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    channel, alice = setup_channel(simcord_env)
    tokens = [f" t{i}" for i in range(12)]
    fake_ollama.queue(Reply(tokens=tokens, token_delay=0.03))

    await alice.send(channel, f"{simcord_env.bot.user.mention} go")

    [reply] = bot_messages(simcord_env, channel)
    edits = edits_of(simcord_env, reply)
    assert reply.content == "".join(tokens).strip()
    # Two clock reads per update (check + mark), 0.4 s each: fewer edits than tokens, more than one.
    assert 1 < len(edits) < len(tokens)
    assert edits[-1] == reply.content


async def test_reply_over_2000_chars_with_a_code_block_is_split_into_valid_messages(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    channel, alice = setup_channel(simcord_env)
    code = "\n".join(
        f"    result_{i} = compute_value({i}, factor=2)  # step {i}" for i in range(70)
    )
    answer = (
        "Here is the script you asked for. " * 15
        + "\n\n```python\ndef main():\n"
        + code
        + "\n```\n\nThat is all. "
        + "It handles every case you listed. " * 25
    )
    assert len(answer) > 5000
    words = re.findall(r"\s*\S+", answer)
    fake_ollama.queue(Reply(tokens=words))

    await alice.send(channel, f"{simcord_env.bot.user.mention} write the script")

    replies = bot_messages(simcord_env, channel)
    assert len(replies) >= 3
    for message in replies:
        assert 0 < len(message.content) <= 2000
        assert message.content.count("```") % 2 == 0, message.content
    # The code block was cut between lines, closed, and reopened with its language.
    assert any(m.content.startswith("```python\n") for m in replies[1:])
    joined = re.sub(
        r"\s", "", "".join(m.content for m in replies).replace("```python", "").replace("```", "")
    )
    assert joined == re.sub(r"\s", "", answer.replace("```python", "").replace("```", ""))
    # The first message is the Discord reply; the rest follow in the channel.
    assert replies[0].reference is not None
    history = await stored(simcord_env, channel)
    assert history[-1] == Turn("assistant", answer.rstrip())


# --- history ---------------------------------------------------------------------------------


async def test_history_is_carried_into_the_next_request_of_the_same_channel_only(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    general, alice = setup_channel(simcord_env)
    other = simcord_env.guild.create_text_channel("other")
    mention = simcord_env.bot.user.mention

    await alice.send(general, f"{mention} my name is Alice")
    await alice.send(general, f"{mention} what is my name?")
    await alice.send(other, f"{mention} hello from other")

    assert chat_messages(fake_ollama, 1) == [
        {"role": "user", "content": "Alice: my name is Alice"},
        {"role": "assistant", "content": "You said: Alice: my name is Alice"},
        {"role": "user", "content": "Alice: what is my name?"},
    ]
    assert chat_messages(fake_ollama, 2) == [{"role": "user", "content": "Alice: hello from other"}]


async def test_a_dm_and_a_thread_keep_their_own_history(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    channel, alice = setup_channel(simcord_env)
    mention = simcord_env.bot.user.mention
    simcord_env.backend.create_thread(channel.id, "deep dive", alice.id)
    [thread] = channel.threads

    await alice.send(channel, f"{mention} channel message")
    await alice.send(thread, f"{mention} thread one")
    await alice.send_dm("dm one")  # any DM is for the bot, no mention needed
    await alice.send(thread, f"{mention} thread two")
    await alice.send_dm("dm two")

    thread_two = chat_messages(fake_ollama, 3)
    assert [m["content"] for m in thread_two] == [
        "Alice: thread one",
        "You said: Alice: thread one",
        "Alice: thread two",
    ]
    dm_two = chat_messages(fake_ollama, 4)
    # No speaker prefix in a DM: there is only one person.
    assert [m["content"] for m in dm_two] == ["dm one", "You said: dm one", "dm two"]
    assert bot_messages(simcord_env, thread)[-1].content == "You said: Alice: thread two"
    dm_replies = bot_messages(simcord_env, alice.user.dm_channel)
    assert [m.content for m in dm_replies] == ["You said: dm one", "You said: dm two"]


@pytest.mark.bot_env(SYSTEM_PROMPT="You are terse.")
async def test_system_prompt_leads_every_request(simcord_env: Env, fake_ollama: FakeOllama) -> None:
    channel, alice = setup_channel(simcord_env)
    await alice.send(channel, f"{simcord_env.bot.user.mention} one")
    await alice.send(channel, f"{simcord_env.bot.user.mention} two")
    for index in (0, 1):
        assert chat_messages(fake_ollama, index)[0] == {
            "role": "system",
            "content": "You are terse.",
        }


async def test_reset_empties_the_history_and_confirms_ephemerally(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    channel, alice = setup_channel(simcord_env)
    mention = simcord_env.bot.user.mention
    await alice.send(channel, f"{mention} remember 42")
    assert len(await stored(simcord_env, channel)) == 2

    result = await alice.slash(channel, "reset")

    assert result.ephemeral
    assert result.response.content == RESET_DONE
    assert await stored(simcord_env, channel) == []
    await alice.send(channel, f"{mention} what number?")
    assert chat_messages(fake_ollama) == [{"role": "user", "content": "Alice: what number?"}]


async def test_reset_in_one_channel_leaves_others_alone(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    general, alice = setup_channel(simcord_env)
    other = simcord_env.guild.create_text_channel("other")
    await alice.send(general, f"{simcord_env.bot.user.mention} a")
    await alice.send(other, f"{simcord_env.bot.user.mention} b")
    await alice.slash(general, "reset")
    assert await stored(simcord_env, general) == []
    assert len(await stored(simcord_env, other)) == 2


async def test_reset_in_a_dm(simcord_env: Env, fake_ollama: FakeOllama) -> None:
    _, alice = setup_channel(simcord_env)
    await alice.send_dm("hello")
    dm = alice.user.dm_channel
    assert len(await stored(simcord_env, dm)) == 2
    result = await alice.user.slash("reset")
    assert result.ephemeral
    assert await stored(simcord_env, dm) == []


async def test_reset_stops_a_reply_that_is_still_streaming(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    channel, alice = setup_channel(simcord_env)
    fake_ollama.queue(Reply(tokens=[f" word{i}" for i in range(400)], token_delay=0.02))
    simcord_env.backend.create_message(
        channel.id, alice.id, f"{simcord_env.bot.user.mention} talk for a long time"
    )
    # Wait until the reply shows its first words, then reset mid-stream.
    assert await until(lambda: bool(bot_messages(simcord_env, channel)))

    result = await alice.slash(channel, "reset")
    await simcord_env.settle()

    assert result.response.content == RESET_DONE
    [reply] = bot_messages(simcord_env, channel)
    assert reply.content.startswith("word0")
    assert reply.content.endswith(RESET_STOPPED)
    assert "word399" not in reply.content
    assert await stored(simcord_env, channel) == []
    assert await asyncio.to_thread(fake_ollama.wait_for, lambda f: f.cancelled == 1)


async def test_history_survives_a_restart_with_the_same_sqlite_file(
    simcord_env: Env, fake_ollama: FakeOllama, tmp_path: Any, clock: SteppingClock
) -> None:
    # A fresh bot on the same file must know the earlier exchange.
    db = tmp_path / "history.db"
    first = simcord_env.bot
    assert isinstance(first, OllacordBot)
    await first.close_resources()
    first_bot = OllacordBot(
        settings_for(fake_ollama, {"HISTORY_STORE": f"sqlite:///{db}"}),
        clock=clock,
        discord_limits=NO_LIMITS,
    )
    await simcord_env.restart_bot(first_bot)
    channel, alice = setup_channel(simcord_env)
    await alice.send(channel, f"{simcord_env.bot.user.mention} the password is swordfish")
    await first_bot.close_resources()

    second_bot = OllacordBot(
        settings_for(fake_ollama, {"HISTORY_STORE": f"sqlite:///{db}"}),
        clock=clock,
        discord_limits=NO_LIMITS,
    )
    await simcord_env.restart_bot(second_bot)
    await alice.send(channel, f"{simcord_env.bot.user.mention} what is the password?")
    await second_bot.close_resources()

    assert chat_messages(fake_ollama) == [
        {"role": "user", "content": "Alice: the password is swordfish"},
        {"role": "assistant", "content": "You said: Alice: the password is swordfish"},
        {"role": "user", "content": "Alice: what is the password?"},
    ]


# --- order -----------------------------------------------------------------------------------


async def test_messages_in_one_channel_are_answered_one_at_a_time_in_order(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    channel, alice = setup_channel(simcord_env)
    bob = simcord_env.guild.add_member(simcord_env.create_user("bob", global_name="Bob"))
    carol = simcord_env.guild.add_member(simcord_env.create_user("carol", global_name="Carol"))
    mention = simcord_env.bot.user.mention
    fake_ollama.queue(
        Reply(tokens=["first", " answer"], token_delay=0.05),
        Reply(tokens=["second", " answer"]),
        Reply(tokens=["third", " answer"]),
    )
    asked = [
        simcord_env.backend.create_message(channel.id, user.id, f"{mention} {text}").id
        for user, text in ((alice, "one"), (bob, "two"), (carol, "three"))
    ]
    await simcord_env.settle()

    # Each question got its own answer (the waiting ones first showed their place in the queue
    # in that same message).
    answers = {m.reference.message_id: m.content for m in bot_messages(simcord_env, channel)}
    assert [answers[i] for i in asked] == ["first answer", "second answer", "third answer"]
    # Each request saw every earlier exchange: they ran one after another.
    assert [len(r["messages"]) for r in fake_ollama.chat_requests] == [1, 3, 5]
    assert [m["content"] for m in chat_messages(fake_ollama)][-1] == "Carol: three"


@pytest.mark.fake_ollama(num_parallel=2)
@pytest.mark.bot_env(MAX_CONCURRENT="2")
async def test_different_channels_stream_in_parallel(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    general, alice = setup_channel(simcord_env)
    other = simcord_env.guild.create_text_channel("other")
    mention = simcord_env.bot.user.mention
    slow = [f" w{i}" for i in range(40)]
    fake_ollama.queue(Reply(tokens=slow, token_delay=0.02), Reply(tokens=slow, token_delay=0.02))
    simcord_env.backend.create_message(general.id, alice.id, f"{mention} one")
    simcord_env.backend.create_message(other.id, alice.id, f"{mention} two")

    # Both requests are generating at the same moment: one channel does not wait for another.
    assert await fake_ollama.wait_for_async(lambda f: f.active == 2)
    await simcord_env.settle()
    assert bot_messages(simcord_env, general)[0].content == "".join(slow).strip()
    assert bot_messages(simcord_env, other)[0].content == "".join(slow).strip()


# --- input handling --------------------------------------------------------------------------


async def test_model_output_with_everyone_is_posted_without_pinging(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    channel, alice = setup_channel(simcord_env)
    bob = simcord_env.guild.add_member(simcord_env.create_user("bob"))
    role = simcord_env.guild.create_role("Mods", mentionable=True)
    fake_ollama.queue(
        Reply(tokens=["Hey", " @everyone", " and", " @here", f" {role.mention}", f" {bob.mention}"])
    )

    await alice.send(channel, f"{simcord_env.bot.user.mention} ping everyone")

    [reply] = bot_messages(simcord_env, channel)
    assert "@everyone" in reply.content and "@here" in reply.content
    assert bob.mention in reply.content and role.mention in reply.content
    # The bot has the Mention Everyone permission here, so only allowed_mentions stops the pings.
    stored_message = simcord_env.backend.messages[channel.id][reply.id]
    assert stored_message.mention_everyone is False
    assert stored_message.ping_role_ids == []
    assert stored_message.ping_user_ids == [alice.id]  # the asker, notified of the reply
    for request in simcord_env.http_requests:
        if request.method in ("POST", "PATCH") and "/messages" in request.path and request.json:
            allowed = request.json.get("allowed_mentions")
            assert allowed is not None, f"{request.method} {request.path} without allowed_mentions"
            assert allowed["parse"] == []


async def test_messages_from_bots_are_ignored(simcord_env: Env, fake_ollama: FakeOllama) -> None:
    channel, _ = setup_channel(simcord_env)
    robot = simcord_env.guild.add_member(simcord_env.create_user("robot", bot=True))
    await robot.send(channel, f"{simcord_env.bot.user.mention} hello bot")
    assert fake_ollama.chat_requests == []
    assert bot_messages(simcord_env, channel) == []


async def test_messages_not_for_the_bot_are_ignored(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    channel, alice = setup_channel(simcord_env)
    await alice.send(channel, "just chatting with friends @everyone")
    assert fake_ollama.chat_requests == []


async def test_a_bare_mention_gets_a_hint_instead_of_an_empty_prompt(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    channel, alice = setup_channel(simcord_env)
    await alice.send(channel, f"  {simcord_env.bot.user.mention}  ")
    [reply] = bot_messages(simcord_env, channel)
    assert "Mention me with a question" in reply.content
    assert fake_ollama.chat_requests == []


async def test_replying_to_the_bot_continues_the_conversation(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    channel, alice = setup_channel(simcord_env)
    await alice.send(channel, f"{simcord_env.bot.user.mention} first")
    [answer] = bot_messages(simcord_env, channel)
    await alice.send(channel, "and a follow-up", reply_to=answer)
    assert [m["content"] for m in chat_messages(fake_ollama)][-1] == "Alice: and a follow-up"


async def test_other_mentions_are_made_readable_in_the_prompt(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    channel, alice = setup_channel(simcord_env)
    bob = simcord_env.guild.add_member(simcord_env.create_user("bob", global_name="Bob"))
    await alice.send(channel, f"{simcord_env.bot.user.mention} say hi to {bob.mention}")
    assert chat_messages(fake_ollama)[-1]["content"] == "Alice: say hi to @Bob"


async def test_a_mention_with_only_a_file_it_cannot_read_is_told_why(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    channel, alice = setup_channel(simcord_env)
    zipped = b"PK\x03\x04" + bytes(range(256)) * 4
    await alice.send(channel, simcord_env.bot.user.mention, attachments=[("stuff.zip", zipped)])
    [reply] = bot_messages(simcord_env, channel)
    assert "stuff.zip" in reply.content  # not the "mention me with a question" hint
    assert fake_ollama.chat_requests == []


@pytest.mark.bot_env(MAX_INPUT_CHARS="100")
async def test_a_message_longer_than_the_limit_is_clearly_refused(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    channel, alice = setup_channel(simcord_env)
    await alice.send(channel, f"{simcord_env.bot.user.mention} " + "blah " * 60)
    [reply] = bot_messages(simcord_env, channel)
    assert "too long" in reply.content
    assert fake_ollama.chat_requests == []
    assert await stored(simcord_env, channel) == []


async def test_a_2000_char_user_message_is_answered(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    channel, alice = setup_channel(simcord_env)
    mention = simcord_env.bot.user.mention
    text = "x" * (2000 - len(mention) - 1)
    fake_ollama.queue(Reply(tokens=["ok"]))
    await alice.send(channel, f"{mention} {text}")
    assert bot_messages(simcord_env, channel)[0].content == "ok"


async def test_think_tags_left_in_the_content_by_older_servers_are_hidden(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    channel, alice = setup_channel(simcord_env)
    fake_ollama.queue(
        Reply(tokens=["<thi", "nk>", "The user wants", " a sum.", "</think>", "\n\n", "It is 4."])
    )

    await alice.send(channel, f"{simcord_env.bot.user.mention} what is 2+2?")

    [reply] = bot_messages(simcord_env, channel)
    assert reply.content == "It is 4."
    assert (await stored(simcord_env, channel))[-1] == Turn("assistant", "It is 4.")


# --- Discord failures ------------------------------------------------------------------------


@pytest.mark.bot_clock(step=1.0)
async def test_a_failing_edit_does_not_end_the_reply(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    channel, alice = setup_channel(simcord_env)
    fake_ollama.queue(Reply(tokens=["a", "b", "c", "d"]))
    simcord_env.inject_error("PATCH", "/channels/*/messages/*", status=500, times=1)

    await alice.send(channel, f"{simcord_env.bot.user.mention} letters")

    [reply] = bot_messages(simcord_env, channel)
    assert reply.content == "abcd"
    assert len(await stored(simcord_env, channel)) == 2
