"""Running a service: one process, or a parent and ``--workers N`` worker processes.

The parent validates the settings (the caller builds them before calling :func:`serve`, so a bad
variable fails once, with its name, before any worker starts), prepares the metrics folder, opens
the metrics listener (:mod:`servicekit.metrics`), and hands the socket to uvicorn, whose
supervisor starts the workers, restarts any that dies, and stops them all on SIGTERM/SIGINT.
Each worker builds its app from the environment through ``factory`` (``"module:function"``).

What is per worker and what is shared is written down in the README ("Operating tokengate"):
in short, everything that must agree across workers lives in Redis or PostgreSQL, and the
in-memory caches each worker keeps are safe to keep apart.
"""

from __future__ import annotations

import shutil
from typing import Any

from prometheus_client import CollectorRegistry

from servicekit.config import ConfigError
from servicekit.connections import (
    ConnectionLimits,
    descriptor_budget,
    ensure_descriptors,
    uvicorn_options,
)
from servicekit.metrics import (
    MetricsSettings,
    prepare_multiprocess_dir,
    serve_metrics,
    stop_metrics,
)

MAX_WORKERS = 64
#: Seconds a replacement worker may take to start serving during a SIGHUP restart (and a worker
#: to answer the supervisor's ping). uvicorn's 5 s aborts the restart on a loaded host (the old
#: workers stay, with the old certificates: the expiry gauge shows it); starting the app takes
#: 1-2 s on an idle 2-core machine and over 5 s when it is saturated.
WORKER_START_TIMEOUT = 30


def check_workers(workers: int) -> int:
    if not 1 <= workers <= MAX_WORKERS:
        raise ConfigError(f"--workers must be between 1 and {MAX_WORKERS}, got {workers}")
    return workers


def serve(
    factory: str,
    *,
    host: str,
    port: int,
    workers: int,
    metrics: MetricsSettings,
    limits: ConnectionLimits,
    pooled: int,
    registry: CollectorRegistry,
    **options: Any,
) -> int:
    """Serve ``factory`` with ``limits`` on every client connection; ``pooled`` is how many
    connections of its own (backend pool, database, Redis) one worker may open, for the
    file-descriptor budget (:func:`servicekit.connections.descriptor_budget`)."""
    import uvicorn

    check_workers(workers)
    ensure_descriptors(descriptor_budget(limits, pooled))
    folder, made = prepare_multiprocess_dir() if workers > 1 else (None, False)
    server = serve_metrics(metrics, registry)
    try:
        uvicorn.run(
            factory,
            factory=True,
            host=host,
            port=port,
            workers=workers if workers > 1 else None,
            timeout_worker_healthcheck=WORKER_START_TIMEOUT,
            log_config=None,
            access_log=False,
            server_header=False,
            **uvicorn_options(limits),
            **options,
        )
    finally:
        stop_metrics(server)
        if made and folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
    return 0
