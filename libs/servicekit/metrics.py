"""Prometheus metrics for both services: the separate listener, route templates, several workers.

The metrics are served on their own listener (``METRICS_HOST``/``METRICS_PORT``, off unless the
port is set, host 127.0.0.1 by default), never on the public port: a scrape shows traffic
volumes, error rates and pool sizes that are nobody's business outside the operator's network.

Labels are bounded by construction: a request is counted under its *route template*
(``/api/v1/notes/{note_id}``, never the raw path) or ``other`` (:class:`RouteTemplates`), under
one of a fixed set of methods, and under its status class; no label ever carries a user id, an IP
address or anything else a client chooses.

Several workers (``--workers N``): each worker writes its values to files in
``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multiprocess mode), and the parent process,
which accepts no requests, serves the sum from one listener. :func:`prepare_multiprocess_dir`
empties the folder before the workers start (values of an earlier run must not be added in);
every gauge names its multiprocess mode (``livesum``, ``livemin``, ``livemax``: a dead worker's
gauges drop out); :class:`_LiveWorkersCollector` removes the gauge files of workers that died
without cleaning up (a crash, SIGKILL) before every scrape, while their counters stay so a
total never goes backwards.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import socket
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from servicekit.config import ConfigError, Problems, get_int, get_str
from servicekit.terminal import printable

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: The methods a request is counted under; anything else is ``other`` (a client picks methods).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def postgres_errors(registry: CollectorRegistry) -> Counter:
    """The counter both services keep, each in its own registry: faults in PostgreSQL mapped to
    503 (servicekit.db.Outages). ``error`` is an exception class name from
    servicekit.db.UNAVAILABLE (a bounded set)."""
    return Counter(
        "tokengate_postgres_errors_total",
        "PostgreSQL failures answered with 503 (unreachable, gone, too slow), by exception class.",
        ["service", "error"],
        registry=registry,
    )


def postgres_error(counter: Counter, service: str) -> Any:
    """The ``on_record`` hook of :class:`servicekit.db.Outages` for ``service``."""

    def record(error: str) -> None:
        counter.labels(service, error).inc()

    return record


def version() -> str:
    try:
        return importlib.metadata.version("tokengate")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def build_info(registry: CollectorRegistry, service: str) -> Gauge:
    """``tokengate_<service>_build_info{version,python} 1``: which release each instance runs
    (join it onto any other series to see a rollout, or a straggler, in a graph)."""
    gauge = Gauge(
        f"tokengate_{service}_build_info",
        "Always 1: the tokengate version and Python version of this instance.",
        ["version", "python"],
        registry=registry,
        multiprocess_mode="max",
    )
    gauge.labels(version(), platform.python_version()).set(1)
    return gauge


@dataclass(frozen=True)
class MetricsSettings:
    """``METRICS_HOST`` and ``METRICS_PORT``; ``port`` is ``None`` when metrics are off."""

    host: str = "127.0.0.1"
    port: int | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> MetricsSettings:
        p = Problems()
        host = p.take(lambda: get_str(environ, "METRICS_HOST", "127.0.0.1"), "")
        if not environ.get("METRICS_PORT"):
            p.check()
            return cls(host=host, port=None)
        port = p.take(lambda: get_int(environ, "METRICS_PORT", 0, minimum=1), 1)
        if port > 65535:
            p.messages.append(f"METRICS_PORT must be at most 65535, got {port}")
        p.check()
        return cls(host=host, port=port)

    @property
    def url(self) -> str | None:
        if self.port is None:
            return None
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"


class RouteTemplates:
    """Map a request path to its route template, or ``"other"``; cheap on the hot path.

    Templates use Starlette's syntax (``/v1/notes/{note_id}``, ``/static/{rest:path}``). Literal
    paths are one dict lookup; templated ones are tried as anchored regular expressions, in the
    order given, only when the literal lookup missed.
    """

    OTHER = "other"

    def __init__(self, templates: Iterable[str]) -> None:
        self._exact: dict[str, str] = {}
        self._patterns: list[tuple[re.Pattern[str], str]] = []
        for template in templates:
            if "{" not in template:
                self._exact[template] = template
                continue
            pattern = re.sub(
                r"\{[A-Za-z_][A-Za-z0-9_]*(:path)?\}",
                lambda m: ".+" if m.group(1) else "[^/]+",
                re.escape(template).replace(r"\{", "{").replace(r"\}", "}"),
            )
            self._patterns.append((re.compile(pattern), template))

    @property
    def templates(self) -> list[str]:
        return [*self._exact, *(t for _, t in self._patterns)]

    def __call__(self, path: str) -> str:
        found = self._exact.get(path)
        if found is not None:
            return found
        for pattern, template in self._patterns:
            if pattern.fullmatch(path):
                return template
        return self.OTHER


def status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status < 600 else "5xx"


def method_label(method: str) -> str:
    return method if method in METHODS else "other"


class RequestCounter:
    """ASGI middleware: one increment of ``counter{route, method, status}`` per HTTP request.

    ``status`` is what ``status_label`` makes of the response status (a class like ``2xx``, or
    the code). Children are cached per (route, method, status) so the steady state formats no
    label; the cache is capped, and every label is bounded anyway.
    """

    def __init__(
        self,
        app: Any,
        *,
        routes: RouteTemplates,
        counter: Counter,
        status_label: Callable[[int], str] = status_class,
    ) -> None:
        self.app = app
        self.routes = routes
        self.counter = counter
        self.status_label = status_label
        self._children: dict[tuple[str, str, int], Any] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0

        async def send_and_record(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            self.count(scope["path"], scope["method"], status or 500)

    def count(self, path: str, method: str, status: int) -> None:
        key = (self.routes(path), method, status)
        child = self._children.get(key)
        if child is None:
            child = self.counter.labels(key[0], method_label(method), self.status_label(status))
            if len(self._children) < 4096:
                self._children[key] = child
        child.inc()


# -- the listener ----------------------------------------------------------------------------


#: The operator's ``PROMETHEUS_MULTIPROC_DIR``, taken out of the environment by the command line
#: before prometheus-client was imported (``tokengate.cli``), so the parent keeps its own values
#: in memory and only workers write files.
requested_dir: str | None = None


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


# The files prometheus-client's multiprocess mode writes: one per metric type (and gauge mode)
# and process id. Nothing else is ours to delete.
_OUR_FILE = re.compile(
    r"(?:counter|histogram|summary"
    r"|gauge_(?:live)?(?:all|min|max|sum|mostrecent))_[0-9]{1,10}\.db"
)


def prepare_multiprocess_dir() -> tuple[str, bool]:
    """Create (or empty) the folder workers write their metric files to, and export it.

    Called by the parent before any worker starts. The operator's folder is used when one was
    given (and emptied: files of an earlier run would be added to this one's totals); otherwise
    a private temporary folder. Returns the folder and whether it was made here (to remove).

    The operator's folder is emptied only of our own metric files: one that holds anything
    else (a subfolder, a symbolic link, a file of another name) is refused as a configuration
    error before anything is deleted. ``PROMETHEUS_MULTIPROC_DIR=/var/lib/app`` by mistake used
    to delete that folder's contents recursively.
    """
    path, made = requested_dir, False
    if path is None:
        path, made = tempfile.mkdtemp(prefix="tokengate-metrics-"), True
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        entries = list(folder.iterdir())
    except OSError as exc:
        raise ConfigError(f"{MULTIPROC_ENV}: cannot use {folder} ({exc.strerror})") from None
    foreign = [
        e for e in entries if e.is_symlink() or not e.is_file() or not _OUR_FILE.fullmatch(e.name)
    ]
    if foreign:
        example = printable(foreign[0].name)
        raise ConfigError(
            f"{MULTIPROC_ENV}: {folder} holds {len(foreign)} entr"
            f"{'y' if len(foreign) == 1 else 'ies'} that are not metric files of ours (such as"
            f" '{example}'); give it an empty folder used for nothing else"
        )
    for entry in entries:
        entry.unlink()
    os.environ[MULTIPROC_ENV] = str(folder)
    return str(folder), made


_GAUGE_FILE = re.compile(r"gauge_(live\w+)_(\d+)\.db")


class _LiveWorkersCollector(Collector):
    """:class:`MultiProcessCollector` that first forgets the live gauges of dead workers.

    A worker that exits cleanly removes its own (lifespan shutdown calls
    :func:`mark_worker_stopped`); this catches the ones that could not (killed, crashed).
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._inner = MultiProcessCollector(None, path=path)  # type: ignore[no-untyped-call]

    def collect(self) -> Iterable[Any]:
        for name in os.listdir(self._path):
            match = _GAUGE_FILE.fullmatch(name)
            if match and not process_alive(int(match.group(2))):
                mark_process_dead(int(match.group(2)), self._path)  # type: ignore[no-untyped-call]
        metrics: Iterable[Any] = self._inner.collect()  # type: ignore[no-untyped-call]
        return metrics


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (exited, not yet reaped by its parent) still answers kill(0)
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return True


def mark_worker_stopped() -> None:
    """Drop this process's live gauges (a worker shutting down cleanly)."""
    path = multiprocess_dir()
    if path is not None:
        mark_process_dead(os.getpid(), path)  # type: ignore[no-untyped-call]


METRICS_PATH = "/metrics"
_NOT_FOUND = b"not found: metrics are at /metrics\n"


def _only_metrics(app: Any) -> Any:
    """The exposition app at ``/metrics`` only; every other path is a 404 (prometheus-client's
    own server answered any path with the whole scrape)."""

    def wsgi(environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO") != METRICS_PATH:
            start_response(
                "404 Not Found",
                [
                    ("Content-Type", "text/plain; charset=utf-8"),
                    ("Content-Length", str(len(_NOT_FOUND))),
                ],
            )
            return [_NOT_FOUND]
        return app(environ, start_response)

    return wsgi


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access line per scrape on stderr (the services log in JSON)."""


def serve_metrics(settings: MetricsSettings, registry: CollectorRegistry) -> Any:
    """Start the metrics listener in a daemon thread; returns the server (``None`` when off).

    In multiprocess mode it serves the sum of every worker's files; otherwise ``registry``, the
    service's own (``gateway.metrics.REGISTRY``, ``backend.metrics.REGISTRY``).
    """
    if settings.port is None:
        return None
    path = multiprocess_dir()
    if path is not None:
        registry = CollectorRegistry()
        registry.register(_LiveWorkersCollector(path))

    class Server(ThreadingWSGIServer):
        address_family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET

    try:
        server = make_server(
            settings.host,
            settings.port,
            _only_metrics(make_wsgi_app(registry)),
            Server,
            handler_class=_QuietHandler,
        )
    except OSError as exc:
        raise ConfigError(
            f"METRICS_PORT: cannot listen on {settings.host}:{settings.port} ({exc.strerror})"
        ) from None
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


def stop_metrics(server: Any) -> None:
    if server is not None:
        threading.Thread(target=server.shutdown, daemon=True).start()
        server.server_close()
