"""Configuration: one frozen object, built once from the environment and validated at start-up."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .setting_values import (
    ConfigError,
    Parser,
    backends,
    boolean,
    choice,
    keep_alive,
    log_file,
    number,
    options,
    parse_id_list,
    port,
    prompt,
    shown_url,
    small_ids,
    store,
    text,
    whole,
)

__all__ = ["ConfigError", "Settings", "parse_id_list", "shown_url"]

DEFAULT_OLLAMA_URL = "http://localhost:11434"
DEFAULT_MODEL = "llama3.2"
DEFAULT_HISTORY_STORE = "sqlite:///data/history.db"


@dataclass(frozen=True)
class Settings:
    """Every knob of the bot. Build it with :meth:`from_env`; field names mirror the variables."""

    discord_token: str = field(default="", repr=False)  # never printed: repr hides it
    ollama_url: str = DEFAULT_OLLAMA_URL  # the first backend (messages that name one server)
    # Every backend: (URL, generations it runs at once). OLLAMA_URL lists them.
    ollama_backends: tuple[tuple[str, int], ...] = ((DEFAULT_OLLAMA_URL, 1),)
    ollama_model: str = DEFAULT_MODEL
    system_prompt: str = ""
    history_store: str = field(default=DEFAULT_HISTORY_STORE, repr=False)  # may hold a password
    edit_interval: float = 1.0
    ollama_keep_alive: str | float | None = None
    ollama_options: Mapping[str, Any] = field(default_factory=dict)
    thinking: str = "hide"  # THINKING: hide (reason, answer shown, reasoning on request) or off
    max_reply_messages: int = 4
    image_max_side: int = 1024
    max_images: int = 4
    image_history_turns: int = 2
    max_attachment_bytes: int = 10_000_000
    max_text_attachment_chars: int = 20_000
    shard_count: int | None = None  # SHARD_COUNT: run as a sharded bot (None: one connection)
    shard_ids: frozenset[int] = frozenset()  # SHARD_IDS: this process's shards (empty: all)
    context_tokens: int = 8192
    max_concurrent: int | None = None  # None: the backends' slots added up
    queue_limit: int = 25
    max_input_chars: int = 8000
    connect_timeout: float = 10.0
    read_timeout: float = 300.0
    read_beat: float = 0.1
    message_content_intent: bool = True
    log_level: str = "INFO"
    log_format: str = "text"
    log_file: str = ""  # empty: no log file
    auto_pull: bool = True
    health_host: str = "0.0.0.0"
    health_port: int = 8080
    shutdown_grace: float = 8.0
    admin_user_ids: frozenset[int] = frozenset()
    allowed_channel_ids: frozenset[int] = frozenset()
    allowed_role_ids: frozenset[int] = frozenset()
    allowed_user_ids: frozenset[int] = frozenset()
    blocked_user_ids: frozenset[int] = frozenset()
    blocked_role_ids: frozenset[int] = frozenset()
    allow_dms: bool = True
    reset_requires_admin: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Build settings from a mapping with the same names as `.env` (e.g. ``os.environ``).

        Blank values count as unset, so an `.env` copied from `.env.example` with empty
        lines keeps the defaults. The token is not required here: ``python -m bot`` checks it,
        the console mode does not need it.
        """

        values: dict[str, Any] = {}
        for name, (field_name, parse) in _PARSERS.items():
            raw = env.get(name)
            if raw is not None and raw.strip():
                values[field_name] = parse(name, raw.strip())
        if values.get("shard_ids") and values.get("shard_count") is None:
            raise ConfigError("SHARD_IDS needs SHARD_COUNT (how many shards the bot has in all)")
        if any(i >= values.get("shard_count", 0) for i in values.get("shard_ids", ())):
            raise ConfigError(
                f"SHARD_IDS must be below SHARD_COUNT ({values['shard_count']}): shard ids count "
                f"from 0, not {sorted(values['shard_ids'])}"
            )
        backends = values.get("ollama_backends", ((DEFAULT_OLLAMA_URL, 0),))
        # A server listed without "#slots": one generation at a time, or MAX_CONCURRENT if
        # it is the only one (the setting that matched Ollama's OLLAMA_NUM_PARALLEL).
        alone = values.get("max_concurrent", 1) if len(backends) == 1 else 1
        values["ollama_backends"] = tuple((url, slots or alone) for url, slots in backends)
        values["ollama_url"] = values["ollama_backends"][0][0]
        legacy = env.get("OLLAMA_THINK", "").strip()
        if legacy and "thinking" not in values:
            # The setting THINKING replaced: true let models reason, false asked them not to.
            values["thinking"] = "hide" if boolean("OLLAMA_THINK", legacy) else "off"
        return cls(**values)

    @property
    def concurrency(self) -> int:
        """Replies generated at once: MAX_CONCURRENT, or every backend's slots together."""
        return self.max_concurrent or sum(slots for _, slots in self.ollama_backends)

    @property
    def shard_share(self) -> float:
        """This process's part of the bot's shards (1.0 when it runs them all)."""
        if self.shard_count is None or not self.shard_ids:
            return 1.0
        return len(self.shard_ids) / self.shard_count

    def think_field(self, model_can_think: bool) -> bool | None:
        """The ``think`` request field: only for models that can think (others refuse it);
        for them, whether to reason first (THINKING=hide) or answer at once (off)."""
        if not model_can_think:
            return None
        return self.thinking != "off"

    def resolve(self, model: str | None, system_prompt: str | None) -> tuple[str, str]:
        """The model and system prompt a conversation uses: its own, else the defaults."""
        return (
            model or self.ollama_model,
            system_prompt if system_prompt is not None else self.system_prompt,
        )

    def describe(self) -> str:
        """A one-line summary for the start-up log; the token is never part of it."""
        shown = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "discord_token"}
        shown["history_store"] = shown_url(self.history_store)  # a Redis password stays hidden
        return " ".join(f"{name}={value!r}" for name, value in shown.items())


