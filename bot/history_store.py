"""The history store contract, its values, and the in-memory store.

A conversation is keyed by a string (``discord:<channel id>`` for a channel, thread or DM;
``console:<name>`` for the terminal mode). A turn is one chat message with an increasing id.
Turns are appended in groups (the user turn and the finished assistant turn together, in one
atomic step), so a failed or interrupted reply never leaves half an exchange behind.

Each conversation also has a small state: its rolling summary, where the context window
starts, its settings (model, system prompt) and its *epoch*, which only :meth:`clear` changes.
A reply remembers the epoch it started in and stores its exchange only if the conversation is
still in that epoch, so a ``/reset`` wins over a reply that was running, in any process: the
check happens inside the store's own atomic step, not in a per-process lock.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol


@dataclass(frozen=True)
class StoredImage:
    """An image kept with the turn it came with (not a Discord link: those expire), as Ollama
    takes it: base64 of a JPEG or PNG, already downscaled."""

    filename: str
    base64: str


@dataclass(frozen=True)
class Turn:
    """One message of a conversation, as sent to Ollama (``role`` and ``content``).
    ``id`` is given by the store (0 for a turn not stored yet)."""

    role: str
    content: str
    id: int = field(default=0, compare=False)
    ref: int | None = field(default=None, compare=False)  # the Discord message it came from
    # What the model thought before this answer: kept to show on request, never in a prompt.
    reasoning: str = field(default="", compare=False)
    images: tuple[StoredImage, ...] = field(default=(), compare=False)

    def as_message(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class ConversationState:
    """Per-conversation state kept with the history.

    Turns with ``id > window_start`` are in the context window. Turns up to ``summary_upto``
    are covered by ``summary``; turns between the two were dropped from the window and wait
    to be summarised. ``model`` and ``system_prompt`` override the defaults when set.
    ``epoch`` counts resets (see the module docstring). ``summary_at``: when the summary was
    last written (Unix time; 0 if never).
    """

    summary: str = ""
    summary_upto: int = 0
    window_start: int = 0
    model: str | None = None
    system_prompt: str | None = None
    epoch: int = 0
    summary_at: float = 0.0


class StoreError(Exception):
    """The history store cannot be used. The message is one sentence for whoever runs the bot:
    it names HISTORY_STORE, where it points and what is wrong."""


StateChange = Callable[[ConversationState], ConversationState]
"""A pure function from the current state to the new one. A store may call it more than once
(optimistic stores retry when another writer got there first); returning its argument
unchanged writes nothing. It cannot change the epoch: only ``clear`` does."""


class HistoryStore(Protocol):
    """What the conversation engine needs from a store. Every method is one atomic step."""

    async def open(self) -> None:
        """Connect and check the store now, so a bad setting fails at start-up (raising
        :class:`StoreError`), before the bot connects to Discord."""
        ...

    async def load(self, conversation: str, *, after: int = 0) -> list[Turn]:
        """The conversation's turns with ``id > after``, oldest first."""
        ...

    async def load_range(self, conversation: str, after: int, upto: int) -> list[Turn]:
        """Turns with ``after < id <= upto``, oldest first."""
        ...

    async def append(
        self, conversation: str, turns: Sequence[Turn], *, epoch: int | None = None
    ) -> list[Turn] | None:
        """Add turns atomically (all of them or none); returns them with their ids. With
        ``epoch``, nothing is stored (and None returned) if the conversation was reset since."""
        ...

    async def replace(
        self,
        conversation: str,
        remove: Sequence[int],
        turns: Sequence[Turn],
        *,
        epoch: int | None = None,
    ) -> list[Turn] | None:
        """Remove the turns with ids ``remove`` and append ``turns``, atomically; ``epoch``
        as for :meth:`append`."""
        ...

    async def clear(self, conversation: str) -> int:
        """Forget the turns and the summary and start a new epoch (returned); the
        conversation's settings stay."""
        ...

    async def get_state(self, conversation: str) -> ConversationState: ...

    async def update_state(self, conversation: str, change: StateChange) -> ConversationState:
        """Read, change and write the state as one step; returns the state now stored."""
        ...

    async def set_open_reply(self, conversation: str, message_id: int | None) -> None:
        """The Discord message the conversation's reply is being written into now (None: no
        reply is open). A process killed mid-reply leaves it set: its next start finds it
        with :meth:`open_replies` and marks that message interrupted."""
        ...

    async def open_replies(self) -> dict[str, int]:
        """Every conversation whose reply is open, with the message it was last written into."""
        ...

    async def ping(self) -> None:
        """Raise if the store cannot answer (for /healthz)."""
        ...

    async def close(self) -> None: ...


