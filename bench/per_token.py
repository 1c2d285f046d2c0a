"""Benchmark: the bot's own CPU cost per streamed token, without sockets or Discord.

Feeds Ollama's wire lines (one token each, as the server flushes them) through the NDJSON
reader, the chunking of each read (bot/chat_chunk.py) and a scheduled Discord reply (splitting
into messages, deciding whether an update is due), as a reply does, and prints microseconds of
CPU per token. ``--per-read N``: the lines one read brings (1: every token on its own, as with
``OLLAMA_READ_BEAT=0``; about 5 with the default 100 ms beat at 50 tokens/s).
bench/load.py measures the whole process under load (sockets, discord.py, the gateway); this
isolates the part the bot's own code adds.

Run by hand: ``.venv/bin/python -m bench.per_token``.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from bot.chat_chunk import merged_chunks
from bot.discord_scheduler import DiscordScheduler
from bot.ndjson import NdjsonDecoder
from bot.reply_text import Controls


class NullTarget:
    async def send(self, index: int, text: str, *, controls: Controls | None) -> bool:
        return True

    async def edit(self, index: int, text: str, *, controls: Controls | None) -> bool:
        return True


LINE = (
    b'{"model":"llama3.2","created_at":"2025-10-21T09:14:03.482091517Z",'
    b'"message":{"role":"assistant","content":" word"},"done":false}\n'
)


async def measure(tokens: int, per_read: int) -> float:
    scheduler = DiscordScheduler(time.monotonic, edit_interval=1.0)
    reply = scheduler.reply(1, NullTarget())
    decoder = NdjsonDecoder()
    read = LINE * per_read
    started = time.process_time()
    for _ in range(tokens // per_read):
        for chunk in merged_chunks(decoder.feed(read)):
            await reply.feed(chunk.content)
    elapsed = time.process_time() - started
    await reply.finish()
    return elapsed / tokens * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=20_000)
    parser.add_argument("--per-read", type=int, default=1, help="lines per read")
    args = parser.parse_args()
    tokens = args.tokens - args.tokens % args.per_read
    micros = asyncio.run(measure(tokens, args.per_read))
    print(
        f"{tokens:,} tokens ({tokens * 5:,} characters, split into Discord messages), "
        f"{args.per_read} per read: {micros:.1f} µs of CPU per token"
    )


if __name__ == "__main__":
    main()
