"""Long conversations through the real bot: a budget from /api/show, a prefix-stable window,
rolling summaries, and per-channel settings (/model, /system, /status)."""

from __future__ import annotations

from typing import Any

import discord
import pytest
from simcord import Env

from bot import OllacordBot
from bot.context_window import SUMMARY_REQUEST_MARK, is_summary_request
from bot.user_messages import NOT_CONFIGURATOR
from tests.conftest import NO_LIMITS, SteppingClock, settings_for
from tests.fake_ollama import FakeOllama, Reply
from tests.helpers import bot_of, final_text, setup_channel

# num_ctx 1024, of which 256 are kept for the reply: prompts of at most 768 tokens.
SMALL = {"CONTEXT_TOKENS": "1024"}
PROMPT_BUDGET = 768


def summariser(fake: FakeOllama, failing: bool = False) -> list[str]:
    """Answer summary requests with numbered summaries (or a 500); others as usual."""
    made: list[str] = []

    def respond(messages: list[dict[str, Any]]) -> str | Reply | None:
        if not is_summary_request(messages):
            return None
        if failing:
            return Reply(status=500, status_message="model runner has unexpectedly stopped")
        made.append(f"SUMMARY-{len(made) + 1}: Alice talks about topics 0 and onwards.")
        return made[-1]

    fake.responder = respond
    return made


def is_summary_request_text(stats: Any) -> bool:
    return bool(stats.last_message.startswith(SUMMARY_REQUEST_MARK))


def long_message(i: int) -> str:
    return f"topic {i}: " + " ".join(f"detail{i}x{j}" for j in range(30))


def streamed(fake: FakeOllama) -> list[dict[str, Any]]:
    return [r for r in fake.chat_requests if r.get("stream") is not False]


