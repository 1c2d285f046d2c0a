"""What the user reads when something goes wrong: one table, used by Discord and the console."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .ollama import (
    ModelNotFound,
    OllamaBusy,
    OllamaError,
    OllamaRequestError,
    OllamaTimeout,
    OllamaUnavailable,
    StreamInterrupted,
)

HINT = (
    "Hi! Mention me with a question, e.g. `@{name} what is a monad?` "
    "(in a DM, just write). `/reset` makes me forget this channel's conversation."
)
EMPTY_REPLY = "⚠️ The model returned an empty reply. Try rephrasing, or `/reset` the conversation."
TOO_LONG = (
    "⚠️ That message is too long for me ({length:,} characters; the limit is {limit:,}). "
    "Please shorten it or split it into parts."
)
TOO_LONG_FOR_CONTEXT = (
    "⚠️ That message is too long for the model's context ({num_ctx:,} tokens). "
    "Please shorten it or split it into parts."
)
RESET_DONE = "🧹 Done: I forgot this conversation. The next message starts fresh."
RESET_STOPPED = "*(stopped: the conversation was reset)*"
INTERRUPTED = "*(interrupted, please ask again)*"
RESTART_NOTE = "*(interrupted by a restart, please ask again)*"
RESTARTING = "⏳ I'm restarting right now. Please ask again in a moment."
NOT_ADMIN = (
    "⛔ Only the bot's admins (ADMIN_USER_IDS) or members with the Manage Server permission "
    "can do that."
)
NOT_CONFIGURATOR = (
    "⛔ Only the bot's admins or members with the Manage Channels permission can change this "
    "channel's settings."
)
ONE_AT_A_TIME = "⏳ You already have a question waiting here; I'll answer that one first."
TOO_MANY_WAITING = (
    "✋ You already have {count} questions waiting here, so I won't answer that one. "
    "Please ask it again once I've answered them."
)


def attachment_not_downloaded(filename: str) -> str:
    return f"📎 I couldn't download {filename} from Discord; please try attaching it again."


def no_vision(model: str) -> str:
    """A model that cannot see was sent images (they never reach it)."""
    return f"🖼️ {model} can't see images; `/model` a vision model such as gemma3 to discuss them."


BUSY = "⏳ I'm busy with many questions right now. Please try again shortly."
STOPPED_NOTE = "*(stopped)*"
LENGTH_NOTE = "⚠️ *(cut off: the answer reached its length limit)*"
# How an answer cut by the length limit is kept in the history (the model reads it next turn).
LENGTH_MARK = "[cut off: this answer reached its length limit]"
# How a stopped answer is kept in the history, so the model knows it was cut short.
STOPPED_MARK = "[stopped by the user]"
NOT_LATEST = "⚠️ This answer is no longer the latest one here, so it can't be regenerated."
BUTTON_EXPIRED = (
    "⌛ This button has expired: that reply is no longer running here (or the bot restarted)."
)
NOT_YOURS_TO_STOP = "⛔ Only the person who asked (or someone with Manage Messages) can stop it."
NOT_YOURS_TO_REGENERATE = "⛔ Only the person who asked can regenerate this answer."
NOT_FOR_YOU = (
    "⛔ Sorry, I'm not available to you here. Ask the server's admins if you think you should be."
)
DMS_OFF = "⛔ I don't answer direct messages. Mention me in a server channel instead."
DM_NOT_ALLOWED = (
    "⛔ I only answer DMs from members with an allowed role in a server we share, and I couldn't "
    "find one for you."
)
DM_BLOCKED = "⛔ Sorry, I'm not available to you."
RESET_REFUSED = "⛔ You can't reset this conversation here."
STORE_UNAVAILABLE = (
    "⚠️ I can't reach my memory of this conversation right now (the history store is failing; "
    "details are in the bot's log), so I didn't answer. Please try again in a minute."
)
STORE_UNAVAILABLE_COMMAND = (
    "⚠️ I can't reach my memory of this conversation right now (the history store is failing; "
    "details are in the bot's log), so nothing was changed. Please try again in a minute."
)
INTERNAL_ERROR = (
    "⚠️ Something went wrong on my side (details are in the bot's log). Please try again."
)


def error_message(error: OllamaError, *, model: str) -> str:
    """The one message shown in place of a reply that never started."""
    if isinstance(error, ModelNotFound):
        return (
            f"⚠️ The model `{model}` is not available on the Ollama server. "
            f"Pull it there with `ollama pull {model}`, or set `OLLAMA_MODEL` to a model you have."
        )
    if isinstance(error, OllamaUnavailable):
        return (
            f"⚠️ I can't reach Ollama at {error.url} ({error.reason}). "
            "Is it running, and is `OLLAMA_URL` right? (From a container, `localhost` is the "
            "container itself: use the service name or `host.docker.internal`.)"
        )
    if isinstance(error, OllamaBusy):
        return "⚠️ Ollama is busy with too many requests right now. Please try again in a moment."
    if isinstance(error, OllamaTimeout):
        return (
            f"⚠️ Ollama did not answer within {error.seconds:g} s. The model may still be loading "
            "or the server is overloaded; please try again."
        )
    if isinstance(error, OllamaRequestError):
        return request_failed(error)
    if isinstance(error, StreamInterrupted):
        return f"⚠️ The reply failed: {cut_off_reason(error)}."
    return f"⚠️ Something went wrong talking to Ollama: {error}"


# Ollama's own error texts are short; anything longer is cut for the channel (the log has it).
SHOWN_ERROR_CHARS = 300


def request_failed(error: OllamaRequestError) -> str:
    """An HTTP error. Ollama's own ``{"error"}`` text is shown; anything else (a proxy's HTML
    page, a router's 404) stays in the log, and the channel gets a plain sentence."""
    if not error.from_server:
        if error.status == 404:
            return (
                f"⚠️ {error.url or 'OLLAMA_URL'} does not look like an Ollama server (it has no "
                f"{error.endpoint or 'Ollama API'}). Check `OLLAMA_URL`."
            )
        return (
            f"⚠️ Ollama (or a proxy in front of it) failed to answer (HTTP {error.status}). "
            "The details are in the bot's log."
        )
    message = error.message[:SHOWN_ERROR_CHARS]
    if error.status == 400:
        return f"⚠️ Ollama rejected the request: {message}"
    return f"⚠️ Ollama failed to answer (HTTP {error.status}): {message}"


