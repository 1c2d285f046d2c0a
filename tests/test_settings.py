"""Settings.from_env: defaults, parsing, and errors that name the variable."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from bot.settings import ConfigError, Settings


def test_defaults_from_an_empty_environment() -> None:
    settings = Settings.from_env({})
    assert settings.ollama_url == "http://localhost:11434"
    assert settings.history_store == "sqlite:///data/history.db"
    assert settings.edit_interval == 1.0
    assert settings.ollama_options == {}
    assert settings.ollama_keep_alive is None
    assert settings.discord_token == ""


def test_blank_values_keep_the_defaults() -> None:
    settings = Settings.from_env({"OLLAMA_URL": "  ", "EDIT_INTERVAL": "", "OLLAMA_MODEL": ""})
    assert settings == Settings.from_env({})


def test_every_variable_is_read() -> None:
    settings = Settings.from_env(
        {
            "DISCORD_TOKEN": "abc.def.ghi",
            "OLLAMA_URL": "http://ollama:11434/",
            "OLLAMA_MODEL": "qwen3:8b",
            "SYSTEM_PROMPT": "Be brief.\\nAlways polite.",
            "HISTORY_STORE": "memory://",
            "EDIT_INTERVAL": "0.5",
            "OLLAMA_KEEP_ALIVE": "-1",
            "OLLAMA_OPTIONS": '{"temperature": 0.2, "num_ctx": 8192}',
            "THINKING": "off",
            "MAX_REPLY_MESSAGES": "3",
            "IMAGE_MAX_SIDE": "768",
            "MAX_IMAGES": "2",
            "IMAGE_HISTORY_TURNS": "1",
            "MAX_ATTACHMENT_BYTES": "1000000",
            "MAX_TEXT_ATTACHMENT_CHARS": "5000",
            "CONTEXT_TOKENS": "16384",
            "MAX_INPUT_CHARS": "500",
            "OLLAMA_CONNECT_TIMEOUT": "3",
            "OLLAMA_READ_TIMEOUT": "60",
            "MESSAGE_CONTENT_INTENT": "false",
            "LOG_LEVEL": "debug",
        }
    )
    assert settings.discord_token == "abc.def.ghi"
    assert settings.ollama_url == "http://ollama:11434"
    assert settings.ollama_model == "qwen3:8b"
    assert settings.system_prompt == "Be brief.\nAlways polite."
    assert settings.history_store == "memory://"
    assert settings.edit_interval == 0.5
    assert settings.ollama_keep_alive == -1
    assert settings.ollama_options == {"temperature": 0.2, "num_ctx": 8192}
    assert settings.thinking == "off"
    assert settings.max_reply_messages == 3
    assert (settings.image_max_side, settings.max_images, settings.image_history_turns) == (
        768,
        2,
        1,
    )
    assert settings.max_attachment_bytes == 1_000_000
    assert settings.max_text_attachment_chars == 5000
    assert settings.context_tokens == 16384
    assert settings.max_input_chars == 500
    assert settings.connect_timeout == 3.0
    assert settings.read_timeout == 60.0
    assert settings.message_content_intent is False
    assert settings.log_level == "DEBUG"


@pytest.mark.parametrize("value", ["5m", "1h30m", "-1s", "300ms"])
def test_keep_alive_duration_strings_pass_through(value: str) -> None:
    assert Settings.from_env({"OLLAMA_KEEP_ALIVE": value}).ollama_keep_alive == value


def test_keep_alive_number_is_sent_as_a_number_not_a_string() -> None:
    # Ollama answers 400 "time: missing unit in duration" to the string "300".
    assert Settings.from_env({"OLLAMA_KEEP_ALIVE": "300"}).ollama_keep_alive == 300


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("OLLAMA_URL", "localhost:11434"),
        ("OLLAMA_URL", "ftp://x"),
        ("OLLAMA_URL", "http://localhost:abc"),
        ("OLLAMA_URL", "http://localhost:99999"),
        ("OLLAMA_URL", "http://:11434"),
        ("HISTORY_STORE", "postgres://x"),
        ("HISTORY_STORE", "sqlite:///"),
        ("EDIT_INTERVAL", "fast"),
        ("EDIT_INTERVAL", "-1"),
        ("EDIT_INTERVAL", "nan"),
        ("OLLAMA_KEEP_ALIVE", "forever"),
        ("OLLAMA_OPTIONS", "temperature=0.2"),
        ("OLLAMA_OPTIONS", "[1, 2]"),
        ("OLLAMA_THINK", "maybe"),
        ("THINKING", "show"),
        ("MAX_REPLY_MESSAGES", "0"),
        ("CONTEXT_TOKENS", "ten"),
        ("CONTEXT_TOKENS", "100"),
        ("MAX_INPUT_CHARS", "0"),
        ("LOG_LEVEL", "LOUD"),
    ],
)
def test_invalid_value_fails_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


def test_token_never_appears_in_repr_or_description() -> None:
    settings = Settings.from_env({"DISCORD_TOKEN": "MTIz.secret-token-value"})
    assert "secret-token-value" not in repr(settings)
    assert "secret-token-value" not in settings.describe()


def test_settings_are_frozen() -> None:
    settings = Settings.from_env({})
    with pytest.raises(AttributeError):
        settings.ollama_model = "other"  # type: ignore[misc]


def test_operations_settings() -> None:
    settings = Settings.from_env(
        {
            "AUTO_PULL": "off",
            "HEALTH_PORT": "0",
            "HEALTH_HOST": "127.0.0.1",
            "SHUTDOWN_GRACE": "3.5",
            "ADMIN_USER_IDS": "123456789012345678, 223456789012345678",
            "LOG_FORMAT": "JSON",
        }
    )
    assert settings.auto_pull is False
    assert settings.health_port == 0
    assert settings.health_host == "127.0.0.1"
    assert settings.shutdown_grace == 3.5
    assert settings.admin_user_ids == {123456789012345678, 223456789012345678}
    assert settings.log_format == "json"


@pytest.mark.parametrize(
    ("name", "value", "shown"),
    [
        ("ADMIN_USER_IDS", "123456789012345678,@alice", "'@alice'"),
        ("ADMIN_USER_IDS", "42", "'42'"),
        ("HEALTH_PORT", "70000", "'70000'"),
        ("HEALTH_PORT", "http", "'http'"),
        ("SHUTDOWN_GRACE", "-2", "'-2'"),
        ("LOG_FORMAT", "xml", "'xml'"),
        ("AUTO_PULL", "sometimes", "'sometimes'"),
    ],
)
def test_bad_operations_values_name_the_variable_and_value(
    name: str, value: str, shown: str
) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({name: value})
    assert name in str(info.value) and shown in str(info.value)


def test_log_file_is_off_by_default_and_kept_as_given(tmp_path: Path) -> None:
    assert Settings.from_env({}).log_file == ""
    path = str(tmp_path / "ollacord.log")
    assert Settings.from_env({"LOG_FILE": path}).log_file == path
    existing = tmp_path / "existing.log"
    existing.write_text("earlier lines\n")
    assert Settings.from_env({"LOG_FILE": str(existing)}).log_file == str(existing)


def test_log_file_in_a_missing_directory_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="LOG_FILE") as info:
        Settings.from_env({"LOG_FILE": str(tmp_path / "nowhere" / "bot.log")})
    assert "does not exist" in str(info.value)


def test_log_file_that_is_a_directory_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="LOG_FILE") as info:
        Settings.from_env({"LOG_FILE": str(tmp_path)})
    assert "is a directory" in str(info.value)


def test_log_file_in_a_read_only_directory_names_the_variable() -> None:
    # Outside pytest's tmp_path, whose parents only its owner may enter.
    locked = Path(tempfile.mkdtemp(prefix="ollacord-locked-"))
    locked.chmod(0o555)
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child reports through the pipe)
        # root may write anywhere: check as an ordinary user, as the container runs the bot.
        try:
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            Settings.from_env({"LOG_FILE": str(locked / "bot.log")})
            os.write(write, b"accepted")
        except ConfigError as exc:
            os.write(write, str(exc).encode())
        except BaseException as exc:
            os.write(write, repr(exc).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    with os.fdopen(read) as pipe:
        said = pipe.read()
    locked.rmdir()
    assert "LOG_FILE" in said and "not writable" in said, said


def test_the_old_ollama_think_setting_still_works_unless_thinking_is_set() -> None:
    assert Settings.from_env({"OLLAMA_THINK": "false"}).thinking == "off"
    assert Settings.from_env({"OLLAMA_THINK": "true"}).thinking == "hide"
    assert Settings.from_env({"OLLAMA_THINK": "false", "THINKING": "hide"}).thinking == "hide"
    assert Settings.from_env({}).thinking == "hide"


def test_think_is_sent_only_to_models_that_can_think() -> None:
    assert Settings.from_env({}).think_field(model_can_think=False) is None
    assert Settings.from_env({}).think_field(model_can_think=True) is True
    assert Settings.from_env({"THINKING": "off"}).think_field(model_can_think=True) is False


def test_shards_are_read_and_checked() -> None:
    settings = Settings.from_env({"SHARD_COUNT": "4", "SHARD_IDS": "0, 2"})
    assert settings.shard_count == 4 and settings.shard_ids == {0, 2}
    assert Settings.from_env({}).shard_count is None
    for env, word in (
        ({"SHARD_IDS": "0"}, "SHARD_COUNT"),
        ({"SHARD_COUNT": "2", "SHARD_IDS": "2"}, "below SHARD_COUNT"),
        ({"SHARD_COUNT": "2", "SHARD_IDS": "one"}, "SHARD_IDS"),
        ({"SHARD_COUNT": "0"}, "SHARD_COUNT"),
    ):
        with pytest.raises(ConfigError, match=word):
            Settings.from_env(env)


def test_several_ollama_backends_with_their_slots() -> None:
    settings = Settings.from_env({"OLLAMA_URL": "http://gpu1:11434#4, http://gpu2:11434"})
    assert settings.ollama_backends == (("http://gpu1:11434", 4), ("http://gpu2:11434", 1))
    assert settings.ollama_url == "http://gpu1:11434" and settings.concurrency == 5
    one = Settings.from_env({"MAX_CONCURRENT": "3"})
    assert one.ollama_backends == (("http://localhost:11434", 3),) and one.concurrency == 3
    for value in ("http://a:1#0", "http://a:1#x", "http://a:1,http://a:1", "http://a:1,ftp://b"):
        with pytest.raises(ConfigError, match="OLLAMA_URL"):
            Settings.from_env({"OLLAMA_URL": value})