async def test_num_ctx_is_the_models_context_capped_and_sent_explicitly(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    channel, alice = setup_channel(simcord_env)
    await alice.send(channel, f"{simcord_env.bot.user.mention} hi")
    assert [r.path for r in fake_ollama.requests].count("/api/show") == 1
    # /api/show says 131072; CONTEXT_TOKENS (default 8192) caps it.
    assert fake_ollama.chat_requests[-1]["options"]["num_ctx"] == 8192


@pytest.mark.fake_ollama(trained_context_length=2048)
async def test_a_model_with_a_small_context_gets_its_own_length(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    channel, alice = setup_channel(simcord_env)
    await alice.send(channel, f"{simcord_env.bot.user.mention} hi")
    assert fake_ollama.chat_requests[-1]["options"]["num_ctx"] == 2048


@pytest.mark.bot_env(**SMALL)
async def test_the_prompt_prefix_is_unchanged_between_turns_that_need_no_fold(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    channel, alice = setup_channel(simcord_env)
    mention = simcord_env.bot.user.mention
    await alice.send(channel, f"{mention} first")
    await alice.send(channel, f"{mention} second")
    first, second = streamed(fake_ollama)[-2:]
    assert second["messages"][: len(first["messages"])] == first["messages"]
    # Ollama re-evaluates only what follows the shared prefix.
    stats = fake_ollama.prompt_stats[-1]
    assert stats.cached > 0 and stats.evaluated == stats.total - stats.cached


@pytest.mark.bot_env(**SMALL)
async def test_a_fold_summarises_old_turns_keeps_the_newest_and_never_exceeds_the_budget(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    summaries = summariser(fake_ollama)
    channel, alice = setup_channel(simcord_env)
    mention = simcord_env.bot.user.mention
    for i in range(12):
        await alice.send(channel, f"{mention} {long_message(i)}")

    assert summaries, "old turns were folded into a summary"
    last = streamed(fake_ollama)[-1]["messages"]
    assert last[0]["role"] == "system" and summaries[-1] in last[0]["content"]
    contents = [m["content"] for m in last]
    assert contents[-1] == f"Alice: {long_message(11)}"
    assert f"Alice: {long_message(10)}" in contents  # the newest turns stay verbatim
    assert f"Alice: {long_message(0)}" not in contents
    # Ollama never had to drop anything, and no prompt went over the planned budget.
    chat_stats = [s for s in fake_ollama.prompt_stats if not is_summary_request_text(s)]
    assert all(not s.truncated for s in fake_ollama.prompt_stats)
    assert max(s.total for s in chat_stats) <= PROMPT_BUDGET
    state = await bot_of(simcord_env).store.get_state(f"discord:{channel.id}")
    assert state.summary == summaries[-1] and state.window_start > 0
    # Between folds the prefix stays: most turns re-evaluate only their own new part.
    cached = [s for s in chat_stats if s.cached > 0]
    assert len(cached) >= len(chat_stats) // 2


@pytest.mark.bot_env(**SMALL)
async def test_when_the_summary_fails_the_block_is_dropped_silently(
    simcord_env: Env, fake_ollama: FakeOllama, caplog: pytest.LogCaptureFixture
) -> None:
    summariser(fake_ollama, failing=True)
    channel, alice = setup_channel(simcord_env)
    mention = simcord_env.bot.user.mention
    for i in range(12):
        await alice.send(channel, f"{mention} {long_message(i)}")
    bot_id = simcord_env.bot.user.id
    replies = [m.content for m in channel.history() if m.author.id == bot_id]
    assert all(r.startswith("You said:") for r in replies)  # the user is told nothing
    drops = [r.getMessage() for r in caplog.records if "outcome=dropped" in r.getMessage()]
    assert drops and "Ollama failed to write it" in drops[0]  # the log says why
    metrics = bot_of(simcord_env).metrics.render().decode()
    dropped = next(
        line
        for line in metrics.splitlines()
        if line.startswith("ollacord_context_turns_dropped_total")
    )
    assert float(dropped.split()[-1]) > 0  # and a metric counts it
    assert 'ollacord_summaries_total{outcome="failed"}' in metrics
    last = streamed(fake_ollama)[-1]["messages"]
    assert last[0]["role"] == "user"  # no summary, the old block is gone
    # The next turns still fit.
    chat_stats = [s for s in fake_ollama.prompt_stats if not is_summary_request_text(s)]
    assert max(s.total for s in chat_stats) <= PROMPT_BUDGET


@pytest.mark.bot_env(**SMALL)
async def test_summaries_and_settings_survive_a_restart(
    simcord_env: Env, fake_ollama: FakeOllama, tmp_path: Any, clock: SteppingClock
) -> None:
    summaries = summariser(fake_ollama)
    fake_ollama.add_model("qwen3")
    env = {**SMALL, "HISTORY_STORE": f"sqlite:///{tmp_path}/h.db", "ADMIN_USER_IDS": ""}
    await bot_of(simcord_env).close_resources()
    await simcord_env.restart_bot(
        OllacordBot(settings_for(fake_ollama, env), clock=clock, discord_limits=NO_LIMITS)
    )
    channel, alice = setup_channel(
        simcord_env, permissions=discord.Permissions(manage_channels=True)
    )
    mention = simcord_env.bot.user.mention
    await alice.slash(channel, "model", name="qwen3")
    await alice.slash(channel, "system set", prompt="Answer like a pirate.")
    for i in range(12):
        await alice.send(channel, f"{mention} {long_message(i)}")
    assert summaries
    await bot_of(simcord_env).close_resources()

    await simcord_env.restart_bot(
        OllacordBot(settings_for(fake_ollama, env), clock=clock, discord_limits=NO_LIMITS)
    )
    await alice.send(channel, f"{mention} after the restart")
    await bot_of(simcord_env).close_resources()

    request = streamed(fake_ollama)[-1]
    assert request["model"] == "qwen3"
    assert request["messages"][0] == {"role": "system", "content": "Answer like a pirate."}
    assert summaries[-1] in request["messages"][1]["content"]
    assert request["messages"][-1]["content"] == "Alice: after the restart"


# --- /model ------------------------------------------------------------------------------------


async def test_model_autocomplete_offers_at_most_25_filtered_by_what_is_typed(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    for i in range(30):
        fake_ollama.add_model(f"qwen3:{i}b")
    fake_ollama.add_model("mistral")
    channel, alice = setup_channel(simcord_env)

    everything = await alice.autocomplete(channel, "model", "name", "")
    qwen = await alice.autocomplete(channel, "model", "name", "QWEN3:1")
    mistral = await alice.autocomplete(channel, "model", "name", "mis")

    assert len(everything) == 25
    assert {c["value"] for c in qwen} == {"qwen3:1b"} | {f"qwen3:{i}b" for i in range(10, 20)}
    assert [c["value"] for c in mistral] == ["mistral:latest"]


async def test_model_can_be_changed_by_members_with_manage_channels_only(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    fake_ollama.add_model("mistral")
    guild = simcord_env.create_guild()
    channel = guild.create_text_channel("general")
    mods = guild.create_role("Mods", permissions=discord.Permissions(manage_channels=True))
    mod = guild.add_member(simcord_env.create_user("mod"), roles=[mods])
    member = guild.add_member(simcord_env.create_user("member"))

    refused = await member.slash(channel, "model", name="mistral")
    assert refused.ephemeral and refused.response.content == NOT_CONFIGURATOR
    shown = await member.slash(channel, "model")
    assert shown.ephemeral and "llama3.2" in shown.response.content

    missing = await mod.slash(channel, "model", name="nonexistent")
    assert "has no model `nonexistent`" in final_text(missing)
    done = await mod.slash(channel, "model", name="mistral")
    assert done.ephemeral and "now uses `mistral`" in final_text(done)

    await member.send(channel, f"{simcord_env.bot.user.mention} hello")
    assert fake_ollama.chat_requests[-1]["model"] == "mistral"
    other = guild.create_text_channel("other")
    await member.send(other, f"{simcord_env.bot.user.mention} hello")
    assert fake_ollama.chat_requests[-1]["model"] == "llama3.2"  # other channels keep theirs

    await mod.slash(channel, "model", name="default")
    await member.send(channel, f"{simcord_env.bot.user.mention} hello again")
    assert fake_ollama.chat_requests[-1]["model"] == "llama3.2"


# --- /system -----------------------------------------------------------------------------------


async def test_system_prompt_set_show_clear_and_permissions(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    guild = simcord_env.create_guild()
    channel = guild.create_text_channel("general")
    admins = guild.create_role("Admins", permissions=discord.Permissions(manage_guild=True))
    admin = guild.add_member(simcord_env.create_user("admin"), roles=[admins])
    member = guild.add_member(simcord_env.create_user("member"))
    mention = simcord_env.bot.user.mention

    for action, options in (
        ("system set", {"prompt": "x"}),
        ("system show", {}),
        ("system clear", {}),
    ):
        refused = await member.slash(channel, action, **options)
        assert refused.ephemeral and refused.response.content == NOT_CONFIGURATOR

    result = await admin.slash(channel, "system set", prompt="Always answer in French.")
    assert result.ephemeral
    await member.send(channel, f"{mention} hello")
    assert fake_ollama.chat_requests[-1]["messages"][0] == {
        "role": "system",
        "content": "Always answer in French.",
    }
    shown = await admin.slash(channel, "system show")
    assert "Always answer in French." in shown.response.content

    await admin.slash(channel, "system clear")
    await member.send(channel, f"{mention} hello again")
    assert fake_ollama.chat_requests[-1]["messages"][0]["role"] == "user"


# --- /status -----------------------------------------------------------------------------------


@pytest.mark.bot_env(**SMALL)
async def test_status_shows_model_turns_summary_and_tokens(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    written = summariser(fake_ollama)
    channel, alice = setup_channel(simcord_env)
    mention = simcord_env.bot.user.mention
    before = await alice.slash(channel, "status")
    text = final_text(before)
    assert "`llama3.2`" in text and "Turns kept:** 0" in text and "none yet" in text
    for i in range(12):
        await alice.send(channel, f"{mention} {long_message(i)}")
    after = await alice.slash(channel, "status")
    text = final_text(after)
    assert after.ephemeral
    assert written, "a summary was written"
    assert f"Summary of older turns:** “{written[-1]}” (updated <t:" in text
    assert f"of {PROMPT_BUDGET:,} tokens" in text and "num_ctx 1,024" in text
    # /reset forgets the summary with the turns.
    await alice.slash(channel, "reset")
    assert "Summary of older turns:** none yet" in final_text(await alice.slash(channel, "status"))