def latest_exchange(turns: list[Turn]) -> tuple[Turn, Turn] | None:
    """The conversation's last question and its answer, if it ends with one."""
    if len(turns) >= 2 and turns[-2].role == "user" and turns[-1].role == "assistant":
        return turns[-2], turns[-1]
    return None


async def latest_question(store: HistoryStore, conversation: str) -> int | None:
    """The Discord message id of the question whose answer is the conversation's latest."""
    state = await store.get_state(conversation)
    latest = latest_exchange(await store.load(conversation, after=state.window_start))
    return latest[0].ref if latest is not None else None


async def reasoning_of(store: HistoryStore, conversation: str, asked: int) -> str | None:
    """The reasoning kept with the answer to the question ``asked`` (a Discord message), or
    None if that answer is gone (reset, regenerated) or had none."""
    turns = await store.load(conversation)
    for question, answer in itertools.pairwise(turns):
        if question.role == "user" and question.ref == asked and answer.role == "assistant":
            return answer.reasoning or None
    return None


def cleared(state: ConversationState) -> ConversationState:
    """The state after a reset: settings kept, history forgotten, a new epoch."""
    return ConversationState(
        model=state.model, system_prompt=state.system_prompt, epoch=state.epoch + 1
    )


def changed(current: ConversationState, change: StateChange) -> ConversationState:
    """Apply ``change``, keeping the epoch (which only a reset moves)."""
    new = change(current)
    if new is current or new == current:
        return current
    return replace(new, epoch=current.epoch)


class MemoryHistoryStore:
    """Dicts and lists: for tests and throwaway runs (``HISTORY_STORE=memory://``). Every
    method runs without awaiting, so each is atomic on the event loop."""

    def __init__(self) -> None:
        self._turns: dict[str, list[Turn]] = {}
        self._states: dict[str, ConversationState] = {}
        self._open: dict[str, int] = {}
        self._next_id = 1

    async def set_open_reply(self, conversation: str, message_id: int | None) -> None:
        if message_id is None:
            self._open.pop(conversation, None)
        else:
            self._open[conversation] = message_id

    async def open_replies(self) -> dict[str, int]:
        return dict(self._open)

    async def open(self) -> None:
        return None

    async def load(self, conversation: str, *, after: int = 0) -> list[Turn]:
        return [t for t in self._turns.get(conversation, []) if t.id > after]

    async def load_range(self, conversation: str, after: int, upto: int) -> list[Turn]:
        return [t for t in self._turns.get(conversation, []) if after < t.id <= upto]

    def _current_epoch(self, conversation: str) -> int:
        return self._states.get(conversation, ConversationState()).epoch

    async def append(
        self, conversation: str, turns: Sequence[Turn], *, epoch: int | None = None
    ) -> list[Turn] | None:
        return await self.replace(conversation, (), turns, epoch=epoch)

    async def replace(
        self,
        conversation: str,
        remove: Sequence[int],
        turns: Sequence[Turn],
        *,
        epoch: int | None = None,
    ) -> list[Turn] | None:
        if epoch is not None and epoch != self._current_epoch(conversation):
            return None
        removed = set(remove)
        kept = [t for t in self._turns.get(conversation, []) if t.id not in removed]
        stored = []
        for turn in turns:
            stored.append(replace(turn, id=self._next_id))
            self._next_id += 1
        self._turns[conversation] = kept + stored
        return stored

    async def clear(self, conversation: str) -> int:
        self._turns.pop(conversation, None)
        state = cleared(self._states.get(conversation, ConversationState()))
        self._states[conversation] = state
        return state.epoch

    async def get_state(self, conversation: str) -> ConversationState:
        return self._states.get(conversation, ConversationState())

    async def update_state(self, conversation: str, change: StateChange) -> ConversationState:
        current = self._states.get(conversation, ConversationState())
        state = changed(current, change)
        if state is not current:
            self._states[conversation] = state
        return state

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None
