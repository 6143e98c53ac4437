"""``tokengate client login|call|refresh|logout``: a key-bound API session from the shell.

A plain bearer client cannot refresh or log out (the refresh token it would need is an unbound
cookie, and an unbound refresh token never leaves in a body), so this is the way in for curl
users: a DPoP session (RFC 9449) built on :class:`tokengate_client.DPoPAuth`, kept between runs
in a folder of the user's own —

- ``dpop-key.pem``: the private key the session is bound to (PKCS#8);
- ``session.json``: the gateway URL, the email, the current refresh token (rotated on every
  refresh: the file always holds the newest, or the next run would present a used one, which the
  gateway treats as theft and answers by ending the session), the access token and its expiry.

The folder is 0700 and both files 0600, written whole (a new file renamed over the old one) so a
crash never leaves half a token; a folder or file that others may read is refused, as ssh refuses
a private key others can read. The password is read from standard input or a prompt, never from
the command line (``ps`` shows arguments), and is never written anywhere. When the session ends
(logout, a revoke, a password change elsewhere), the files are removed and the command says so:
``tokengate client login`` again.

Exit status: 0 done (``call``: a 2xx answer); 1 the gateway refused (``call``: any other status,
the session ended, the login was refused) or could not be reached; 2 a usage or local-file error.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import httpx
from servicekit.config import ConfigError
from tokengate_client import AuthenticationError, DPoPAuth, DPoPKey

from tokengate.files import write_atomic

KEY_FILE = "dpop-key.pem"
SESSION_FILE = "session.json"
#: Bounds on what is read: a password, a request body from standard input, an answer printed.
MAX_PASSWORD = 1024
MAX_BODY = 1 << 20
TIMEOUT = 30.0


def default_dir() -> Path:
    explicit = os.environ.get("TOKENGATE_CLIENT_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "tokengate" / "client"


def register(sub: argparse._SubParsersAction[Any]) -> None:
    client = sub.add_parser(
        "client",
        help="a DPoP-bound API session from the shell (login, call, refresh, logout)",
        description=(
            "A session bound to a DPoP key (RFC 9449), kept between runs in a private folder: "
            "the key and the newest refresh token, mode 0600. Plain bearer clients cannot "
            "refresh or log out; this can. Exit status: 0 done, 1 refused by the gateway or "
            "unreachable, 2 usage or local files."
        ),
    )
    client.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where the key and session live (default: $TOKENGATE_CLIENT_DIR, else "
        "$XDG_CONFIG_HOME/tokengate/client, else ~/.config/tokengate/client)",
    )
    actions = client.add_subparsers(dest="action", required=True, metavar="ACTION")

    login = actions.add_parser("login", help="log in with a new key; keeps the session on disk")
    login.add_argument("--url", required=True, help="the gateway's URL, e.g. http://127.0.0.1:8000")
    login.add_argument("--email", required=True)
    login.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    login.set_defaults(func=_login)

    call = actions.add_parser("call", help="one request with the session: prints the body")
    call.add_argument("method", help="GET, POST, PATCH, DELETE, ...")
    call.add_argument("path", help="a path on the gateway, e.g. /api/v1/me")
    call.add_argument("--data", help="a JSON body; '-' reads it from standard input")
    call.set_defaults(func=_call)

    refresh = actions.add_parser("refresh", help="rotate the refresh token now")
    refresh.set_defaults(func=_refresh)

    logout = actions.add_parser("logout", help="end the session and remove its files")
    logout.set_defaults(func=_logout)


# -- the folder ---------------------------------------------------------------------------------


def _folder(args: argparse.Namespace) -> Path:
    folder: Path = args.dir or default_dir()
    return folder


def _check_private(path: Path) -> None:
    """Refuse a file or folder that anyone but its owner may read or write."""
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{path} may be read by others (mode {stat.S_IMODE(mode):o}); "
            f"it holds a credential: chmod {'700' if path.is_dir() else '600'} it"
        )


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole: a 0600 file in the same folder, renamed over it."""
    write_atomic(path, text.encode("utf-8"), 0o600)


def _make_folder(folder: Path) -> None:
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)


def _save(folder: Path, url: str, auth: DPoPAuth, email: str) -> None:
    if auth.refresh_token is None:
        _remove(folder)
        return
    session = {
        "url": url,
        "email": email,
        "refresh_token": auth.refresh_token,
        "access_token": auth.access_token,
        "expires_at": auth.expires_at,
    }
    _write_private(folder / SESSION_FILE, json.dumps(session) + "\n")


def _remove(folder: Path) -> None:
    for name in (SESSION_FILE, KEY_FILE):
        with contextlib.suppress(FileNotFoundError):
            (folder / name).unlink()


def _load(folder: Path) -> tuple[str, str, DPoPAuth]:
    session_path, key_path = folder / SESSION_FILE, folder / KEY_FILE
    if not session_path.exists() or not key_path.exists():
        raise ConfigError(f"no session in {folder}: run tokengate client login first")
    for path in (folder, key_path, session_path):
        _check_private(path)
    try:
        session = json.loads(session_path.read_text(encoding="utf-8"))
        key = DPoPKey.from_pem(key_path.read_bytes())
        url, email, refresh = session["url"], session["email"], session["refresh_token"]
        access = session.get("access_token")
        expires_at = float(session.get("expires_at") or 0.0)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"the session in {folder} is unreadable ({type(exc).__name__})") from None
    if not all(isinstance(v, str) for v in (url, email, refresh)):
        raise ConfigError(f"the session in {folder} is unreadable")
    auth = DPoPAuth.resume(
        refresh,
        key=key,
        email=email,
        access_token=access if isinstance(access, str) else None,
        expires_at=expires_at,
    )
    return url, email, auth


