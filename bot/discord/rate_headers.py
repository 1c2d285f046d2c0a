"""What Discord says about its rate limits, read where discord.py keeps it, for the scheduler.

discord.py reads ``X-RateLimit-Remaining`` / ``Reset-After`` / ``Bucket`` from every response
into its per-bucket state, and handles a 429 itself (it sleeps and retries, logging a warning).
The scheduler plans from a model of Discord's limits; these two readers let it correct the
model: with each answer's headers, and when a 429 happened anyway.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from typing import Any

# The routes whose bucket is a channel's message writes (creates and edits: reactions, pins
# and the rest have buckets of their own), as discord.py's Route templates and as URLs in its
# warning for a 429 it is about to wait out ("... %s %s responded with 429 ...").
MESSAGE_ROUTES = {"/channels/{channel_id}/messages", "/channels/{channel_id}/messages/{message_id}"}
_CHANNEL_URL = re.compile(r"/channels/(\d+)/messages(?:/\d+)?$")
_GLOBAL_WARNING = "Global rate limit has been hit"


def message_bucket(http: Any, route: Any) -> tuple[int, int, float] | None:
    """(channel id, requests remaining, seconds until the bucket resets) of the message bucket
    a request just used, as Discord's headers said (None: not a message route, or unknown).

    Reads discord.py's bucket state (``HTTPClient._bucket_hashes`` and ``_buckets``: private,
    which is why discord.py is pinned to one minor version): the same key it uses itself."""
    channel = getattr(route, "channel_id", None)
    if channel is None or getattr(route, "path", "") not in MESSAGE_ROUTES:
        return None
    hashes = getattr(http, "_bucket_hashes", {})
    buckets = getattr(http, "_buckets", {})
    bucket = buckets.get(f"{hashes.get(route.key, route.key)}:{route.major_parameters}")
    remaining = getattr(bucket, "remaining", None)
    reset_after = getattr(bucket, "reset_after", None)
    if not isinstance(remaining, int) or not isinstance(reset_after, float) or reset_after <= 0:
        return None  # never filled from headers (the fake or Discord sent none)
    return int(channel), remaining, reset_after


class RateLimitListener(logging.Handler):
    """Hands each 429 discord.py meets on a channel's messages to ``rate_limited(channel,
    retry_after)``, and each 429 for the whole bot to ``globally(retry_after)``.

    discord.py logs a 429 ("... responded with 429 ...") and, when it was the global limit,
    a second warning right after ("Global rate limit has been hit ..."), with no await in
    between. So a channel's 429 is handed over on the next turn of the event loop, unless the
    global warning came first: a global 429 says nothing about the channel's own bucket."""

    def __init__(
        self,
        rate_limited: Callable[[int, float], None],
        globally: Callable[[float], None] | None = None,
    ) -> None:
        super().__init__(logging.WARNING)
        self.rate_limited = rate_limited
        self.globally = globally
        self._pending: tuple[int, float] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        message = str(record.msg)
        args = record.args if isinstance(record.args, tuple) else ()
        if message.startswith(_GLOBAL_WARNING):
            self._pending = None  # the 429 just logged was the bot's, not its channel's
            if self.globally is not None and args and isinstance(args[0], int | float):
                self.globally(float(args[0]))
            return
        if "responded with 429" not in message or len(args) < 3:
            return
        # A new 429: the one before it (another call's) was not followed by the global
        # warning, so it was its channel's.
        self._hand_over()
        match = _CHANNEL_URL.search(str(args[1]))
        if match is None or not isinstance(args[2], int | float):
            return
        self._pending = (int(match.group(1)), float(args[2]))
        try:
            asyncio.get_running_loop().call_soon(self._hand_over)
        except RuntimeError:  # no loop (discord.py always logs from one): no global warning
            self._hand_over()

    def _hand_over(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            self.rate_limited(*pending)
