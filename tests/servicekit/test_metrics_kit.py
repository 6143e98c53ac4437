"""servicekit.metrics: route templates as labels, settings, the multiprocess folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from servicekit import metrics
from servicekit.config import ConfigError
from servicekit.metrics import MetricsSettings, RouteTemplates, method_label, status_class


def test_route_templates_never_return_a_raw_path() -> None:
    routes = RouteTemplates(
        ["/healthz", "/api/v1/notes/{note_id}", "/demo/{path:path}", "/api/v1/notes"]
    )
    assert routes("/healthz") == "/healthz"
    assert routes("/api/v1/notes") == "/api/v1/notes"
    assert routes("/api/v1/notes/5f0c") == "/api/v1/notes/{note_id}"
    assert routes("/api/v1/notes/5f0c/extra") == "other"
    assert routes("/demo/js/app.js") == "/demo/{path:path}"
    assert routes("/api/v1/users/42") == "other"
    assert routes("/healthz/") == "other"
    # regex metacharacters in a template are literal
    assert RouteTemplates(["/a.b"])("/aXb") == "other"


def test_methods_and_statuses_are_bounded() -> None:
    assert method_label("GET") == "GET"
    assert method_label("BREW") == "other"
    assert status_class(204) == "2xx"
    assert status_class(999) == "5xx"


def test_metrics_settings() -> None:
    assert MetricsSettings.from_env({}).port is None
    assert MetricsSettings.from_env({}).url is None
    on = MetricsSettings.from_env({"METRICS_PORT": "9100"})
    assert (on.host, on.port, on.url) == ("127.0.0.1", 9100, "http://127.0.0.1:9100/metrics")
    for bad in ("x", "0", "70000"):
        with pytest.raises(ConfigError, match="METRICS_PORT"):
            MetricsSettings.from_env({"METRICS_PORT": bad})


def test_prepare_empties_the_operators_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("counter_123.db", "gauge_livesum_123.db", "histogram_9.db", "gauge_all_4.db"):
        (tmp_path / name).write_bytes(b"old")
    monkeypatch.setattr(metrics, "requested_dir", str(tmp_path))
    # set, then removed: monkeypatch restores the variable's absence at teardown
    monkeypatch.setenv(metrics.MULTIPROC_ENV, "unused")
    monkeypatch.delenv(metrics.MULTIPROC_ENV)
    folder, made = metrics.prepare_multiprocess_dir()
    assert (folder, made) == (str(tmp_path), False)
    assert list(tmp_path.iterdir()) == []
    assert os.environ[metrics.MULTIPROC_ENV] == str(tmp_path)


@pytest.mark.parametrize("foreign", ["notes.txt", "sub", "link", "counter_1.db.bak", "sub.db"])
def test_prepare_refuses_a_folder_that_holds_anything_not_ours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, foreign: str
) -> None:
    """Issue 22: the folder was emptied recursively, whatever it was (a mistyped
    PROMETHEUS_MULTIPROC_DIR=/var/lib/app lost that folder). Now anything but our metric files
    is a configuration error, and nothing is deleted."""
    (tmp_path / "counter_123.db").write_bytes(b"old")
    target = tmp_path / foreign
    if foreign == "link":
        (tmp_path.parent / f"{tmp_path.name}-elsewhere").write_text("keep")
        target.symlink_to(tmp_path.parent / f"{tmp_path.name}-elsewhere")
    elif foreign.startswith("sub"):
        target.mkdir()
        (target / "data").write_text("keep")
    else:
        target.write_text("keep")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    monkeypatch.setattr(metrics, "requested_dir", str(tmp_path))
    with pytest.raises(ConfigError, match=metrics.MULTIPROC_ENV) as refused:
        metrics.prepare_multiprocess_dir()
    assert foreign in str(refused.value)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_a_foreign_multiprocess_folder_stops_the_service_with_exit_2(tmp_path: Path) -> None:
    import subprocess
    import sys

    from internal_auth import generate_private_key

    (tmp_path / "precious.txt").write_text("keep")
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("JWT_", "INTERNAL_JWT"))}
    done = subprocess.run(
        [sys.executable, "-m", "tokengate.cli", "backend", "--port", "1", "--workers", "2"],
        env={
            **environ,
            "DATABASE_URL": "postgresql://postgres@127.0.0.1/postgres",
            "INTERNAL_JWT_PUBLIC_KEY": generate_private_key().public_pem(),
            metrics.MULTIPROC_ENV: str(tmp_path),
        },
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert metrics.MULTIPROC_ENV in done.stderr and "precious.txt" in done.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep"


def test_otel_endpoint_setting() -> None:
    from servicekit import otel

    assert otel.endpoint_from_env({}) is None
    assert otel.setup("x", None) == []
    assert otel.endpoint_from_env({otel.ENDPOINT: "http://c:4318/"}) == "http://c:4318"
    with pytest.raises(ConfigError, match=otel.ENDPOINT):
        otel.endpoint_from_env({otel.ENDPOINT: "c:4317"})


def test_no_service_metric_lands_in_the_default_registry() -> None:
    """Issue 23: with prometheus-client's default registry, each service exported every family
    its process had imported (the backend showed the gateway's listener gauge as 0). Every
    family lives in its service's own registry, the one its listener serves."""
    from prometheus_client import REGISTRY as DEFAULT

    from backend import metrics as backend_metrics
    from gateway import metrics as gateway_metrics

    def families(registry: object) -> set[str]:
        return {m.name for m in registry.collect()}  # type: ignore[attr-defined]

    assert not {n for n in families(DEFAULT) if n.startswith("tokengate_")}
    gateway, backend = families(gateway_metrics.REGISTRY), families(backend_metrics.REGISTRY)
    assert gateway and all(
        n.startswith(("tokengate_gateway_", "tokengate_postgres", "tokengate_tls_"))
        for n in gateway
    )
    assert backend and all(
        n.startswith(("tokengate_backend_", "tokengate_postgres", "tokengate_tls_"))
        for n in backend
    )
