"""What a question carries besides its text, made ready for the model: its files and the
message it quotes, downloaded from Discord's CDN and prepared by :mod:`bot.attachments`
(images downscaled and re-encoded, text files inlined), off the event loop."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import discord

from ..attachments import Prepared, prepare, text_for_prompt
from ..history_store import StoredImage
from ..settings import Settings
from ..turn import UserMessage
from ..user_messages import attachment_not_downloaded, attachment_text_cut, attachment_too_big
from .failures import DISCORD_FAILURES
from .intake import Question

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Gathered:
    """The user's message with what came with it, and the sentences telling the asker what
    could not be used (each names its file)."""

    message: UserMessage
    notes: tuple[str, ...]

    @property
    def empty(self) -> bool:
        """Nothing for the model to read: no text, no file it could use."""
        message = self.message
        return not (message.text or message.extra or message.images)


async def gather(
    question: Question,
    attachments: Sequence[discord.Attachment],
    quoted: discord.Message | None,
    settings: Settings,
) -> Gathered:
    """Download and prepare the question's attachments and the quoted message's (under the
    same limits, each message on its own)."""
    notes: list[str] = []
    own = await _prepare(attachments, settings, notes)
    theirs = await _prepare(quoted.attachments if quoted is not None else (), settings, notes)
    parts: list[str] = []
    if question.quoted is not None:
        parts.append(quote_block(question.quoted.author_name, question.quoted.text))
        parts += [text_for_prompt(t) for t in theirs.texts]
    parts += [text_for_prompt(t) for t in own.texts]
    images = tuple(
        StoredImage(i.filename, base64.b64encode(i.data).decode("ascii"))
        for i in (*own.images, *theirs.images)
    )
    message = UserMessage(
        question.text, speaker=question.speaker, extra="\n\n".join(parts), images=images
    )
    return Gathered(message, tuple(notes))


async def _prepare(
    attachments: Sequence[discord.Attachment], settings: Settings, notes: list[str]
) -> Prepared:
    files: list[tuple[str, str | None, bytes]] = []
    for attachment in attachments:
        if attachment.size > settings.max_attachment_bytes:
            # Refused from the size Discord declares: never downloaded.
            notes.append(
                attachment_too_big(
                    attachment.filename, attachment.size, settings.max_attachment_bytes
                )
            )
            continue
        try:
            data = await attachment.read()
        except DISCORD_FAILURES as exc:
            log.warning(
                "event=attachment_download_failed file=%r cause=%r", attachment.filename, exc
            )
            notes.append(attachment_not_downloaded(attachment.filename))
            continue
        files.append((attachment.filename, attachment.content_type, data))
    if not files:
        return Prepared((), (), ())
    # Decoding and downscaling a photo takes a good part of a second: not on the event loop.
    prepared = await asyncio.to_thread(
        prepare,
        files,
        max_images=settings.max_images,
        max_side=settings.image_max_side,
        max_text_chars=settings.max_text_attachment_chars,
        max_bytes=settings.max_attachment_bytes,
    )
    notes += [skipped.reason for skipped in prepared.skipped]
    notes += [attachment_text_cut(t.filename, len(t.text)) for t in prepared.texts if t.truncated]
    return prepared


def quote_block(author: str, text: str) -> str:
    """A quoted message as the model reads it after the question."""
    quoted = "\n".join(f"> {line}" for line in (text or "(no text)").splitlines())
    return f"[Replying to a message from {author}:]\n{quoted}"
