"""Terminal chat: Ollama's simple-chat loop, on the same engine and store as the bot.

Tokens are printed as they stream; the history is kept (and stored, so it survives a restart);
an empty line or Ctrl-D quits. No Discord token is needed.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import TextIO

from .app import Services
from .exit_codes import EXIT_CONFIG
from .history_store import StoreError
from .settings import Settings
from .turn import QuietEvents, UserMessage

CONSOLE_CONVERSATION = "console:default"


class ConsoleSink(QuietEvents):
    """Prints each delta as it arrives; a note (error, cut-off) goes on its own line."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    async def feed(self, delta: str) -> None:
        self.out.write(delta)
        self.out.flush()

    async def finish(
        self, note: str | None = None, *, stored: bool = False, reasoning: bool = False
    ) -> bool:
        if note:
            self.out.write(f"\n{note}")
        self.out.write("\n")
        self.out.flush()
        return True


async def run_console(
    settings: Settings,
    *,
    read_line: Callable[[str], str] = input,
    out: TextIO = sys.stdout,
    conversation: str = CONSOLE_CONVERSATION,
) -> int:
    # One stream in a terminal: each token printed as it comes costs nothing worth saving,
    # so no read beat (it pays off with many answers streaming at once).
    services = Services.build(replace(settings, read_beat=0.0))
    try:
        await services.store.open()
    except StoreError as exc:
        await services.close()
        print(f"Configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    history = await services.store.load(conversation)
    out.write(
        f"ollacord console: model {settings.ollama_model} at {settings.ollama_url}; "
        f"{len(history)} earlier messages kept. Empty line or Ctrl-D quits.\n"
    )
    out.flush()
    try:
        while True:
            try:
                line = await asyncio.to_thread(read_line, ">>> ")
            except EOFError:
                break
            if not line.strip():
                break
            await services.engine.respond(conversation, UserMessage(line.strip()), ConsoleSink(out))
    except KeyboardInterrupt:
        pass
    finally:
        await services.close()
    out.write("bye\n")
    out.flush()
    return 0
