"""A very long answer does not become a wall of messages: past MAX_REPLY_MESSAGES, the last
message says the answer continues in answer.md, attached with the whole answer."""

from __future__ import annotations

import pytest
from simcord import Env

from bot.user_messages import LENGTH_NOTE, REPLY_OVERFLOW
from tests.fake_ollama import FakeOllama, Reply
from tests.helpers import bot_messages, setup_channel, stored

# About 12,000 characters in paragraphs: six or seven Discord messages' worth.
PARAGRAPHS = [f"Paragraph {i}: " + "word " * 110 + "\n\n" for i in range(21)]


@pytest.mark.bot_env(MAX_REPLY_MESSAGES="4")
async def test_a_12000_character_answer_ends_with_an_attached_answer_md(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    whole = "".join(PARAGRAPHS)
    assert 11_500 < len(whole) < 12_500
    channel, alice = setup_channel(simcord_env)
    fake_ollama.queue(Reply(tokens=PARAGRAPHS))

    await alice.send(channel, f"{simcord_env.bot.user.mention} tell me everything")

    messages = bot_messages(simcord_env, channel)
    assert len(messages) == 4
    assert messages[0].content.startswith("Paragraph 0:")
    assert messages[-1].content == REPLY_OVERFLOW
    [file] = messages[-1].attachments
    assert file.filename == "answer.md"
    assert (await file.read()).decode() == whole  # the whole answer, exactly as written
    [_, answer] = await stored(simcord_env, channel)
    assert answer.content == whole


@pytest.mark.bot_env(MAX_REPLY_MESSAGES="2")
async def test_a_note_on_an_overflowing_answer_stays_visible(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    channel, alice = setup_channel(simcord_env)
    fake_ollama.queue(Reply(tokens=PARAGRAPHS, done_reason="length"))

    await alice.send(channel, f"{simcord_env.bot.user.mention} tell me everything")

    last = bot_messages(simcord_env, channel)[-1]
    assert last.content == f"{REPLY_OVERFLOW}\n\n{LENGTH_NOTE}"
    assert [a.filename for a in last.attachments] == ["answer.md"]
