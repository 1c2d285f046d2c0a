"""Answering on Discord: a question (or a Regenerate press) becomes a reply that the engine
streams into the channel through the scheduler; Stop ends one.

This is where the checks a user meets happen in order: is it for the bot, may they talk
here, is the bot restarting, is there a question at all, is one of theirs already waiting,
is the queue full. Every path ends in an answer, a reaction, or deliberate silence (a
channel the bot does not serve).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable
from functools import partial
from typing import Any

import discord

from ..app import Services
from ..discord_scheduler import DiscordScheduler
from ..history_store import latest_question, reasoning_of
from ..turn import UserMessage
from ..user_messages import (
    BUSY,
    BUTTON_EXPIRED,
    HINT,
    INTERNAL_ERROR,
    NOT_LATEST,
    NOT_YOURS_TO_REGENERATE,
    NOT_YOURS_TO_STOP,
    ONE_AT_A_TIME,
    REASONING_ATTACHED,
    REASONING_GONE,
    RESTARTING,
    TOO_MANY_WAITING,
    reasoning_shown,
)
from .attachments import Gathered, gather
from .buttons import ButtonPress, shown_controls
from .ephemeral import tell
from .failures import DISCORD_FAILURES
from .intake import Question, conversation_id, is_for_me, question_from, quoted_message
from .latest_answers import LatestAnswers
from .open_replies import OpenReplies
from .permissions import Permissions
from .reply_target import PERMISSION_CODES, DiscordReplySink, DiscordReplyTarget

log = logging.getLogger(__name__)

# Reasoning up to this long is shown in the message itself; longer, as a file.
REASONING_INLINE_CHARS = 1900

# Questions one person may have waiting (or being answered) in one channel; they are answered
# in order, with the same round-robin fairness as everyone's.
PENDING_PER_PERSON = 2
# On a question that will not be answered: "not taken" (⏳ would promise an answer).
NOT_TAKEN_REACTION = "✋"
# On a question whose answer Discord refused to show (a missing permission).
UNDELIVERED_REACTION = "⚠️"


class Answers:
    """Mentions in, replies out; also the Stop and Regenerate buttons' controls."""

    def __init__(
        self,
        services: Services,
        scheduler: DiscordScheduler,
        permissions: Permissions,
        me: Callable[[], discord.ClientUser | None],
    ) -> None:
        self.services = services
        self.engine = services.engine
        self.metrics = services.metrics
        self.scheduler = scheduler
        self.permissions = permissions
        self.me = me
        # Only a channel's latest answer keeps its Regenerate button.
        self.latest = LatestAnswers()
        self.open_replies = OpenReplies(services)
        self._told_missing_permission: set[int] = set()

    # --- mentions ----------------------------------------------------------------------------

    async def on_message(self, message: discord.Message) -> None:
        me = self.me()
        if not is_for_me(message, me):
            return
        if not await self.services.first_to_see(f"message:{message.id}"):
            log.info("event=message_taken_by_another_process message=%s", message.id)
            return
        refusal = await self.permissions.check_message(message)
        if refusal is not None:
            if refusal.tell is not None:
                await self.say(message, refusal.tell)
            return
        if self.engine.closing:
            # Stop taking new mentions during a graceful shutdown; say so rather than ignore.
            await self.say(message, RESTARTING)
            return
        question = question_from(message, me)
        if not (question.text or question.attachments or question.quoted):
            await self.say(message, HINT.format(name=me.display_name if me else "bot"))
            return
        queue = self.engine.queue
        if queue.pending(question.conversation, question.author_id) >= PENDING_PER_PERSON:
            await self._too_many(message, question)
            return
        if queue.full():
            log.info("event=queue_full channel=%s waiting=%d", question.channel_id, queue.waiting)
            await self.say(message, BUSY)
            return
        gathered = await gather(
            question, message.attachments, quoted_message(message, me), self.services.settings
        )
        if gathered.empty:  # only files it could not use: say why, and nothing more
            hint = HINT.format(name=me.display_name if me else "bot")
            await self.say(message, "\n".join(gathered.notes) or hint)
            return
        await self._answer(message, question, gathered)

    async def _too_many(self, message: discord.Message, question: Question) -> None:
        """Beyond PENDING_PER_PERSON, a question is not queued. Its reaction says "not taken"
        (never ⏳, which would promise an answer), and the person is told why once an hour."""
        log.info(
            "event=not_queued reason=too_many channel=%s user=%s",
            question.channel_id,
            question.author_id,
        )
        with contextlib.suppress(*DISCORD_FAILURES):
            await message.add_reaction(NOT_TAKEN_REACTION)
        if self.permissions.notices.should_tell("too_many", question.author_id):
            await self.say(message, TOO_MANY_WAITING.format(count=PENDING_PER_PERSON))

    async def _answer(
        self, message: discord.Message, question: Question, gathered: Gathered
    ) -> None:
        await self._reply(
            DiscordReplyTarget(message, self.metrics),
            message.channel,
            question.conversation,
            gathered.message,
            footer="\n".join(gathered.notes) or None,
            user_id=question.author_id,
            ref=question.message_id,
            log_fields=f"channel={question.channel_id} message={question.message_id} "
            f"author={question.author_id}",
        )

    async def _reply(
        self,
        target: DiscordReplyTarget,
        channel: discord.abc.Messageable,
        conversation: str,
        user_message: UserMessage,
        *,
        footer: str | None = None,
        **respond: Any,
    ) -> None:
        """Stream the engine's answer into ``target``'s messages, then tidy up: the latest
        answer keeps the Regenerate button; a refused reply leaves a reaction and a fix."""
        channel_id = target.source.channel.id
        writer = self.scheduler.reply(channel_id, target)
        shown = [m for m in target.messages if m is not None]
        if shown:  # Regenerate: the earlier answer is what shows until replaced
            writer.shown = [m.content for m in shown]
            writer.shown_buttons = [shown_controls(m) for m in shown]
            await self.open_replies.opened(conversation, shown[-1])
        target.on_new_message = partial(self.open_replies.opened, conversation)
        # The earlier answer of a Regenerate stays readable while the new one waits its turn.
        sink = DiscordReplySink(writer, channel, footer=footer, show_queue=not writer.shown)
        try:
            await self.engine.respond(conversation, user_message, sink, **respond)
        except Exception:
            # Not an Ollama failure (those are answered by the engine): a bug or Discord itself.
            # Log the traceback, and still tell the user something went wrong.
            log.exception("event=reply_crashed channel=%s asked=%s", channel_id, target.asked)
            with contextlib.suppress(*DISCORD_FAILURES):
                await writer.finish(INTERNAL_ERROR)
        finally:
            await sink.stop_typing()
            if target.messages:  # it is over, however it ended: nothing to end after a kill
                self.open_replies.closed(conversation)
        if target.refused_code in PERMISSION_CODES:
            await self._missing_permission(target.source, target.refused_code)
        elif writer.controls.regenerate and writer.delivered and target.messages:
            await self.latest.became(channel_id, [m for m in target.messages if m])

    async def _missing_permission(self, message: discord.Message, code: int | None) -> None:
        """The reply could not be posted: the asker sees a reaction on their question (if the
        bot may react), the log says what to fix, once per channel."""
        with contextlib.suppress(*DISCORD_FAILURES):
            await message.add_reaction(UNDELIVERED_REACTION)
        channel = message.channel.id
        if channel not in self._told_missing_permission:
            self._told_missing_permission.add(channel)
            log.warning(
                "event=missing_permission channel=%s code=%s fix='give the bot View Channel, "
                "Send Messages (Send Messages in Threads for threads) and Read Message History "
                "in this channel'",
                channel,
                code,
            )

    async def say(self, message: discord.Message, text: str) -> None:
        """A one-message reply (hint, refusal, notice), sent through the scheduler like every
        reply, so it counts against the channel's rate limit window too."""
        target = DiscordReplyTarget(message, self.metrics)
        await self.scheduler.reply(message.channel.id, target).finish(text)

    # --- buttons -----------------------------------------------------------------------------

    async def stop(self, interaction: discord.Interaction, press: ButtonPress) -> None:
        if not self.permissions.may_stop(interaction, press.asker):
            await tell(interaction, NOT_YOURS_TO_STOP)
            return
        if not self.engine.stop(conversation_id(press.channel), press.asked):
            await tell(interaction, BUTTON_EXPIRED)
            return
        log.info(
            "event=stop_button channel=%s asked=%s user=%s",
            press.channel,
            press.asked,
            interaction.user.id,
        )
        await interaction.response.defer()

    async def reasoning(self, interaction: discord.Interaction, press: ButtonPress) -> None:
        """Whoever presses it sees the model's reasoning behind that answer, privately (as a
        file when it is too long for a message)."""
        text = await reasoning_of(self.engine.store, conversation_id(press.channel), press.asked)
        log.info(
            "event=reasoning_button channel=%s asked=%s user=%s found=%s",
            press.channel,
            press.asked,
            interaction.user.id,
            text is not None,
        )
        if text is None:
            await tell(interaction, REASONING_GONE)
        elif len(text) <= REASONING_INLINE_CHARS:
            await tell(interaction, reasoning_shown(text))
        else:
            file = discord.File(io.BytesIO(text.encode()), filename="reasoning.md")
            await interaction.response.send_message(REASONING_ATTACHED, file=file, ephemeral=True)

    async def regenerate(self, interaction: discord.Interaction, press: ButtonPress) -> None:
        """The asker gets a new answer in place of the channel's latest one."""
        conversation = conversation_id(press.channel)
        message = interaction.message
        channel = interaction.channel
        if not self.permissions.may_regenerate(interaction, press.asker):
            await tell(interaction, NOT_YOURS_TO_REGENERATE)
        elif self.engine.closing:
            await tell(interaction, RESTARTING)
        elif message is None or not isinstance(channel, discord.abc.Messageable):
            await tell(interaction, BUTTON_EXPIRED)
        elif self.engine.queue.has_pending(conversation, interaction.user.id):
            await tell(interaction, ONE_AT_A_TIME)
        elif await latest_question(self.engine.store, conversation) != press.asked:
            await tell(interaction, NOT_LATEST)
            with contextlib.suppress(*DISCORD_FAILURES):
                await message.edit(view=None)  # the button no longer applies
        else:
            # Acknowledge at once (3 s), then answer again into the same message.
            await interaction.response.defer()
            await self._regenerate(interaction, press, message, channel)

    async def _regenerate(
        self,
        interaction: discord.Interaction,
        press: ButtonPress,
        message: discord.Message,
        channel: discord.abc.Messageable,
    ) -> None:
        user = interaction.user.id
        log.info(
            "event=regenerate_button channel=%s asked=%s user=%s", press.channel, press.asked, user
        )
        try:
            question = await channel.fetch_message(press.asked)
        except DISCORD_FAILURES:
            question = None
        # The new answer is written over the earlier one's messages (known since this process
        # wrote them; after a restart, the one with the button). A refused Regenerate (no
        # longer the latest) leaves the answer, without the button.
        existing = self.latest.messages_of(press.channel, message)
        await self._reply(
            DiscordReplyTarget(
                question or message,
                self.metrics,
                asker=press.asker,
                asked=press.asked,
                existing=existing,
            ),
            channel,
            conversation_id(press.channel),
            UserMessage(""),
            user_id=user,
            ref=press.asked,
            regenerate=True,
            log_fields=f"channel={press.channel} message={press.asked} author={user} regenerate=1",
        )
