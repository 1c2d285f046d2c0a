"""`python -m bot console`: the simple-chat loop in a terminal, same engine and store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from bot.context_window import SUMMARY_REQUEST_MARK, is_summary_request
from tests.fake_ollama import FakeOllama, Reply

ROOT = Path(__file__).resolve().parent.parent


def run_console(
    fake: FakeOllama, stdin: str, tmp_path: Path, store: str = "memory://", **extra: str
) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("LOG_", "OLLAMA_"))},
        "OLLAMA_URL": fake.url,
        "OLLAMA_MODEL": "llama3.2",
        "HISTORY_STORE": store,
        "DISCORD_TOKEN": "",
        **extra,
    }
    return subprocess.run(
        [sys.executable, "-m", "bot", "console"],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=tmp_path,  # no .env there: only the variables above count
        env={**env, "PYTHONPATH": str(ROOT)},
        timeout=60,
        check=False,
    )


def test_console_streams_tokens_and_keeps_history(fake_ollama: FakeOllama, tmp_path: Path) -> None:
    fake_ollama.queue(
        Reply(tokens=["Nice", " to", " meet", " you."]),
        Reply(tokens=["Your", " name", " is", " Ada."]),
    )

    done = run_console(fake_ollama, "my name is Ada\nwhat is my name?\n\n", tmp_path)

    assert done.returncode == 0, done.stderr
    assert "Nice to meet you.\n" in done.stdout
    assert "Your name is Ada.\n" in done.stdout
    assert [m["content"] for m in fake_ollama.chat_requests[1]["messages"]] == [
        "my name is Ada",
        "Nice to meet you.",
        "what is my name?",
    ]


def test_console_history_survives_a_restart_with_sqlite(
    fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    store = f"sqlite:///{tmp_path}/console.db"
    assert run_console(fake_ollama, "remember 7\n", tmp_path, store).returncode == 0  # EOF quits
    done = run_console(fake_ollama, "what number?\n\n", tmp_path, store)
    assert done.returncode == 0, done.stderr
    assert "2 earlier messages kept" in done.stdout
    assert len(fake_ollama.chat_requests[-1]["messages"]) == 3


def test_console_shows_a_clear_error_when_ollama_is_down(tmp_path: Path) -> None:
    with FakeOllama() as fake:
        url = fake.url
    fake_down = type("Down", (), {"url": url})()
    done = run_console(fake_down, "hello\n\n", tmp_path)  # type: ignore[arg-type]
    assert done.returncode == 0
    assert f"can't reach Ollama at {url}" in done.stdout
    # A problem still reaches the terminal (stderr), as one log line.
    assert "WARNING bot.turn_end event=reply" in done.stderr


def test_console_terminal_holds_only_the_conversation(
    fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    fake_ollama.queue(Reply(tokens=["Hello", " Ada."]), Reply(tokens=["Bye", " now."]))

    done = run_console(fake_ollama, "hi, I am Ada\nbye\n\n", tmp_path)

    assert done.returncode == 0, done.stderr
    assert "Hello Ada.\n" in done.stdout and "Bye now.\n" in done.stdout
    # At the default LOG_LEVEL (INFO) no log line interleaves with the chat, on either stream.
    assert done.stderr == ""
    assert "event=" not in done.stdout and " INFO " not in done.stdout


def test_console_log_file_gets_the_info_lines(fake_ollama: FakeOllama, tmp_path: Path) -> None:
    log_file = tmp_path / "logs" / "console.log"
    log_file.parent.mkdir()
    fake_ollama.queue(Reply(tokens=["Hello", " Ada."]))

    done = run_console(fake_ollama, "hi\n\n", tmp_path, LOG_FILE=str(log_file))

    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    logged = log_file.read_text()
    assert "INFO bot.turn_end event=reply conversation=console:default outcome=ok" in logged


def _summary_of(prompt: list[dict[str, Any]]) -> str | None:
    """The summary a chat prompt carries (its system message), if any."""
    return next(
        (m["content"] for m in prompt if m["content"].startswith("Summary of the earlier")), None
    )


def test_back_to_back_turns_fold_old_turns_into_summaries_that_reuse_the_prompt(
    fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    written: list[str] = []

    def respond(messages: list[dict[str, Any]]) -> str | None:
        if is_summary_request(messages):
            written.append(f"SUMMARY-{len(written) + 1}: they talked about topics so far.")
            return written[-1]
        return "Noted: " + " ".join(f"reply{j}" for j in range(25))

    fake_ollama.responder = respond
    lines = [f"topic {i}: " + " ".join(f"detail{i}x{j}" for j in range(30)) for i in range(30)]
    # Each line is typed the moment the previous answer is complete: no idle time at all.
    done = run_console(fake_ollama, "\n".join(lines) + "\n\n", tmp_path, CONTEXT_TOKENS="1024")
    assert done.returncode == 0, done.stderr

    requests = [r["messages"] for r in fake_ollama.chat_requests]
    summary_requests = [i for i, m in enumerate(requests) if is_summary_request(m)]
    assert len(summary_requests) >= 3, "back-to-back turns still get their summaries"
    chats = [m for m in requests if not is_summary_request(m)]
    assert len(chats) == 30
    for i in summary_requests:
        # A summary request is the preceding chat request (and its answer), then the instruction.
        previous = next(m for m in reversed(requests[:i]) if not is_summary_request(m))
        assert requests[i][: len(previous)] == previous
        assert requests[i][-1]["content"].startswith(SUMMARY_REQUEST_MARK)
    before: list[dict[str, Any]] | None = None
    summaries_written = 0
    for prompt in requests:
        if is_summary_request(prompt):
            summaries_written += 1
            continue
        if before is not None and _summary_of(prompt) == _summary_of(before):
            # No fold in between: the prompt only grew; its beginning is byte-identical.
            assert prompt[: len(before)] == before
        elif before is not None:
            # Right after a fold: the prompt carries the summary the model wrote last.
            assert f"SUMMARY-{summaries_written}:" in str(_summary_of(prompt))
        before = prompt
    assert all(_summary_of(c) is not None for c in chats[-5:])
    assert "outcome=dropped" not in done.stderr
