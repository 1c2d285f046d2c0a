"""Faults and bad input, round two: what a user sees, what is stored and what is logged when an
answer is cut by the length limit, a proxy answers with HTML, a stream breaks after valid text,
and a message sits near the length limit."""

from __future__ import annotations

import pytest
from simcord import Env

from bot.ollama_errors import StreamInterrupted
from bot.user_messages import LENGTH_MARK, LENGTH_NOTE, cut_off_note
from tests.fake_ollama import FakeOllama, Reply
from tests.helpers import bot_texts, setup_channel, stored


def reply_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("event=reply ")]


async def test_an_answer_cut_by_the_length_limit_is_marked_on_discord_and_in_the_history(
    simcord_env: Env, fake_ollama: FakeOllama, caplog: pytest.LogCaptureFixture
) -> None:
    channel, alice = setup_channel(simcord_env)
    mention = simcord_env.bot.user.mention
    cut = ["The three steps are:", " first,", " you open the"]
    fake_ollama.queue(Reply(tokens=cut, done_reason="length"), Reply(tokens=["Sorry."]))

    await alice.send(channel, f"{mention} how do I do it?")

    [shown] = bot_texts(simcord_env, channel)
    assert shown == f"The three steps are: first, you open the\n\n{LENGTH_NOTE}"
    [_, answer] = await stored(simcord_env, channel)
    assert answer.content == f"The three steps are: first, you open the\n\n{LENGTH_MARK}"
    assert "outcome=length" in reply_lines(caplog)[-1]
    # On the next turn the model reads that its previous answer was cut.
    await alice.send(channel, f"{mention} go on")
    assert fake_ollama.chat_requests[-1]["messages"][1]["content"].endswith(LENGTH_MARK)


PROXY_PAGE = (
    b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body>"
    b"<center><h1>502 Bad Gateway</h1></center><hr><center>nginx/1.25.3</center>"
    b"</body></html>\n" * 4
)


@pytest.mark.parametrize("status", [500, 502])
async def test_an_html_error_page_stays_in_the_log_and_the_channel_gets_a_sentence(
    simcord_env: Env, fake_ollama: FakeOllama, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    channel, alice = setup_channel(simcord_env)
    fake_ollama.queue(Reply(status=status, error_body=PROXY_PAGE))

    await alice.send(channel, f"{simcord_env.bot.user.mention} hello")

    [shown] = bot_texts(simcord_env, channel)
    assert f"HTTP {status}" in shown and "log" in shown
    assert "<" not in shown and "nginx" not in shown
    assert "nginx/1.25.3" in reply_lines(caplog)[-1]  # the body is in the log
    assert await stored(simcord_env, channel) == []


async def test_text_before_a_bad_line_in_the_same_read_is_shown_with_the_cut_off_note(
    simcord_env: Env, fake_ollama: FakeOllama, caplog: pytest.LogCaptureFixture
) -> None:
    channel, alice = setup_channel(simcord_env)
    tokens = ["Partial", " zebra", " answer", " never", " seen"]
    fake_ollama.queue(Reply(tokens=tokens, garbage_after=3))

    await alice.send(channel, f"{simcord_env.bot.user.mention} tell me about zebras")

    [shown] = bot_texts(simcord_env, channel)
    note = cut_off_note(StreamInterrupted("malformed", ""))
    assert shown == f"Partial zebra answer\n\n{note}"
    assert "outcome=cut_off" in reply_lines(caplog)[-1]
    assert await stored(simcord_env, channel) == []


@pytest.mark.bot_env(MAX_INPUT_CHARS="100")
async def test_the_input_limit_counts_what_the_user_typed_not_the_name_prefix(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    channel, alice = setup_channel(simcord_env)
    typed = "x" * 95  # "Alice: " + 95 characters is 102, but Alice typed 95

    await alice.send(channel, f"{simcord_env.bot.user.mention} {typed}")

    assert fake_ollama.chat_requests[-1]["messages"][-1]["content"] == f"Alice: {typed}"
    assert bot_texts(simcord_env, channel) == [f"You said: Alice: {typed}"]
