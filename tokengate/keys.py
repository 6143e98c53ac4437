"""``tokengate keys generate``: a fresh Ed25519 key pair and the two gateway HMAC secrets.

Prints everything as ``.env`` lines (PEM escaped onto one line with literal ``\\n``, which
``internal_auth.load_private_key``/``load_public_keys`` undo) and, with ``--out DIR``, also
writes the key pair as PEM files: the private key with mode 0600. Existing files are never
overwritten unless ``--force`` is given.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
from pathlib import Path
from typing import Any

from internal_auth import PrivateKey, generate_private_key

from tokengate import key_rotation

PRIVATE_KEY_FILE = "internal_jwt_private_key.pem"
PUBLIC_KEY_FILE = "internal_jwt_public_key.pem"


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``keys generate``, ``keys rotate`` and ``keys status`` to the ``tokengate`` command."""
    keys = sub.add_parser("keys", help="generate, rotate and inspect key material and secrets")
    actions = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    generate = actions.add_parser(
        "generate",
        help="print a new Ed25519 key pair and JWT secrets as .env lines",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    generate.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help=f"also write {PRIVATE_KEY_FILE} (mode 0600) and {PUBLIC_KEY_FILE} into DIR",
    )
    generate.add_argument(
        "--force", action="store_true", help="overwrite key files that already exist in DIR"
    )
    generate.set_defaults(func=generate_command)
    key_rotation.register(actions)


def generate_command(args: argparse.Namespace) -> int:
    """Run ``keys generate``; returns the process exit status."""
    key = generate_private_key()
    out: Path | None = args.out
    if out is not None:
        try:
            write_key_files(key, out, force=args.force)
        except FileExistsError as exc:
            print(f"tokengate keys generate: {exc}; use --force to replace", file=sys.stderr)
            return 1
        except OSError as exc:
            print(
                f"tokengate keys generate: cannot write to {out}: {exc.strerror}", file=sys.stderr
            )
            return 1
        print(f"wrote {out / PRIVATE_KEY_FILE} (0600) and {out / PUBLIC_KEY_FILE}", file=sys.stderr)
    sys.stdout.write(env_lines(key))
    return 0


def env_lines(key: PrivateKey) -> str:
    """``.env`` lines for a new deployment: the key pair and two independent secrets."""
    # Two separate draws: knowing one secret must tell nothing about the other
    # (docs/ARCHITECTURE.md, trust model), and 48 random bytes is well over the 32-byte minimum
    # the gateway checks.
    access_secret = secrets.token_urlsafe(48)
    refresh_secret = secrets.token_urlsafe(48)
    return (
        f"# internal token key pair, kid {key.kid}\n"
        "# INTERNAL_JWT_PRIVATE_KEY is for the gateway only; the backend gets the public key.\n"
        f'INTERNAL_JWT_PRIVATE_KEY="{_one_line(key.private_pem())}"\n'
        f'INTERNAL_JWT_PUBLIC_KEY="{_one_line(key.public_pem())}"\n'
        "# gateway HMAC secrets for access and refresh tokens (independent on purpose)\n"
        f"JWT_ACCESS_SECRET={access_secret}\n"
        f"JWT_REFRESH_SECRET={refresh_secret}\n"
    )


def write_key_files(key: PrivateKey, directory: Path, *, force: bool) -> None:
    """Write the PEM pair into ``directory``; ``FileExistsError`` rather than overwrite."""
    targets = [
        (directory / PRIVATE_KEY_FILE, key.private_pem(), 0o600),
        (directory / PUBLIC_KEY_FILE, key.public_pem(), 0o644),
    ]
    if not force:
        existing = [str(path) for path, _, _ in targets if path.exists()]
        if existing:
            raise FileExistsError(f"{', '.join(existing)} already exist(s)")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for path, text, mode in targets:
        _write(path, text, mode, force=force)


def _write(path: Path, text: str, mode: int, *, force: bool) -> None:
    if not force:
        # O_EXCL: even a file created since the check above is never clobbered.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(text)
        return
    # Replace atomically through a private temporary file, so the key is never readable by
    # others for a moment, whatever the mode of the file it replaces.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _one_line(pem: str) -> str:
    return pem.strip().replace("\n", "\\n")
