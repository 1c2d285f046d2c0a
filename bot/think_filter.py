"""Hide ``<think>...</think>`` reasoning that older Ollama servers leave in ``content``.

Since v0.9 Ollama separates reasoning into ``message.thinking`` (which the bot never shows).
Older servers, and models whose template does not declare thinking, put it in the content as a
leading ``<think>`` block. The block can arrive split across any number of deltas, so this is
a small streaming state machine: pure, fed one delta at a time.
"""

from __future__ import annotations

OPEN = "<think>"
CLOSE = "</think>"


class ThinkFilter:
    """Feed content deltas; get back the visible part. Only a block at the very start counts:
    a ``<think>`` later in an answer is text (e.g. the model explaining the tag). Whitespace
    after the block is kept; the engine trims the start of every reply."""

    def __init__(self) -> None:
        self._state = "start"  # start -> (thinking ->) visible
        self._held = ""
        self.thought = ""  # the reasoning hidden so far (shown only on request)

    @property
    def thinking(self) -> bool:
        """Inside a ``<think>`` block now."""
        return self._state == "thinking"

    def feed(self, delta: str) -> str:
        if self._state == "visible":
            return delta
        self._held += delta
        if self._state == "start":
            stripped = self._held.lstrip()
            if OPEN.startswith(stripped):
                return ""  # could still become "<think>": hold it back
            if not stripped.startswith(OPEN):
                self._state = "visible"
                visible, self._held = self._held, ""
                return visible
            self._state = "thinking"
            self._held = stripped[len(OPEN) :]
        end = self._held.find(CLOSE)
        if end == -1:
            # Keep only what could be the start of "</think>"; the rest is reasoning.
            keep = len(CLOSE) - 1
            self.thought += self._held[:-keep] if len(self._held) > keep else ""
            self._held = self._held[-keep:]
            return ""
        self.thought += self._held[:end]
        self._state = "visible"
        visible, self._held = self._held[end + len(CLOSE) :], ""
        return visible

    def flush(self) -> str:
        """At the end of the stream: text held back that never became a ``<think>`` block."""
        held, self._held = self._held, ""
        if self._state == "start":
            self._state = "visible"
            return held
        return ""
