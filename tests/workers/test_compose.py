"""docker-compose.yml: validated by the compose client when one is installed (no engine is needed for `config`),
and checked for the properties the service relies on (text checks: no YAML parser is a dependency)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"


def _client() -> list[str] | None:
    if shutil.which("docker"):
        p = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if p.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_compose_config_is_valid(profile):
    client = _client()
    if client is None:
        pytest.skip("no `docker compose` plugin and no `docker-compose` client installed")
    p = subprocess.run([*client, "-f", str(COMPOSE), "--profile", profile, "config"], capture_output=True, text=True,
                       cwd=REPO, timeout=60)  # fmt: skip
    assert p.returncode == 0, p.stderr
    services = subprocess.run([*client, "-f", str(COMPOSE), "--profile", profile, "config", "--services"],
                              capture_output=True, text=True, cwd=REPO, timeout=60).stdout.split()  # fmt: skip
    assert {"redis", "api", "predict-worker", "flower", f"extract-worker{'-cpu' if profile == 'cpu' else ''}"} <= set(
        services
    )
    out = p.stdout
    assert "service_healthy" in out and "noeviction" in out and "appendonly" in out
    if profile == "gpu":
        assert "nvidia" in out and "gpu" in out


def test_compose_file_properties():
    text = COMPOSE.read_text(encoding="utf-8")
    for needle in ('"--maxmemory-policy", "noeviction"', '"--appendonly", "yes"', "condition: service_healthy",
                   "healthcheck:", "driver: nvidia", 'profiles: ["cpu"]', 'profiles: ["gpu"]', "weights:/app/weights",
                   "features:/data/features", "results:/data/results", "build: ."):  # fmt: skip
        assert needle in text, needle
    assert (REPO / "Dockerfile").is_file() and (REPO / ".dockerignore").is_file()
