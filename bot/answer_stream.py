"""One answer streamed from Ollama into the turn's sink.

``/api/chat`` chunks go through the think filter (reasoning is never shown), the leading
whitespace of the answer is dropped, the first words are announced (typing stops, the time to
first token is measured), and every visible delta is fed to the sink at Ollama's pace.
"""

from __future__ import annotations

import asyncio
from contextlib import aclosing

from .clock import Clock
from .context_keeper import Prepared
from .metrics import Metrics
from .ollama import Ollama
from .settings import Settings
from .think_filter import ThinkFilter
from .turn import RunningTurn


class AnswerStream:
    """Streams answers for the engine."""

    def __init__(
        self, ollama: Ollama, settings: Settings, clock: Clock, metrics: Metrics | None
    ) -> None:
        self.ollama = ollama
        self.settings = settings
        self.clock = clock
        self.metrics = metrics

    async def stream(self, turn: RunningTurn, prepared: Prepared) -> None:
        """Stream the answer into the sink.

        The Stop button cancels the turn's task while it streams (``ChatEngine.stop``); that one
        cancellation only ends the stream, and the turn goes on to keep what was written. Any
        other cancellation (reset, shutdown, or a second one) ends the whole turn."""
        turn.streaming = True
        try:
            await self._read(turn, prepared)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not turn.keep_partial or task is None or task.cancelling() != 1:
                raise
            task.uncancel()
        finally:
            turn.streaming = False

    async def _read(self, turn: RunningTurn, prepared: Prepared) -> None:
        stream = self.ollama.chat(
            turn.model,
            prepared.messages,
            options=prepared.options,
            keep_alive=self.settings.ollama_keep_alive,
            think=prepared.think,
            route=turn.conversation,  # to the backend whose cache holds this conversation
        )
        think_filter = ThinkFilter()
        async with aclosing(stream):
            async for chunk in stream:
                if chunk.thinking:
                    turn.reasoning += chunk.thinking
                    self._thinking(turn)
                if chunk.content:
                    if self.metrics:
                        self.metrics.tokens.inc(chunk.tokens)
                    visible = think_filter.feed(chunk.content)
                    if think_filter.thought:  # reasoning an older server left in the content
                        turn.reasoning += think_filter.thought
                        think_filter.thought = ""
                        self._thinking(turn)
                    await self._show(turn, visible)
                if chunk.done:
                    turn.stats = chunk.metrics
                    turn.done_reason = chunk.done_reason
            await self._show(turn, think_filter.flush())

    def _thinking(self, turn: RunningTurn) -> None:
        """The model reasons before answering: the reply says so, with the time it takes."""
        if turn.first_text_at is None:
            turn.sink.thinking(self.clock() - turn.started)

    async def _show(self, turn: RunningTurn, visible: str) -> None:
        # Models often start with a space or newline; Discord would trim it anyway.
        delta = visible if turn.text else visible.lstrip()
        if not delta:
            return
        if turn.first_text_at is None:
            turn.first_text_at = self.clock()
            if self.metrics:
                self.metrics.time_to_first_token.observe(turn.first_text_at - turn.started)
            await turn.sink.first_text()
        turn.text += delta
        await turn.sink.feed(delta)
