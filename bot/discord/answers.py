"""Answering on Discord: a question (or a Regenerate press) becomes a reply that the engine
streams into the channel through the scheduler; Stop ends one.

This is where the checks a user meets happen in order: is it for the bot, may they talk
here, is the bot restarting, is there a question at all, is one of theirs already waiting,
is the queue full. Every path ends in an answer, a reaction, or deliberate silence (a
channel the bot does not serve).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

import discord

from ..app import Services
from ..discord_scheduler import DiscordScheduler
from ..rate_limits import CURRENT_PRIORITY, Priority
from ..reply_text import Controls
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
    RESTARTING,
)
from .buttons import ButtonPress
from .ephemeral import tell
from .intake import Question, conversation_id, is_for_me, question_from
from .permissions import Permissions
from .reply_target import DiscordReplySink, DiscordReplyTarget

log = logging.getLogger(__name__)


class Answers:
    """Mentions in, replies out; also the Stop and Regenerate buttons' controls."""

    def __init__(
        self,
        services: Services,
        scheduler: DiscordScheduler,
        permissions: Permissions,
        me: Callable[[], discord.ClientUser | None],
    ) -> None:
        self.engine = services.engine
        self.metrics = services.metrics
        self.scheduler = scheduler
        self.permissions = permissions
        self.me = me
        # Only a channel's latest answer keeps its Regenerate button.
        self._latest_answer: dict[int, discord.Message] = {}

    # --- mentions ----------------------------------------------------------------------------

    async def on_message(self, message: discord.Message) -> None:
        me = self.me()
        if not is_for_me(message, me):
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
        if not question.text:
            await self.say(message, HINT.format(name=me.display_name if me else "bot"))
            return
        queue = self.engine.queue
        if queue.has_pending(question.conversation, question.author_id):
            # One pending question per person and channel: acknowledge, never stay silent.
            await self._acknowledge(message, ONE_AT_A_TIME)
            return
        if queue.full():
            log.info("event=queue_full channel=%s waiting=%d", question.channel_id, queue.waiting)
            await self._acknowledge(message, BUSY, reaction=None)
            return
        await self._answer(message, question)

    async def _answer(self, message: discord.Message, question: Question) -> None:
        target = DiscordReplyTarget(message, self.metrics)
        writer = self.scheduler.reply(question.channel_id, target)
        sink = DiscordReplySink(writer, message.channel)
        try:
            await self.engine.respond(
                question.conversation,
                question.user_message(),
                sink,
                user_id=question.author_id,
                ref=question.message_id,
                log_fields=f"channel={question.channel_id} message={question.message_id} "
                f"author={question.author_id}",
            )
            if writer.controls is Controls.REGENERATE and target.messages:
                await self._latest_answer_is(question.channel_id, target.messages[0])
        except Exception:
            # Not an Ollama failure (those are answered by the engine): a bug or Discord itself.
            # Log the traceback, and still tell the user something went wrong.
            log.exception(
                "event=reply_crashed channel=%s message=%s", question.channel_id, message.id
            )
            with contextlib.suppress(discord.HTTPException):
                await writer.finish(INTERNAL_ERROR)
        finally:
            await sink.stop_typing()

    async def _acknowledge(
        self, message: discord.Message, text: str, *, reaction: str | None = "⏳"
    ) -> None:
        """A reaction where it says enough (quiet), else a short reply."""
        if reaction is not None:
            try:
                await message.add_reaction(reaction)
                return
            except discord.HTTPException:
                pass  # no Add Reactions permission: say it in words
        await self.say(message, text)

    async def say(self, message: discord.Message, text: str) -> None:
        """A one-message reply (hint, refusal, notice), sent through the scheduler like every
        reply, so it counts against the channel's rate limit window too."""
        target = DiscordReplyTarget(message, self.metrics)
        await self.scheduler.reply(message.channel.id, target).finish(text)

    async def _latest_answer_is(self, channel_id: int, answer: discord.Message | None) -> None:
        """Only the latest answer of a channel can be regenerated: the previous one loses its
        button (after a restart, an old button says so when pressed)."""
        previous = self._latest_answer.get(channel_id)
        if answer is not None:
            self._latest_answer[channel_id] = answer
        if previous is None or (answer is not None and previous.id == answer.id):
            return
        token = CURRENT_PRIORITY.set(Priority.STATUS)
        try:
            await previous.edit(view=None)
        except discord.HTTPException as exc:
            log.info("event=remove_button_failed message=%s cause=%r", previous.id, exc.text)
        finally:
            CURRENT_PRIORITY.reset(token)

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

    async def regenerate(self, interaction: discord.Interaction, press: ButtonPress) -> None:
        """The asker gets a new answer in place of the channel's latest one."""
        conversation = conversation_id(press.channel)
        message = interaction.message
        channel = interaction.channel
        if not self.permissions.may_regenerate(interaction, press.asker):
            await tell(interaction, NOT_YOURS_TO_REGENERATE)
        elif message is None or not isinstance(channel, discord.abc.Messageable):
            await tell(interaction, BUTTON_EXPIRED)
        elif self.engine.queue.has_pending(conversation, interaction.user.id):
            await tell(interaction, ONE_AT_A_TIME)
        elif await self.engine.latest_question(conversation) != press.asked:
            await tell(interaction, NOT_LATEST)
            with contextlib.suppress(discord.HTTPException):
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
        except discord.HTTPException:
            question = None
        target = DiscordReplyTarget(
            question or message,
            self.metrics,
            asker=press.asker,
            asked=press.asked,
            existing=message,
        )
        writer = self.scheduler.reply(press.channel, target)
        writer.shown = [message.content]
        writer.shown_controls = Controls.REGENERATE
        sink = DiscordReplySink(writer, channel)
        try:
            outcome = await self.engine.respond(
                conversation_id(press.channel),
                UserMessage(""),
                sink,
                user_id=user,
                ref=press.asked,
                regenerate=True,
                log_fields=f"channel={press.channel} message={press.asked} author={user} "
                "regenerate=1",
            )
        finally:
            await sink.stop_typing()
        if outcome.status == "refused":
            with contextlib.suppress(discord.HTTPException):
                await message.edit(view=None)  # the button no longer applies
        elif writer.controls is Controls.REGENERATE:
            await self._latest_answer_is(
                press.channel, target.messages[0] if target.messages else None
            )
