"""From a Discord message to a plain :class:`Question`: is it for the bot, which conversation,
what text the model should read. No I/O: only what discord.py hands over."""

from __future__ import annotations

import re
from dataclasses import dataclass

import discord

from ..turn import UserMessage


def conversation_id(channel_id: int) -> str:
    """Each channel, thread and DM channel has its own id, hence its own history."""
    return f"discord:{channel_id}"


@dataclass(frozen=True)
class Attachment:
    """A file that came with a message, as a plain record."""

    filename: str
    content_type: str | None
    size: int  # bytes, as Discord declares it (known before downloading)


@dataclass(frozen=True)
class Quoted:
    """Someone else's message that the question replies to ("@bot what does this mean?")."""

    author_name: str
    text: str
    attachments: tuple[Attachment, ...] = ()


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
    quoted: Quoted | None = None

    @property
    def speaker(self) -> str | None:
        # Several people share a server channel's history: tell the model who is speaking.
        return self.author_name if self.in_guild else None

    def user_message(self) -> UserMessage:
        return UserMessage(self.text, speaker=self.speaker)


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


def quoted_message(message: discord.Message, me: discord.abc.User | None) -> discord.Message | None:
    """The message this one replies to, if it is someone else's (a reply to the bot's own
    message just continues the conversation)."""
    reference = message.reference
    resolved = reference.resolved if reference is not None else None
    if not isinstance(resolved, discord.Message) or (me is not None and resolved.author == me):
        return None
    return resolved


def attachments_of(message: discord.Message) -> tuple[Attachment, ...]:
    return tuple(Attachment(a.filename, a.content_type, a.size) for a in message.attachments)


def question_from(message: discord.Message, me: discord.abc.User | None) -> Question:
    reference = message.reference
    quoted = quoted_message(message, me)
    return Question(
        conversation=conversation_id(message.channel.id),
        channel_id=message.channel.id,
        message_id=message.id,
        author_id=message.author.id,
        author_name=message.author.display_name,
        text=prompt_text(message, me),
        in_guild=message.guild is not None,
        reply_to=reference.message_id if reference is not None else None,
        attachments=attachments_of(message),
        quoted=(
            Quoted(quoted.author.display_name, prompt_text(quoted, me), attachments_of(quoted))
            if quoted is not None
            else None
        ),
    )
