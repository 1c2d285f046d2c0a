"""An aiohttp server in a thread of its own, with an event loop of its own: the harness of the
fake Ollama and the fake Discord.

The bot under test runs inside SimCord, which virtualises time on the test's event loop (and
patches ``time.monotonic``); a fake that shared that loop or clock would freeze with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
import time
from collections.abc import Callable
from typing import Self

from aiohttp import web


class RealClockLoop(asyncio.SelectorEventLoop):
    """An event loop timed by ``perf_counter``: immune to a patched ``time.monotonic``."""

    def time(self) -> float:
        return time.perf_counter()


class ThreadedServer:
    """Subclasses give :meth:`build_app`, note their URLs in :meth:`listening`, and close
    their own connections in :meth:`closing`."""

    name = "server"

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._listening = threading.Event()
        self._startup_error: BaseException | None = None
        self._stopping = False

    def build_app(self) -> web.Application:
        raise NotImplementedError  # each fake has its own routes

    def listening(self) -> None:
        """Called in the server thread once the socket listens (``self.port`` is known)."""

    async def closing(self) -> None:
        """Called in the server thread before the runner is cleaned up."""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> Self:
        """Start the server thread; returns once the socket is listening."""
        if self._thread is not None:
            raise RuntimeError(f"{self.name} already started")
        # A fresh context: nothing from the caller's (possibly SimCord-scoped) context leaks in.
        ctx = contextvars.Context()
        self._thread = threading.Thread(
            target=ctx.run, args=(self._thread_main,), name=self.name, daemon=True
        )
        self._thread.start()
        if not self._listening.wait(10):
            raise RuntimeError(f"{self.name} did not start within 10 s")
        if self._startup_error is not None:
            raise RuntimeError(f"{self.name} failed to start") from self._startup_error
        return self

    def stop(self) -> None:
        """Stop serving and join the thread. Idempotent."""
        thread, loop, stop_event = self._thread, self._loop, self._stop_event
        if thread is None:
            return
        if loop is not None and stop_event is not None and not loop.is_closed():
            # The loop may have closed on its own (startup failure): nothing left to stop.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop_event.set)
        thread.join(10)
        if thread.is_alive():
            raise RuntimeError(f"{self.name} thread did not stop")

    def wait_for(self, predicate: Callable[[Self], bool], timeout: float = 5.0) -> bool:
        """Poll ``predicate(self)`` until true or ``timeout`` real seconds pass.

        This blocks the calling thread: from a coroutine whose loop runs the client that must
        act, use :meth:`wait_for_async`, or the client never gets to act."""
        deadline = time.perf_counter() + timeout
        while not predicate(self):
            if time.perf_counter() >= deadline:
                return False
            time.sleep(0.005)
        return True

    async def wait_for_async(
        self,
        predicate: Callable[[Self], bool],
        timeout: float = 5.0,  # noqa: ASYNC109 - same signature as wait_for; it only polls
    ) -> bool:
        """Like :meth:`wait_for`, without blocking the caller's event loop."""
        deadline = time.perf_counter() + timeout
        while not predicate(self):
            if time.perf_counter() >= deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    def _thread_main(self) -> None:
        loop = RealClockLoop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:
            self._startup_error = exc
        finally:
            self._listening.set()
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            asyncio.set_event_loop(None)
            loop.close()

    async def _serve(self) -> None:
        self._stop_event = asyncio.Event()
        runner = web.AppRunner(
            self.build_app(), shutdown_timeout=0.2, handler_cancellation=True, access_log=None
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port)
            await site.start()
            self.port = int(runner.addresses[0][1])
            self.listening()
            self._listening.set()
            await self._stop_event.wait()
        finally:
            self._stopping = True
            await self.closing()
            await runner.cleanup()
