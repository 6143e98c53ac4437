"""The compose stack's security invariants, checked by parsing compose.yaml and the Dockerfile,
and by `docker compose config` (or `docker-compose config`) when a compose client is installed."""

from __future__ import annotations

import re
import shutil
import ssl
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.hop_tls import memory_handshake

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


def test_the_hop_is_mutual_tls() -> None:
    gateway = _env("gateway")
    assert gateway["BACKEND_URL"].startswith("https://backend:")
    for name in ("BACKEND_CA_FILE", "BACKEND_CLIENT_CERT_FILE", "BACKEND_CLIENT_KEY_FILE"):
        assert gateway[name].startswith("/tls/gateway/"), name
    command = SERVICES["backend"]["command"]
    assert "--ssl-cert-reqs=required" in command and "--ssl-ca-certs=/tls/backend/ca.pem" in command
    # two workers: SIGHUP reloads certificates one worker at a time
    assert "--workers=2" in command
    assert "https://backend:8001/healthz" in " ".join(SERVICES["backend"]["healthcheck"]["test"])


def test_certificates_come_from_a_one_shot_service_and_each_service_gets_only_its_own() -> None:
    certs = SERVICES["certs"]
    assert certs["restart"] == "no" and certs["network_mode"] == "none"
    for name in ("backend", "gateway", "files"):
        assert SERVICES[name]["depends_on"]["certs"]["condition"] == (
            "service_completed_successfully"
        )
    mounts = {name: SERVICES[name].get("volumes", []) for name in SERVICES}
    # the CA key's volume is the one-shot's alone
    assert [n for n, v in mounts.items() if any(m.startswith("tls-ca:") for m in v)] == ["certs"]
    assert mounts["backend"] == ["backend-tls:/tls/backend:ro"]
    assert sorted(mounts["gateway"]) == [
        "./examples/gateway.compose.toml:/etc/tokengate/gateway.toml:ro",
        "gateway-tls:/tls/gateway:ro",
    ]
    assert mounts["files"] == ["files-tls:/tls/files:ro"]


def test_every_service_of_the_compose_route_table_is_mutual_tls() -> None:
    """The policy compose mounts names each service over https with the CA and the gateway's
    client certificate that the certs service places in the gateway's volume."""
    import tomllib

    table = tomllib.loads((ROOT / "examples" / "gateway.compose.toml").read_text())
    for name, service in table["services"].items():
        assert service["url"].startswith("https://"), name
        assert service["ca_file"] == "/tls/gateway/ca.pem", name
        assert service["client_cert_file"] == "/tls/gateway/gateway.pem", name
        assert service["client_key_file"] == "/tls/gateway/gateway-key.pem", name
    # the same routes and rules as the example file, only the transport differs
    plain = tomllib.loads((ROOT / "examples" / "gateway.toml").read_text())
    assert table["route"] == plain["route"] and table["rule"] == plain["rule"]
    command = " ".join(SERVICES["files"]["command"])
    assert "--ssl-ca-certs=/tls/files/ca.pem" in command


def test_the_certs_script_outside_docker(tmp_path: Path) -> None:
    dirs = [tmp_path / d for d in ("ca", "backend", "gateway", "files")]
    for folder in dirs[1:]:
        folder.mkdir()
    env = {
        "PATH": "/usr/bin:/bin",
        "TOKENGATE": f"{sys.executable} -m tokengate.cli",
        "HOME": str(tmp_path),
    }

    def run() -> None:
        done = subprocess.run(
            [str(ROOT / "scripts" / "compose-certs"), *map(str, dirs)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr

    run()
    ca, backend, gateway, files = dirs
    listing = {d.name: sorted(p.name for p in d.iterdir()) for d in dirs}
    assert listing == {
        "ca": ["backend.pem", "ca-key.pem", "ca.pem", "files.pem", "gateway.pem", "probe.pem"],
        "backend": ["backend-key.pem", "backend.pem", "ca.pem", "probe-key.pem", "probe.pem"],
        "gateway": ["ca.pem", "gateway-key.pem", "gateway.pem"],
        "files": ["ca.pem", "files-key.pem", "files.pem"],
    }
    for key in (
        ca / "ca-key.pem",
        backend / "backend-key.pem",
        gateway / "gateway-key.pem",
        files / "files-key.pem",
    ):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key

    # the two volumes really make a mutual-TLS handshake for the name "backend"
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(backend / "backend.pem", backend / "backend-key.pem")
    server.load_verify_locations(backend / "ca.pem")
    server.verify_mode = ssl.CERT_REQUIRED
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(gateway / "ca.pem")
    client.load_cert_chain(gateway / "gateway.pem", gateway / "gateway-key.pem")
    _, seen_by_server = memory_handshake(client, server, "backend")
    assert seen_by_server.getpeercert() is not None  # the server saw the gateway's certificate
    # and the files service's volume does the same for the name "files"
    files_server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    files_server.load_cert_chain(files / "files.pem", files / "files-key.pem")
    files_server.load_verify_locations(files / "ca.pem")
    files_server.verify_mode = ssl.CERT_REQUIRED
    _, seen_by_files = memory_handshake(client, files_server, "files")
    assert seen_by_files.getpeercert() is not None

    # a rerun keeps the CA and renews the leaf certificates
    kept, renewed = (ca / "ca.pem").read_bytes(), (backend / "backend.pem").read_bytes()
    run()
    assert (ca / "ca.pem").read_bytes() == kept
    assert (backend / "backend.pem").read_bytes() != renewed
