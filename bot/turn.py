"""What a turn is made of: the user's message, the sink its reply streams into, how it ended.

Plain values shared by the engine and its drivers (the Discord layer, the console); nothing
here does I/O.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from .history_store import StoredImage, Turn
from .ollama import OllamaError


@dataclass(frozen=True)
class UserMessage:
    """The user's side of a turn: what they typed, who they are (in a shared channel), what
    came with it as text (a message they quoted, text files), and their images."""

    text: str
    speaker: str | None = None  # set where several people share a conversation
    extra: str = ""  # a quoted message, text files: read by the model after the text
    images: tuple[StoredImage, ...] = ()

    def prompt_text(self) -> str:
        """The text as the model reads it: ``Name: text`` where several people talk, then
        what came with it."""
        head = f"{self.speaker}: {self.text}" if self.speaker else self.text
        return f"{head}\n\n{self.extra}" if self.extra else head


class ReplyUndeliverable(Exception):
    """The sink can show nothing more, for good (Discord: a deleted channel, a missing
    permission). The turn stops: Ollama's stream is closed and nothing is stored."""


class ReplySink(Protocol):
    """Where a reply goes as it streams (Discord messages, or the terminal), and the events of
    its life: waiting in the queue, its turn starting, its first words."""

    def queued(self, ahead: int) -> None:
        """Waiting for an Ollama slot with ``ahead`` replies before it (called on changes)."""
        ...

    def thinking(self, seconds: float) -> None:
        """The model has been reasoning for ``seconds`` (called as its reasoning streams)."""
        ...

    async def started(self) -> None:
        """Its turn came: the request to Ollama goes out now."""
        ...

    async def first_text(self) -> None:
        """The first visible words are about to be fed."""
        ...

    async def feed(self, delta: str) -> None: ...

    async def finish(
        self, note: str | None = None, *, stored: bool = False, reasoning: bool = False
    ) -> bool:
        """The reply is over; ``note`` goes after the text; ``stored``: it will be kept in the
        history; ``reasoning``: the model's reasoning is kept with it (shown on request).
        Returns whether the reader got it all (only then is it stored)."""
        ...


class QuietEvents:
    """The sink events as no-ops, for sinks that only show text."""

    def queued(self, ahead: int) -> None:
        return None

    def thinking(self, seconds: float) -> None:
        return None

    async def started(self) -> None:
        return None

    async def first_text(self) -> None:
        return None


@dataclass
class ReplyOutcome:
    """How one turn ended. ``status``: ok, error, cut_off, empty, refused, stopped."""

    status: str
    text: str = ""
    error: OllamaError | None = None
    metrics: Mapping[str, int] = field(default_factory=dict)
    stored: bool = False


@dataclass
class RunningTurn:
    """One turn in progress: what the engine knows about it so far."""

    conversation: str
    message: UserMessage
    sink: ReplySink
    user_id: int | None
    ref: int | None  # the Discord message it answers
    regenerate: bool
    log_fields: str
    started: float
    model: str
    task: asyncio.Task[Any] | None = None
    streaming: bool = False
    epoch: int = 0
    text: str = ""
    first_text_at: float | None = None
    stats: Mapping[str, int] = field(default_factory=dict)
    reasoning: str = ""  # what the model thought before answering (never in a prompt)
    done_reason: str = ""  # Ollama's: "stop", or "length" when the answer hit its limit
    undeliverable: str | None = None  # why Discord refuses this reply for good
    store_failure: str | None = None  # why the history store failed this turn
    footnote: str | None = None  # said after the answer (e.g. the model cannot see images)
    ended: bool = False  # its one exit was taken (a turn ends once, even if cancelled then)
    stop_note: str | None = None
    keep_partial: bool = False  # stopped by its asker: store what was written, marked stopped
    replacing: list[int] = field(default_factory=list)  # Regenerate: the exchange it replaces
    user_turn: Turn | None = None


@dataclass(frozen=True)
class Refusal:
    """Why a turn is not answered: a short reason for the log, and the note shown (None:
    the earlier answer stays as it is)."""

    reason: str
    note: str | None
