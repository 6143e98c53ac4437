"""``tokengate keys rotate`` and ``tokengate keys status``: rotating the internal signing key.

The procedure (docs/SECURITY.md, "Rotating the internal signing key") is three steps on the
gateway's key file, each refused until it is safe unless ``--force`` is given:

1. ``--stage``: a new key joins the file as ``next``: published, not signing.
2. ``--promote``: ``next`` becomes ``active`` (the signer) and the old ``active`` becomes
   ``previous``; refused until ``INTERNAL_JWKS_MAX_AGE + INTERNAL_JWKS_COOLDOWN`` seconds have
   passed since the stage, so every service that fetches the set has had time to learn the key.
3. ``--retire``: ``previous`` leaves the file; refused until
   ``GATEWAY_CONFIG_RELOAD_INTERVAL + INTERNAL_TOKEN_TTL + INTERNAL_TOKEN_LEEWAY`` seconds have
   passed since the promote, so no worker signs with it any more and no token it signed is live.

The command reads the same variables as the services, and writes the file atomically (a
temporary file of mode 0600, then a rename), so a gateway re-reading it sees the old file or
the new one, never half of one.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from internal_auth import KeyLoadError, SigningKey, SigningKeys, generate_private_key
from internal_auth.keyfile import write_key_file
from servicekit.config import ConfigError, get_float, get_int

EXIT_REFUSED = 1
EXIT_USAGE = 2


@dataclass(frozen=True)
class Timing:
    """The intervals a rotation waits for, from the services' own variables."""

    jwks_max_age: float = 300.0
    jwks_cooldown: float = 5.0
    reload_interval: float = 5.0
    token_ttl: float = 30.0
    token_leeway: float = 5.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Timing:
        return cls(
            jwks_max_age=get_int(environ, "INTERNAL_JWKS_MAX_AGE", 300, minimum=1),
            jwks_cooldown=get_float(environ, "INTERNAL_JWKS_COOLDOWN", 5.0, minimum=0.1),
            reload_interval=get_float(environ, "GATEWAY_CONFIG_RELOAD_INTERVAL", 5.0, minimum=0.1),
            token_ttl=get_int(environ, "INTERNAL_TOKEN_TTL", 30, minimum=1),
            token_leeway=get_int(environ, "INTERNAL_TOKEN_LEEWAY", 5),
        )

    @property
    def before_promote(self) -> float:
        return self.jwks_max_age + self.jwks_cooldown

    @property
    def before_retire(self) -> float:
        return self.reload_interval + self.token_ttl + self.token_leeway


class RotationRefused(Exception):
    """A step that is not safe (yet), or not possible in this state; the message says why."""


def stage(keys: SigningKeys, now: float) -> SigningKeys:
    if keys.role("next") is not None:
        raise RotationRefused(
            "a next key is already staged: promote it (--promote) or remove it before staging "
            "another"
        )
    return keys.with_keys([*keys, SigningKey(generate_private_key(), "next", staged=now)])


def promote(keys: SigningKeys, now: float, timing: Timing, *, force: bool) -> SigningKeys:
    staged = keys.role("next")
    if staged is None:
        raise RotationRefused("no next key to promote: stage one first (--stage)")
    if keys.role("previous") is not None:
        raise RotationRefused(
            "a previous key is still published: retire it first (--retire), so the file never "
            "holds two retiring keys"
        )
    if not force:
        since = now - (staged.staged if staged.staged is not None else now)
        if since < timing.before_promote:
            raise RotationRefused(
                f"the next key was staged {since:.0f} s ago; services that fetch the key set "
                f"may not know it before {timing.before_promote:.0f} s "
                "(INTERNAL_JWKS_MAX_AGE + INTERNAL_JWKS_COOLDOWN); wait "
                f"{timing.before_promote - since:.0f} s more, or --force"
            )
    out = []
    for entry in keys:
        if entry.role == "active":
            out.append(SigningKey(entry.key, "previous", entry.staged, entry.promoted))
        elif entry.role == "next":
            out.append(SigningKey(entry.key, "active", entry.staged, now))
        else:
            out.append(entry)
    return keys.with_keys(out)


def retire(keys: SigningKeys, now: float, timing: Timing, *, force: bool) -> SigningKeys:
    previous = keys.role("previous")
    if previous is None:
        raise RotationRefused("no previous key to retire")
    active = keys.role("active")
    promoted = active.promoted if active is not None else None
    if not force:
        since = now - (promoted if promoted is not None else now)
        if promoted is None or since < timing.before_retire:
            raise RotationRefused(
                f"the active key was promoted {since:.0f} s ago; workers may still sign with the "
                f"previous key, and tokens it signed may live, until {timing.before_retire:.0f} s "
                "(GATEWAY_CONFIG_RELOAD_INTERVAL + INTERNAL_TOKEN_TTL + INTERNAL_TOKEN_LEEWAY); "
                f"wait {timing.before_retire - since:.0f} s more, or --force"
            )
    return keys.with_keys(k for k in keys if k.role != "previous")