def _refused(folder: Path, url: str, auth: DPoPAuth, email: str, exc: AuthenticationError) -> int:
    """A refresh the gateway refused: the session ended (its files go), or it answered
    something else (a 429, a 503: the session is kept, to try again later)."""
    if auth.ended:
        _remove(folder)
        print(
            f"tokengate client: {exc}; the session is gone: run tokengate client login again",
            file=sys.stderr,
        )
    else:
        _save(folder, url, auth, email)
        print(f"tokengate client: {exc}; the session is kept: try again later", file=sys.stderr)
    return 1


def _unreachable(url: str, exc: httpx.HTTPError) -> int:
    print(f"tokengate client: cannot reach {url} ({type(exc).__name__})", file=sys.stderr)
    return 1


# -- the actions --------------------------------------------------------------------------------


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.read(MAX_PASSWORD + 2).rstrip("\r\n")
    elif sys.stdin.isatty():
        password = getpass.getpass("password: ")
    else:
        raise ConfigError("no terminal to ask for the password: use --password-stdin")
    if not password or len(password) > MAX_PASSWORD:
        raise ConfigError(f"the password must be 1 to {MAX_PASSWORD} characters")
    return password


def _login(args: argparse.Namespace) -> int:
    folder = _folder(args)
    url = str(args.url).rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"--url {args.url!r} must start with http:// or https://")
    password = _read_password(args.password_stdin)
    _make_folder(folder)
    _check_private(folder)
    if (folder / SESSION_FILE).exists():
        # one session per folder: end the previous one rather than leave it live and forgotten
        with contextlib.suppress(ConfigError):
            _logout(args, quiet=True)
    key = DPoPKey.generate()
    auth = DPoPAuth(args.email, password, key=key)
    del password
    with httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        try:
            auth.login(client)
        except AuthenticationError as exc:
            print(f"tokengate client: {exc}", file=sys.stderr)
            return 1
        except httpx.HTTPError as exc:
            return _unreachable(url, exc)
    _write_private(folder / KEY_FILE, key.to_pem().decode("ascii"))
    _save(folder, url, auth, args.email)
    print(f"logged in as {args.email}; session bound to key {key.thumbprint} in {folder}")
    return 0


def _body(data: str | None) -> bytes | None:
    if data is None:
        return None
    raw = sys.stdin.buffer.read(MAX_BODY + 1) if data == "-" else data.encode("utf-8")
    if len(raw) > MAX_BODY:
        raise ConfigError(f"the body is over {MAX_BODY} bytes")
    try:
        json.loads(raw)
    except ValueError:
        raise ConfigError("--data must be JSON") from None
    return raw


def _call(args: argparse.Namespace) -> int:
    folder = _folder(args)
    if not str(args.path).startswith("/"):
        raise ConfigError(f"the path {args.path!r} must start with /")
    body = _body(args.data)
    url, email, auth = _load(folder)
    headers = {"Content-Type": "application/json"} if body is not None else {}
    with httpx.Client(base_url=url, auth=auth, timeout=TIMEOUT) as client:
        try:
            response = client.request(args.method.upper(), args.path, content=body, headers=headers)
        except AuthenticationError as exc:
            return _refused(folder, url, auth, email, exc)
        except httpx.HTTPError as exc:
            _save(folder, url, auth, email)  # a refresh may have rotated before the failure
            return _unreachable(url, exc)
    _save(folder, url, auth, email)
    sys.stdout.write(response.text)
    if response.text and not response.text.endswith("\n"):
        sys.stdout.write("\n")
    if not response.is_success:
        print(f"tokengate client: {response.status_code} {response.reason_phrase}", file=sys.stderr)
        return 1
    return 0


def _refresh(args: argparse.Namespace) -> int:
    folder = _folder(args)
    url, email, auth = _load(folder)
    with httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        try:
            auth.refresh(client)
        except AuthenticationError as exc:
            return _refused(folder, url, auth, email, exc)
        except httpx.HTTPError as exc:
            return _unreachable(url, exc)
    _save(folder, url, auth, email)
    print("refreshed")
    return 0


def _logout(args: argparse.Namespace, *, quiet: bool = False) -> int:
    folder = _folder(args)
    url, _, auth = _load(folder)
    with httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        try:
            auth.logout(client)
        except AuthenticationError as exc:
            # the files stay: the session may still be live, and logout can be tried again
            if not quiet:
                print(
                    f"tokengate client: {exc}; the session may still be live: run tokengate "
                    "client logout again (or delete the folder and let it expire)",
                    file=sys.stderr,
                )
            return 1
        except httpx.HTTPError as exc:
            return _unreachable(url, exc)
    _remove(folder)
    if not quiet:
        print("logged out")
    return 0
