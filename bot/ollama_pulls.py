"""Pulling a model on several Ollama backends at once, seen as one progress."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence

from .background import cancel_and_wait
from .ollama import PullProgress
from .ollama_backend import Backend


async def pull_everywhere(
    backends: Sequence[Backend], model: str
) -> AsyncGenerator[PullProgress, None]:
    """Pull on every backend at once; the progress lines of all of them, with each layer
    named per backend so that one tracker adds them up into one bar."""
    queue: asyncio.Queue[PullProgress | BaseException | None] = asyncio.Queue()

    async def pull_one(index: int, backend: Backend) -> None:
        try:
            async for progress in backend.client.pull(model):
                digest = f"{index}:{progress.digest}" if progress.digest else ""
                total, completed = progress.total, progress.completed
                await queue.put(PullProgress(progress.status, digest, total, completed))
        except BaseException as exc:  # handed to the reader, which raises it
            await queue.put(exc)
        finally:
            await queue.put(None)

    tasks = [asyncio.create_task(pull_one(i, b)) for i, b in enumerate(backends)]
    try:
        async for progress in _drain(queue, len(tasks)):
            yield progress
    finally:
        await cancel_and_wait(*tasks)


async def _drain(
    queue: asyncio.Queue[PullProgress | BaseException | None], producers: int
) -> AsyncGenerator[PullProgress, None]:
    """Progress from several producers until all are done; the first failure is raised once
    the others finished (a pull that fails on one backend fails)."""
    failure: BaseException | None = None
    while producers:
        item = await queue.get()
        if item is None:
            producers -= 1
        elif isinstance(item, BaseException):
            failure = failure or item
        else:
            yield item
    if failure is not None:
        raise failure