def cut_off_reason(error: OllamaError) -> str:
    if isinstance(error, StreamInterrupted):
        if error.kind == "model_error":
            return f"the model stopped with an error ({error.detail})"
        if error.kind == "incomplete":
            return "Ollama ended the reply early"
        if error.kind == "malformed":
            return "Ollama sent something that is not a reply"
        return "the connection to Ollama was lost"
    if isinstance(error, OllamaTimeout):
        return f"Ollama sent nothing for {error.seconds:g} s"
    return str(error)


def cut_off_note(error: OllamaError) -> str:
    """Appended to a reply that was cut off mid-stream (the text already shown stays)."""
    return f"⚠️ *(reply cut off: {cut_off_reason(error)})*"


def still_downloading(model: str, percent: int) -> str:
    return (
        f"⏳ The model `{model}` is still downloading: {percent}%. "
        "Please ask again when it is done."
    )


def progress_bar(percent: int, width: int = 20) -> str:
    filled = max(0, min(width, round(width * percent / 100)))
    return "█" * filled + "░" * (width - filled)


def pull_progress(model: str, percent: int, detail: str) -> str:
    return f"⬇️ Pulling `{model}`: `{progress_bar(percent)}` {detail}"


def pull_succeeded(model: str, total_bytes: int) -> str:
    size = f" ({total_bytes / 1048576:,.0f} MB)" if total_bytes else ""
    return f"✅ `{model}` is ready{size}."


def pull_failed(model: str, error: OllamaError) -> str:
    if isinstance(error, OllamaUnavailable):
        return f"⚠️ Pulling `{model}` failed: I can't reach Ollama at {error.url} ({error.reason})."
    if isinstance(error, OllamaRequestError):
        if not error.from_server:
            return f"⚠️ Pulling `{model}` failed: {request_failed(error).removeprefix('⚠️ ')}"
        return f"⚠️ Pulling `{model}` failed: {error.message[:SHOWN_ERROR_CHARS]}"
    return f"⚠️ Pulling `{model}` failed: {error}"


REASONING_GONE = (
    "💭 That answer's reasoning is no longer kept (the conversation was reset, or the answer "
    "was regenerated)."
)
REASONING_ATTACHED = "💭 The model's reasoning for that answer is in the attached file."


def reasoning_shown(text: str) -> str:
    return f"💭 **The model's reasoning for that answer:**\n>>> {text}"


REPLY_OVERFLOW = (
    "📄 This answer is long: it continues in **answer.md** (the whole answer, attached when it "
    "is complete)."
)


def thinking_status(seconds: float) -> str:
    """Shown in place of a reply while the model reasons before answering."""
    return f"💭 Thinking… {int(seconds)} s"


def queued_status(ahead: int) -> str:
    """Shown in place of a reply while it waits for its turn."""
    if ahead == 0:
        return "⏳ Queued: you're next."
    return f"⏳ Queued: {ahead} ahead of you."


# --- start-up --------------------------------------------------------------------------------

MISSING_TOKEN = """\
DISCORD_TOKEN is not set.

Get one at https://discord.com/developers/applications: create an application, open "Bot",
press "Reset Token" and copy it. Then put it in .env (copy .env.example to .env):

    DISCORD_TOKEN=your-token-here

See README.md, "Discord application setup". (`python -m bot console` needs no token.)
"""
TOKEN_REJECTED = (
    "Discord rejected DISCORD_TOKEN (401 Unauthorized): reset the token in the developer "
    "portal (Bot -> Reset Token), put the new one in .env and start the bot again."
)
INTENTS_REFUSED = (
    "Discord refused the Message Content intent: enable it in the developer portal "
    "(Bot -> Privileged Gateway Intents -> Message Content Intent), or set "
    "MESSAGE_CONTENT_INTENT=false (mentions and DMs still work without it)."
)


