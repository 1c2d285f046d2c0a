"""Prometheus metrics, in a registry of the bot's own (one per bot, so tests can make many)."""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Seconds: from a second (warm model) to minutes (cold load on a CPU).
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
DURATION_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class Metrics:
    """Everything the bot counts. Updated by the engine and the Discord layer."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.replies = Counter("ollacord_replies", "Replies by outcome", ["outcome"], registry=r)
        self.tokens = Counter(
            "ollacord_tokens_streamed", "Tokens of answer text streamed from Ollama", registry=r
        )
        self.time_to_first_token = Histogram(
            "ollacord_time_to_first_token_seconds",
            "From starting the Ollama request to the first visible text",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.reply_duration = Histogram(
            "ollacord_reply_duration_seconds",
            "From starting the Ollama request to the final text",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self._discord_and_context(r)
        self._backends_and_load(r)

    def _discord_and_context(self, r: CollectorRegistry) -> None:
        self.discord_updates = Counter(
            "ollacord_discord_updates",
            "Discord messages sent and edited for replies",
            ["kind"],
            registry=r,
        )
        self.discord_failures = Counter(
            "ollacord_discord_failures", "Discord sends and edits that failed", ["kind"], registry=r
        )
        self.discord_rate_limited = Counter(
            "ollacord_discord_rate_limited", "HTTP 429 answers seen from Discord", registry=r
        )
        self.ollama_errors = Counter(
            "ollacord_ollama_errors", "Ollama failures by kind", ["kind"], registry=r
        )
        self.summaries = Counter(
            "ollacord_summaries",
            "Rolling summaries by outcome (summarised, failed, stale)",
            ["outcome"],
            registry=r,
        )
        self.turns_dropped = Counter(
            "ollacord_context_turns_dropped",
            "Turns dropped from prompts without a summary (Ollama could not write one)",
            registry=r,
        )

    def _backends_and_load(self, r: CollectorRegistry) -> None:
        self.backend_up = Gauge(
            "ollacord_backend_up",
            "Whether an Ollama backend takes requests",
            ["backend"],
            registry=r,
        )
        self.backend_in_flight = Gauge(
            "ollacord_backend_in_flight",
            "Requests this process has on an Ollama backend",
            ["backend"],
            registry=r,
        )
        self.backend_requests = Counter(
            "ollacord_backend_requests",
            "Requests sent to an Ollama backend",
            ["backend"],
            registry=r,
        )
        self.backend_failures = Counter(
            "ollacord_backend_failures",
            "Times an Ollama backend was marked down",
            ["backend"],
            registry=r,
        )
        self.backend_failovers = Counter(
            "ollacord_backend_failovers", "Requests moved to another Ollama backend", registry=r
        )
        self.requests_waiting = Gauge(
            "ollacord_requests_waiting",
            "Messages waiting for an earlier reply in the same channel",
            registry=r,
        )
        self.requests_in_flight = Gauge(
            "ollacord_requests_in_flight", "Replies being generated now", registry=r
        )

        self.event_loop_lag = Histogram(
            "ollacord_event_loop_lag_seconds",
            "How late the event loop wakes a timer (a busy loop delays every reply)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=r,
        )

    async def watch_event_loop(self, interval: float = 0.25) -> None:
        """Measure event-loop lag forever (runs beside the health server)."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(interval)
            self.event_loop_lag.observe(max(0.0, loop.time() - started - interval))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RateLimitLogCounter(logging.Handler):
    """Counts discord.py's own "We are being rate limited" warnings: discord.py handles 429s
    internally (sleeps and retries), and this log line is the one trace it leaves."""

    def __init__(self, metrics: Metrics) -> None:
        super().__init__(logging.WARNING)
        self.metrics = metrics

    def emit(self, record: logging.LogRecord) -> None:
        if "rate limited" in str(record.msg):
            self.metrics.discord_rate_limited.inc()
