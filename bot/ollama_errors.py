"""The errors of talking to Ollama: one class per thing a caller branches on.

The Discord layer maps each class to one user message (bot/user_messages.py) and each error to
one metrics label (:attr:`OllamaError.label`). The texts name the endpoint that failed when it
is known, so a log line says which request broke. Constructor arguments added for that
(``endpoint``, ``url``) are keyword-only and optional: older call sites keep working.
"""

from __future__ import annotations


class OllamaError(Exception):
    """Base of every failure talking to Ollama."""

    #: The API path that failed (``/api/chat``, ...), or ``""`` when it is not known.
    endpoint: str = ""

    @property
    def label(self) -> str:
        """A short, low-cardinality name for metrics (``ollama_errors_total{kind=...}``)."""
        return "other"


class OllamaUnavailable(OllamaError, ConnectionError):
    """Ollama could not be reached (refused, DNS, connect timeout, closed before answering).

    A :class:`ConnectionError` too, as aiohttp and httpx errors of this kind are.
    """

    def __init__(self, url: str, reason: str, *, endpoint: str = "") -> None:
        target = f"{url} for {endpoint}" if endpoint else url
        super().__init__(f"cannot reach Ollama at {target}: {reason}")
        self.url = url
        self.reason = reason
        self.endpoint = endpoint

    @property
    def label(self) -> str:
        return "unavailable"


class ModelNotFound(OllamaError):
    """The model is not pulled (a JSON 404, either wording: docs/ollama-protocol.md#errors)."""

    def __init__(self, model: str, detail: str = "", *, endpoint: str = "") -> None:
        where = f" on {endpoint}" if endpoint else ""
        super().__init__(f"model {model!r} not found{where}" + (f" ({detail})" if detail else ""))
        self.model = model
        self.detail = detail
        self.endpoint = endpoint

    @property
    def label(self) -> str:
        return "model_not_found"


class OllamaRequestError(OllamaError):
    """Ollama answered with an HTTP error status (docs/ollama-protocol.md#errors): 400 bad request,
    500 failures, ...

    ``message`` is the server's own text; ``str()`` adds where it came from. ``from_server``:
    the text is Ollama's own ``{"error": ...}`` (fit to show users); otherwise it is whatever
    answered (a proxy's HTML page, a router's "404 page not found"), for the log only.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        url: str = "",
        endpoint: str = "",
        from_server: bool = True,
    ) -> None:
        who = f"Ollama at {url}" if url else "Ollama"
        where = f" on {endpoint}" if endpoint else ""
        super().__init__(f"{who} answered {status}{where}: {message}")
        self.status = status
        self.message = message
        self.url = url
        self.endpoint = endpoint
        self.from_server = from_server

    @property
    def label(self) -> str:
        return f"http_{self.status}"


class OllamaBusy(OllamaRequestError):
    """503: Ollama's request queue is full (OLLAMA_MAX_QUEUE); retry later."""

    @property
    def label(self) -> str:
        return "busy"


class OllamaTimeout(OllamaError, TimeoutError):
    """No bytes arrived for ``read_timeout`` seconds (a hung server or a very slow load).

    A :class:`TimeoutError` too, as aiohttp's and httpx's timeouts are. ``started``: some of
    the answer had arrived before it went quiet.
    """

    def __init__(self, seconds: float, *, started: bool, endpoint: str = "") -> None:
        on = f" on {endpoint}" if endpoint else ""
        where = "in the middle of the reply" if started else "before answering"
        super().__init__(f"Ollama sent nothing{on} for {seconds:g} s {where}")
        self.seconds = seconds
        self.started = started
        self.endpoint = endpoint

    @property
    def label(self) -> str:
        return "timeout"


class StreamInterrupted(OllamaError):
    """The answer started, then ended without finishing (docs/ollama-protocol.md#error-line,
    #eof-without-done, #dropped).

    ``kind`` is one of: ``"model_error"`` (an ``{"error"}`` line after a 200),
    ``"incomplete"`` (clean EOF without a done line), ``"dropped"`` (the connection was cut),
    ``"malformed"`` (a line or body that is not a JSON object).
    """

    def __init__(self, kind: str, detail: str, *, endpoint: str = "") -> None:
        of = f" of {endpoint}" if endpoint else ""
        super().__init__(f"stream{of} interrupted ({kind}): {detail}")
        self.kind = kind
        self.detail = detail
        self.endpoint = endpoint

    @property
    def label(self) -> str:
        return f"stream_{self.kind}"
