"""Background tasks that belong to something: started with :meth:`Background.spawn`, all
cancelled (and awaited) by :meth:`Background.close`, none started after that."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


class Background:
    """A set of tasks kept alive until they end or :meth:`close` cancels them (asyncio keeps
    only weak references to tasks: an unreferenced task can vanish mid-run)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = False

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
        """Run ``coro`` in the background; None (and ``coro`` closed) once closing."""
        if self.closed:
            coro.close()
            return None
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def cancel_all(self) -> None:
        """Cancel what runs now and wait for it to end (new work may still start)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        self.closed = True
        await self.cancel_all()
