"""From a Discord message to a plain :class:`Question`: is it for the bot, which conversation,
what text the model should read. No I/O: only what discord.py hands over."""

from __future__ import annotations

import re
from dataclasses import dataclass

import discord

from ..turn import Attachment, UserMessage


def conversation_id(channel_id: int) -> str:
    """Each channel, thread and DM channel has its own id, hence its own history."""
    return f"discord:{channel_id}"


@dataclass(frozen=True)
class Question:
    """A message addressed to the bot, as plain values."""

    conversation: str
    channel_id: int
    message_id: int
    author_id: int
    author_name: str
    text: str  # the bot's mention removed, other mentions made readable
    in_guild: bool
    reply_to: int | None = None  # the message it replies to, if any
    attachments: tuple[Attachment, ...] = ()

    def user_message(self) -> UserMessage:
        # Several people share a server channel's history: tell the model who is speaking.
        speaker = self.author_name if self.in_guild else None
        return UserMessage(self.text, speaker=speaker, attachments=self.attachments)


def is_for_me(message: discord.Message, me: discord.abc.User | None) -> bool:
    """A DM, a mention of the bot (or of its own role), or a reply to one of its messages.
    Bots (ourselves included) are never answered, so two bots can never talk in a loop."""
    if me is None or message.author.bot:
        return False
    if message.guild is None:
        return True
    if me in message.mentions:
        return True
    self_role = message.guild.self_role
    if self_role is not None and self_role in message.role_mentions:
        return True
    reference = message.reference
    resolved = reference.resolved if reference is not None else None
    return isinstance(resolved, discord.Message) and resolved.author == me


def prompt_text(message: discord.Message, me: discord.abc.User | None) -> str:
    """The message text with the bot's mention removed and other mentions made readable."""
    text = message.content
    if me is not None:
        text = re.sub(rf"<@!?{me.id}>", "", text)
    if message.guild is not None and message.guild.self_role is not None:
        text = text.replace(f"<@&{message.guild.self_role.id}>", "")
    for user in message.mentions:
        text = re.sub(rf"<@!?{user.id}>", f"@{user.display_name}", text)
    for role in message.role_mentions:
        text = text.replace(f"<@&{role.id}>", f"@{role.name}")
    for channel in message.channel_mentions:
        text = text.replace(f"<#{channel.id}>", f"#{getattr(channel, 'name', channel.id)}")
    return text.strip()


def question_from(message: discord.Message, me: discord.abc.User | None) -> Question:
    reference = message.reference
    return Question(
        conversation=conversation_id(message.channel.id),
        channel_id=message.channel.id,
        message_id=message.id,
        author_id=message.author.id,
        author_name=message.author.display_name,
        text=prompt_text(message, me),
        in_guild=message.guild is not None,
        reply_to=reference.message_id if reference is not None else None,
        attachments=tuple(
            Attachment(a.filename, a.url, a.content_type, a.size) for a in message.attachments
        ),
    )