_PARSERS: dict[str, tuple[str, Parser]] = {
    "DISCORD_TOKEN": ("discord_token", text),
    "OLLAMA_URL": ("ollama_backends", backends),
    "OLLAMA_MODEL": ("ollama_model", text),
    "SYSTEM_PROMPT": ("system_prompt", prompt),
    "HISTORY_STORE": ("history_store", store),
    "EDIT_INTERVAL": ("edit_interval", number(0.0)),
    "OLLAMA_KEEP_ALIVE": ("ollama_keep_alive", keep_alive),
    "OLLAMA_OPTIONS": ("ollama_options", options),
    "THINKING": ("thinking", choice("hide", "off")),
    "MAX_REPLY_MESSAGES": ("max_reply_messages", whole(1)),
    "IMAGE_MAX_SIDE": ("image_max_side", whole(64)),
    "MAX_IMAGES": ("max_images", whole(0)),
    "IMAGE_HISTORY_TURNS": ("image_history_turns", whole(0)),
    "MAX_ATTACHMENT_BYTES": ("max_attachment_bytes", whole(1)),
    "MAX_TEXT_ATTACHMENT_CHARS": ("max_text_attachment_chars", whole(0)),
    "MAX_CONCURRENT": ("max_concurrent", whole(1)),
    "QUEUE_LIMIT": ("queue_limit", whole(1)),
    "CONTEXT_TOKENS": ("context_tokens", whole(512)),
    "MAX_INPUT_CHARS": ("max_input_chars", whole(1)),
    "OLLAMA_CONNECT_TIMEOUT": ("connect_timeout", number(0.1)),
    "OLLAMA_READ_TIMEOUT": ("read_timeout", number(1.0)),
    "OLLAMA_READ_BEAT": ("read_beat", number(0.0)),
    "MESSAGE_CONTENT_INTENT": ("message_content_intent", boolean),
    "LOG_FORMAT": ("log_format", choice("text", "json")),
    "LOG_FILE": ("log_file", log_file),
    "AUTO_PULL": ("auto_pull", boolean),
    "HEALTH_HOST": ("health_host", text),
    "HEALTH_PORT": ("health_port", port),
    "SHUTDOWN_GRACE": ("shutdown_grace", number(0.0)),
    **{
        name: (name.lower(), parse_id_list)
        for name in (
            "ADMIN_USER_IDS",
            "ALLOWED_CHANNEL_IDS",
            "ALLOWED_ROLE_IDS",
            "ALLOWED_USER_IDS",
            "BLOCKED_USER_IDS",
            "BLOCKED_ROLE_IDS",
        )
    },
    "ALLOW_DMS": ("allow_dms", boolean),
    "RESET_REQUIRES_ADMIN": ("reset_requires_admin", boolean),
    "LOG_LEVEL": ("log_level", choice("DEBUG", "INFO", "WARNING", "ERROR")),
    "SHARD_COUNT": ("shard_count", whole(1)),
    "SHARD_IDS": ("shard_ids", small_ids),
}
