"""The compose stack's security invariants, checked by parsing compose.yaml and the Dockerfile,
and by `docker compose config` (or `docker-compose config`) when a compose client is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]


def _env(service: str) -> dict[str, str]:
    env = SERVICES[service].get("environment", {})
    assert isinstance(env, dict), "environment must be a mapping so it can be audited"
    return {k: str(v) for k, v in env.items()}


def _networks(service: str) -> set[str]:
    nets = SERVICES[service].get("networks", [])
    return set(nets if isinstance(nets, list) else nets.keys())


def test_only_the_gateway_publishes_a_port() -> None:
    published = {name for name, svc in SERVICES.items() if svc.get("ports")}
    assert published == {"gateway"}


def test_private_key_only_in_the_gateway_public_key_only_in_the_services() -> None:
    for name in SERVICES:
        env = _env(name)
        assert ("INTERNAL_JWT_PRIVATE_KEY" in env) == (name == "gateway"), name
        assert ("INTERNAL_JWT_PUBLIC_KEY" in env) == (name in ("backend", "files")), name
        assert ("JWT_ACCESS_SECRET" in env) == (name == "gateway"), name
        assert ("JWT_REFRESH_SECRET" in env) == (name == "gateway"), name
        assert "env_file" not in SERVICES[name], "env_file would hand every secret to " + name


def test_networks_keep_data_and_backend_internal() -> None:
    assert COMPOSE["networks"]["internal"]["internal"] is True
    assert not COMPOSE["networks"]["public"] or not COMPOSE["networks"]["public"].get("internal")
    for name in ("postgres", "redis", "backend", "migrate", "files"):
        assert _networks(name) == {"internal"}, name
    assert _networks("gateway") == {"internal", "public"}


def test_each_service_connects_with_its_own_role() -> None:
    assert "//tokengate_backend:" in _env("backend")["DATABASE_URL"]
    assert "//tokengate_gateway:" in _env("gateway")["DATABASE_URL"]


def test_services_wait_for_healthy_dependencies_and_migrations() -> None:
    assert "healthcheck" in SERVICES["postgres"]
    assert "healthcheck" in SERVICES["redis"]
    for name in ("backend", "gateway"):
        deps = SERVICES[name]["depends_on"]
        assert deps["postgres"]["condition"] == "service_healthy"
        assert deps["migrate"]["condition"] == "service_completed_successfully"
    assert SERVICES["gateway"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert SERVICES["postgres"]["image"].startswith("postgres:16")


def test_images_run_as_non_root_without_build_tools() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", dockerfile, flags=re.M)[1:]
    final = {s.split()[2]: s for s in stages if " AS " in s.split("\n")[0]}
    assert {"backend", "gateway", "files"} <= set(final)
    runtime = final["runtime"]
    assert "-slim" in runtime.split("\n")[0]
    assert re.search(r"^USER 10001$", runtime, flags=re.M)
    assert "[dev]" not in dockerfile and "gcc" not in dockerfile
    for target in ("backend", "gateway", "files"):
        assert "HEALTHCHECK" in final[target]
        assert final[target].split("\n")[0].startswith("runtime AS")


def test_env_example_is_committed_and_env_ignored() -> None:
    assert (ROOT / ".env.example").is_file()
    assert ".env" in (ROOT / ".gitignore").read_text().split()


def _compose_command() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_compose_config_validates() -> None:
    command = _compose_command()
    if command is None:
        pytest.skip("no compose client installed (docker compose or docker-compose)")
    done = subprocess.run(
        [*command, "--env-file", ".env.example", "config"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    rendered = yaml.safe_load(done.stdout)
    assert {n for n, s in rendered["services"].items() if s.get("ports")} == {"gateway"}