# --- slash commands --------------------------------------------------------------------------

NO_CHANNEL = "⚠️ This command only works in a channel, thread or DM."
SYSTEM_PROMPT_SET = "📝 System prompt set for this channel."
SYSTEM_PROMPT_CLEARED = "📝 This channel uses the default system prompt again."
NO_SYSTEM_PROMPT = "No system prompt is set."


def model_in_use(model: str) -> str:
    return f"This channel uses `{model}`."


def model_unknown(name: str) -> str:
    return f"⚠️ Ollama has no model `{name}`. Pick one from the list, or `/pull` it first."


def model_chosen(model: str | None, default: str) -> str:
    shown = model or f"{default} (the default)"
    return f"🧠 This channel now uses `{shown}`."


def system_prompt_shown(prompt: str, *, own: bool) -> str:
    origin = "this channel's" if own else "the default"
    return f"System prompt ({origin}):\n>>> {prompt}"


def summary_shown(summary: str, written_at: float) -> str:
    """The summary's first line (cut short), and when it was written (Discord shows the
    ``<t:...:R>`` timestamp as "5 minutes ago" in the reader's own time)."""
    if not summary:
        return "none yet"
    first = summary.strip().splitlines()[0]
    first = first if len(first) <= 150 else first[:149] + "…"
    when = f" (updated <t:{int(written_at)}:R>)" if written_at else ""
    return f"“{first}”{when}"


def status_lines(
    info: Mapping[str, Any], *, own_system_prompt: bool, system_prompt: str
) -> list[str]:
    """``/status``: the model and how much of its context the conversation uses."""
    percent = 100 * info["tokens_used"] // max(1, info["budget"])
    return [
        f"**Model:** `{info['model']}` (sees images: {'yes' if info['vision'] else 'no'}; "
        f"reasons before answering: {'yes' if info['thinking'] else 'no'})",
        f"**Turns kept:** {info['turns']} (messages sent with each request)",
        f"**Summary of older turns:** {summary_shown(info['summary'], info['summary_at'])}",
        f"**Context used:** about {info['tokens_used']:,} of {info['budget']:,} tokens "
        f"({percent}%; num_ctx {info['num_ctx']:,})",
        f"**System prompt:** {'this channel' if own_system_prompt else 'default'}"
        f"{'' if system_prompt else ' (empty)'}",
    ]


# --- attachments -----------------------------------------------------------------------------
# Why an attached file is not used (bot/attachments.py), one short sentence each, naming the
# file so that several can be listed together; and the line that tells the model a text file
# was cut. Names are shown in backticks: Discord would read "my_notes_v2.txt" as italics.

ATTACHMENT_IMAGE_FORMATS = "PNG, JPEG, WebP and GIF"


def _attached_name(filename: str) -> str:
    shown = " ".join(filename.replace("`", "'").split()) or "(no name)"
    return f"`{shown if len(shown) <= 100 else shown[:99] + '…'}`"


def _megabytes(size: int) -> str:
    return f"{size / 1_000_000:,.1f}".removesuffix(".0") + " MB"


def attachment_too_big(filename: str, size: int, limit: int) -> str:
    return (
        f"I didn't open {_attached_name(filename)}: it is too big "
        f"({_megabytes(size)}; the limit is {_megabytes(limit)})."
    )


def attachment_too_many_images(filename: str, limit: int) -> str:
    if limit == 0:
        return f"I didn't look at {_attached_name(filename)}: I can't look at images here."
    return (
        f"I didn't look at {_attached_name(filename)}: I look at {limit} "
        f"image{'' if limit == 1 else 's'} per message at most."
    )


def attachment_image_damaged(filename: str) -> str:
    return f"I couldn't open {_attached_name(filename)}: the image looks damaged or incomplete."


def attachment_image_unsupported(filename: str, kind: str) -> str:
    return (
        f"I can't look at {_attached_name(filename)} ({kind}): "
        f"I can read {ATTACHMENT_IMAGE_FORMATS} images."
    )


def attachment_image_too_large(filename: str, max_pixels: int) -> str:
    return (
        f"I didn't open {_attached_name(filename)}: the image has too many pixels for me "
        f"(the limit is {max_pixels / 1_000_000:g} megapixels). Please send a smaller version."
    )


def attachment_not_utf8(filename: str) -> str:
    return (
        f"I can't read {_attached_name(filename)}: it isn't UTF-8 text. "
        "Save it as UTF-8 and attach it again."
    )


def attachment_binary(filename: str, kind: str | None) -> str:
    if kind is None:
        return f"I can't read {_attached_name(filename)}: it is neither text nor an image."
    return (
        f"I can't read {_attached_name(filename)} ({kind}): I can only read images and text files."
    )


def attachment_over_text_limit(filename: str, limit: int) -> str:
    return (
        f"I didn't read {_attached_name(filename)}: I read {limit:,} characters of text files "
        "per message, and the files before it used them up."
    )


def attachment_text_cut(filename: str, chars: int) -> str:
    """For the model, after a text file that was cut (in the message it reads)."""
    return f"[only the first {chars:,} characters of {filename} were read]"