def register(actions: argparse._SubParsersAction[Any]) -> None:
    """Add ``keys rotate`` and ``keys status`` to ``tokengate keys``."""
    rotate = actions.add_parser(
        "rotate",
        help="stage, promote or retire an internal signing key in the gateway's key file",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rotate.add_argument(
        "--file",
        type=Path,
        help="the key file (default: INTERNAL_JWT_PRIVATE_KEYS_FILE, else "
        "INTERNAL_JWT_PRIVATE_KEY_FILE)",
    )
    step = rotate.add_mutually_exclusive_group(required=True)
    step.add_argument("--stage", action="store_true", help="add a next key (published only)")
    step.add_argument("--promote", action="store_true", help="make the next key the signer")
    step.add_argument("--retire", action="store_true", help="drop the previous key")
    rotate.add_argument("--force", action="store_true", help="skip the waiting-time checks")
    rotate.set_defaults(func=rotate_command)

    status = actions.add_parser(
        "status",
        help="list the key file's keys, their roles and ages, and which services know them",
    )
    status.add_argument("--file", type=Path, help="the key file (default as for rotate)")
    status.add_argument(
        "--metrics",
        action="append",
        default=[],
        metavar="URL",
        help="a service's metrics URL (repeatable): shows which kids it reports as known",
    )
    status.set_defaults(func=status_command)


def _key_file(args: argparse.Namespace, environ: Mapping[str, str]) -> Path:
    if args.file is not None:
        return Path(args.file)
    for name in ("INTERNAL_JWT_PRIVATE_KEYS_FILE", "INTERNAL_JWT_PRIVATE_KEY_FILE"):
        if environ.get(name):
            return Path(environ[name])
    raise ConfigError(
        "no key file: give --file or set INTERNAL_JWT_PRIVATE_KEYS_FILE "
        "(or INTERNAL_JWT_PRIVATE_KEY_FILE)"
    )


def _load(path: Path) -> SigningKeys:
    try:
        return SigningKeys.parse(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read the key file {path}: {exc.strerror}") from None
    except KeyLoadError as exc:
        raise ConfigError(f"{path}: {exc.message}") from None


def rotate_command(args: argparse.Namespace) -> int:
    environ = os.environ
    try:
        path = _key_file(args, environ)
        timing = Timing.from_env(environ)
        keys = _load(path)
    except ConfigError as exc:
        print(f"tokengate keys rotate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    now = time.time()
    try:
        if args.stage:
            new = stage(keys, now)
            done = f"staged {new.role('next').kid} as next"  # type: ignore[union-attr]
        elif args.promote:
            new = promote(keys, now, timing, force=args.force)
            done = f"promoted {new.signer.kid} to active"
        else:
            retired = keys.role("previous")
            new = retire(keys, now, timing, force=args.force)
            done = f"retired {retired.kid if retired else '-'}"
    except RotationRefused as exc:
        print(f"tokengate keys rotate: refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    try:
        write_key_file(path, new)
    except OSError as exc:
        print(f"tokengate keys rotate: cannot write {path}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    print(f"{done}; {path} now holds:")
    _print_keys(new, now, {})
    return 0


def status_command(args: argparse.Namespace) -> int:
    environ = os.environ
    try:
        path = _key_file(args, environ)
        keys = _load(path)
    except ConfigError as exc:
        print(f"tokengate keys status: {exc}", file=sys.stderr)
        return EXIT_USAGE
    known: dict[str, set[str] | None] = {}
    for url in args.metrics:
        known[url] = _known_kids(url)
    _print_keys(keys, time.time(), known)
    return 0 if all(v is not None for v in known.values()) else 3


_KNOWN = re.compile(
    r'^tokengate_\w+_internal_jwks_keys\{[^}]*kid="([A-Za-z0-9_-]{1,128})"[^}]*\} (\S+)'
)


def _known_kids(url: str) -> set[str] | None:
    """The kids a service's metrics report as known now (value 1), ``None`` if unreachable."""
    try:
        response = httpx.get(url, timeout=5.0, trust_env=False)
        response.raise_for_status()
    except httpx.HTTPError:
        return None
    found = set()
    for line in response.text.splitlines()[:100_000]:
        match = _KNOWN.match(line)
        if match and float(match.group(2)) >= 1:
            found.add(match.group(1))
    return found


def _age(since: float | None, now: float) -> str:
    if since is None:
        return "-"
    seconds = max(0, int(now - since))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def _print_keys(keys: SigningKeys, now: float, known: Mapping[str, set[str] | None]) -> None:
    urls: Sequence[str] = list(known)
    header = ["kid", "role", "staged", "promoted", *(f"service {i + 1}" for i in range(len(urls)))]
    rows = [header]
    for entry in keys:
        row = [entry.kid, entry.role, _age(entry.staged, now), _age(entry.promoted, now)]
        for url in urls:
            kids = known[url]
            row.append(
                "unreachable" if kids is None else ("known" if entry.kid in kids else "unknown")
            )
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    for i, url in enumerate(urls):
        print(f"service {i + 1}: {url}")
