"""Fair, bounded queueing of replies for one GPU.

At most ``MAX_CONCURRENT`` replies talk to Ollama at once (Ollama's default
``OLLAMA_NUM_PARALLEL`` is 1: more would only wait inside Ollama, invisibly). Waiting replies
are served round-robin across conversations, so one busy channel cannot starve the others,
and in order within each conversation, one at a time, so its history stays consistent.

Background work (rolling summaries) waits in the same queue, in lanes of its own, at a low
priority: a slot goes to a waiting reply first, but a background ticket passed over
:data:`BACKGROUND_PATIENCE` times goes next, so under steady load it is delayed, never
starved, and never cancelled by a reply.

Pure bookkeeping plus futures: no timers, no I/O.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

PositionCallback = Callable[[int], None]

# A background ticket is served after this many slots went to replies while it waited.
BACKGROUND_PATIENCE = 2


@dataclass(eq=False)
class Ticket:
    """One reply's place. Wait with :meth:`wait`; release the Ollama slot with
    :meth:`release_slot` when the stream ends, and the conversation with :meth:`done`."""

    queue: FairQueue
    conversation: str
    user: int | None
    on_position: PositionCallback | None = None
    granted: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    holds_slot: bool = False
    finished: bool = False
    position: int | None = None
    background: bool = False  # work that yields to replies (a summary), not a user's reply
    passed_over: int = 0  # slots granted to others while this background ticket waited

    async def wait(self) -> None:
        """Until it is this reply's turn. Cancelling it leaves the queue cleanly."""
        try:
            await asyncio.shield(self.granted)
        except asyncio.CancelledError:
            self.done()
            raise

    def release_slot(self) -> None:
        if self.holds_slot:
            self.holds_slot = False
            self.queue._slots_used -= 1
            self.queue._dispatch()

    def done(self) -> None:
        """The reply is over (its history is stored): the conversation may go on."""
        if self.finished:
            return
        self.finished = True
        self.release_slot()
        self.queue._leave(self)


class FairQueue:
    """Grants Ollama slots round-robin across conversations (see the module docstring)."""

    def __init__(self, slots: int = 1, limit: int = 25) -> None:
        self.slots = slots
        self.limit = limit
        self._slots_used = 0
        self._waiting: dict[str, deque[Ticket]] = {}
        self._active: dict[str, Ticket] = {}
        self._turns: deque[str] = deque()  # conversations with waiting tickets, by arrival
        self._served: dict[str, int] = {}  # when each conversation was last given a slot
        self._grants = 0

    @property
    def waiting(self) -> int:
        """Replies waiting (background work is not counted: it is nobody's question)."""
        return sum(not t.background for q in self._waiting.values() for t in q)

    @property
    def active(self) -> int:
        return len(self._active)

    def full(self) -> bool:
        """No room for one more waiting reply (QUEUE_LIMIT)."""
        return self.waiting >= self.limit

    def pending(self, conversation: str, user: int) -> int:
        """How many replies ``user`` has waiting or streaming in ``conversation``."""
        active = self._active.get(conversation)
        mine = 1 if active is not None and active.user == user else 0
        return mine + sum(t.user == user for t in self._waiting.get(conversation, ()))

    def has_pending(self, conversation: str, user: int) -> bool:
        """Whether ``user`` has a reply waiting or streaming in ``conversation``."""
        return self.pending(conversation, user) > 0

    def enter(
        self,
        conversation: str,
        user: int | None,
        on_position: PositionCallback | None = None,
        *,
        background: bool = False,
    ) -> Ticket:
        """A place in ``conversation``'s lane. Background work gets a lane of its own (it must
        not hold up the conversation's replies) and a low priority."""
        lane = f"{conversation}\x00background" if background else conversation
        ticket = Ticket(self, lane, user, on_position, background=background)
        queue = self._waiting.setdefault(lane, deque())
        queue.append(ticket)
        if lane not in self._turns:
            self._turns.append(lane)
        self._dispatch()
        return ticket

    def _rounds(self) -> list[str]:
        """Conversations with waiting replies, least recently served first (round-robin)."""
        ranked = sorted(
            enumerate(c for c in self._turns if self._waiting.get(c)),
            key=lambda item: (self._served.get(item[1], -1), item[0]),
        )
        return [c for _, c in ranked]

    def order(self) -> list[Ticket]:
        """Waiting replies in the order they will be served: rounds over the conversations."""
        queues = [list(self._waiting[c]) for c in self._rounds() if not self._is_background(c)]
        ordered: list[Ticket] = []
        depth = 0
        while any(depth < len(q) for q in queues):
            ordered.extend(q[depth] for q in queues if depth < len(q))
            depth += 1
        return ordered

    def _is_background(self, lane: str) -> bool:
        head = self._head(lane)
        return head is not None and head.background

    def _head(self, lane: str) -> Ticket | None:
        queue = self._waiting.get(lane)
        return queue[0] if queue else None

    def _next_lane(self) -> str | None:
        """Round-robin over the lanes that may start now: replies first, unless a background
        ticket has been passed over often enough."""
        free = [c for c in self._rounds() if c not in self._active]
        heads = {c: self._head(c) for c in free}
        overdue = [
            c
            for c, head in heads.items()
            if head is not None and head.background and head.passed_over >= BACKGROUND_PATIENCE
        ]
        replies = [c for c, head in heads.items() if head is not None and not head.background]
        return next(iter(overdue or replies or free), None)

    def _dispatch(self) -> None:
        while self._slots_used < self.slots:
            conversation = self._next_lane()
            if conversation is None:
                break
            queue = self._waiting[conversation]
            ticket = queue.popleft()
            for lane, waiting in self._waiting.items():
                if lane != conversation and waiting and waiting[0].background:
                    waiting[0].passed_over += 1
            if not queue:
                del self._waiting[conversation]
                self._turns.remove(conversation)
            self._grants += 1
            self._served[conversation] = self._grants  # to the back of the round
            self._active[conversation] = ticket
            ticket.holds_slot = True
            self._slots_used += 1
            ticket.position = None
            if not ticket.granted.done():
                ticket.granted.set_result(None)
        self._announce_positions()

    def _announce_positions(self) -> None:
        for ahead, ticket in enumerate(self.order()):
            if ticket.position != ahead:
                ticket.position = ahead
                if ticket.on_position is not None:
                    ticket.on_position(ahead)

    def _leave(self, ticket: Ticket) -> None:
        if self._active.get(ticket.conversation) is ticket:
            del self._active[ticket.conversation]
            if ticket.conversation not in self._waiting:
                self._served.pop(ticket.conversation, None)  # idle again: forget it
        queue = self._waiting.get(ticket.conversation)
        if queue is not None and ticket in queue:
            queue.remove(ticket)
            if not queue:
                del self._waiting[ticket.conversation]
                if ticket.conversation in self._turns:
                    self._turns.remove(ticket.conversation)
        self._dispatch()
