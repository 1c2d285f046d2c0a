"""Show it a picture, hand it a file, quote someone: images reach vision models (and only
those), text files are read into the message, quoted messages come along, and whatever cannot
be used gets a plain sentence while the text is still answered."""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from PIL import Image
from simcord import Env

from bot import OllacordBot
from bot.user_messages import no_vision
from tests.conftest import NO_LIMITS, SteppingClock, settings_for
from tests.fake_ollama import FakeOllama
from tests.helpers import bot_messages, bot_of, setup_channel

VISION = {"OLLAMA_MODEL": "gemma3"}


def photo(width: int = 2000, height: int = 1500) -> bytes:
    """A real JPEG (noise, like a photo's detail), bigger than the bot sends on."""
    image = Image.effect_noise((width, height), 60).convert("RGB")
    out = io.BytesIO()
    image.save(out, "JPEG", quality=80)
    return out.getvalue()


def small_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(out, "PNG")
    return out.getvalue()


SMALL_PNG = small_png()


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/history.db"


@pytest_asyncio.fixture
async def simcord_bot(
    fake_ollama: FakeOllama, clock: SteppingClock, bot_env: dict[str, str], db: str
) -> AsyncIterator[OllacordBot]:
    bot = OllacordBot(
        settings_for(fake_ollama, {"HISTORY_STORE": db, **bot_env}),
        clock=clock,
        discord_limits=NO_LIMITS,
    )
    bot.models.retry_delays = (3600.0,)
    yield bot
    await bot.close_resources()


def request_images(fake: FakeOllama, index: int = -1) -> list[int]:
    """How many images each message of a chat request carried."""
    return [len(m.get("images") or []) for m in fake.chat_requests[index]["messages"]]


@pytest.mark.fake_ollama(vision_models=("gemma3",))
@pytest.mark.bot_env(**VISION)
async def test_an_image_reaches_a_vision_model_and_again_until_it_is_two_questions_old(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    channel, alice = setup_channel(simcord_env)
    mention = simcord_env.bot.user.mention
    await alice.send(channel, f"{mention} what is this?", attachments=[("photo.jpg", photo())])

    assert request_images(fake_ollama) == [1]
    [[(width, height, kind)]] = fake_ollama.received_images[-1]
    assert (width, height) == (1024, 768) and kind == "jpeg"  # downscaled, long side 1024
    [reply] = bot_messages(simcord_env, channel)
    assert reply.content.endswith("(and I see 1 image)")

    await alice.send(channel, f"{mention} and the colours?")
    assert request_images(fake_ollama) == [1, 0, 0]  # sent again with the earlier question
    await alice.send(channel, f"{mention} anything else?")
    assert request_images(fake_ollama) == [0, 0, 0, 0, 0]  # IMAGE_HISTORY_TURNS (2) later
    first = fake_ollama.chat_requests[-1]["messages"][0]["content"]
    assert "photo.jpg" in first and "not shown" in first  # a placeholder names it


async def test_a_model_that_cannot_see_gets_no_image_and_the_user_is_told(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    channel, alice = setup_channel(simcord_env)
    await alice.send(
        channel, f"{simcord_env.bot.user.mention} look", attachments=[("red.png", SMALL_PNG)]
    )
    assert request_images(fake_ollama) == [0]
    assert "images" not in fake_ollama.chat_requests[-1]["messages"][0]
    [reply] = bot_messages(simcord_env, channel)
    assert reply.content.startswith("You said: Alice: look")
    assert reply.content.endswith(no_vision("llama3.2"))


@pytest.mark.fake_ollama(vision_models=("gemma3",))
@pytest.mark.bot_env(**VISION)
async def test_a_corrupt_image_a_huge_file_and_a_binary_get_sentences_and_the_text_is_answered(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    channel, alice = setup_channel(simcord_env)
    files = [
        ("broken.png", b"\\x89PNG\\r\\n\\x1a\\n" + b"garbage" * 100),
        ("huge.bin", b"\\0" * (20 * 1024 * 1024)),
        ("tools.zip", b"PK\\x03\\x04" + bytes(range(256)) * 20),
    ]
    await alice.send(channel, f"{simcord_env.bot.user.mention} here you go", attachments=files)

    [reply] = bot_messages(simcord_env, channel)
    assert reply.content.startswith("You said: Alice: here you go")
    for name in ("broken.png", "huge.bin", "tools.zip"):
        assert name in reply.content  # each gets its sentence
    assert request_images(fake_ollama) == [0]


@pytest.mark.bot_env(MAX_TEXT_ATTACHMENT_CHARS="120")
async def test_a_text_file_is_read_into_the_message_with_its_name_and_cut_at_the_cap(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    channel, alice = setup_channel(simcord_env)
    code = "".join(f"print({i})\\n" for i in range(40))  # about 400 characters
    await alice.send(
        channel,
        f"{simcord_env.bot.user.mention} what does this do?",
        attachments=[("script.py", code.encode())],
    )
    sent = fake_ollama.chat_requests[-1]["messages"][-1]["content"]
    assert sent.startswith("Alice: what does this do?")
    assert "script.py" in sent and "```py" in sent and "print(0)" in sent
    assert "print(39)" not in sent  # cut at the cap
    [reply] = bot_messages(simcord_env, channel)
    assert "script.py" in reply.content.split("You said:")[-1].splitlines()[-1]  # said so


async def test_a_quoted_message_is_part_of_the_question(
    simcord_env: Env, fake_ollama: FakeOllama
) -> None:
    channel, alice = setup_channel(simcord_env)
    bob = simcord_env.guild.add_member(simcord_env.create_user("bob", global_name="Bob"))
    said = await bob.send(channel, "The mitochondria is the powerhouse of the cell.")

    await alice.send(channel, f"{simcord_env.bot.user.mention} explain this", reply_to=said)

    sent = fake_ollama.chat_requests[-1]["messages"][-1]["content"]
    assert sent.startswith("Alice: explain this")
    assert "Bob" in sent and "> The mitochondria is the powerhouse of the cell." in sent


@pytest.mark.fake_ollama(vision_models=("gemma3",))
@pytest.mark.bot_env(**VISION)
async def test_images_are_kept_in_the_history_across_a_restart(
    simcord_env: Env, fake_ollama: FakeOllama, clock: SteppingClock, db: str
) -> None:
    channel, alice = setup_channel(simcord_env)
    mention = simcord_env.bot.user.mention
    await alice.send(channel, f"{mention} remember this", attachments=[("red.png", SMALL_PNG)])
    sent_before = fake_ollama.chat_requests[-1]["messages"][0]["images"]

    await bot_of(simcord_env).close_resources()
    await simcord_env.restart_bot(
        OllacordBot(
            settings_for(fake_ollama, {"HISTORY_STORE": db, **VISION}),
            clock=clock,
            discord_limits=NO_LIMITS,
        )
    )
    await alice.send(channel, f"{mention} what colour was it?")

    again: Any = fake_ollama.chat_requests[-1]["messages"][0]["images"]
    assert again == sent_before  # the same image, from the store, not from Discord
    assert Image.open(io.BytesIO(base64.b64decode(again[0]))).size == (40, 30)
