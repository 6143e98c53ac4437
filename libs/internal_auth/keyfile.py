"""The gateway's signing keys: several Ed25519 keys, each with a role, in one PEM file.

A key file is a PEM bundle. Each ``PRIVATE KEY`` block may be preceded by attribute lines,
which RFC 7468 §5.2 calls explanatory text and PEM readers (OpenSSL included) skip::

    # tokengate internal signing keys: written by `tokengate keys rotate`
    role: active
    staged: 2026-12-01T09:00:00Z
    promoted: 2026-12-01T09:10:00Z
    -----BEGIN PRIVATE KEY-----
    ...
    -----END PRIVATE KEY-----

Roles (the rotation of docs/SECURITY.md, "Rotating the internal signing key"):

- ``next``: staged, published in the key set, never signs;
- ``active``: the one key that signs;
- ``previous``: the key that signed before the last promotion, published until it is retired,
  so tokens it signed stay verifiable for their lifetime.

A file of bare PEM blocks (no attribute lines) is valid: its first key is ``active`` and any
others are ``previous`` (published, not signing) — so ``INTERNAL_JWT_PRIVATE_KEY_FILE`` pointing
at the one key ``tokengate keys generate`` wrote keeps working.

:class:`KeyHolder` is what a running gateway uses: one per process, holding the current
:class:`SigningKeys`; :meth:`KeyHolder.reload` swaps it in one assignment when the file changed
and keeps the last good set when the new text is invalid.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from .errors import KeyLoadError
from .keys import KeySet, PrivateKey, load_private_key

__all__ = [
    "ROLES",
    "KeyHolder",
    "SigningKey",
    "SigningKeys",
    "format_time",
    "parse_time",
    "write_key_file",
]

#: The roles a key can have, in the order a key passes through them.
ROLES = ("next", "active", "previous")
_ATTRIBUTES = frozenset({"role", "kid", "staged", "promoted"})
#: Bounds on what a key file may hold: a rotation needs three keys at the most.
MAX_KEYS = 8
MAX_FILE_BYTES = 64 * 1024
_BLOCK = re.compile(
    r"-----BEGIN ([A-Z0-9 ]+)-----\s*(.*?)\s*-----END \1-----", re.DOTALL | re.ASCII
)
_TIME = "%Y-%m-%dT%H:%M:%SZ"


def parse_time(value: str) -> float:
    """``2026-12-01T09:00:00Z`` (UTC, whole seconds) as a POSIX time."""
    try:
        return datetime.strptime(value, _TIME).replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise KeyLoadError(f"{value!r} is not a UTC time like 2026-12-01T09:00:00Z") from None


def format_time(when: float) -> str:
    return datetime.fromtimestamp(int(when), UTC).strftime(_TIME)


@dataclass(frozen=True)
class SigningKey:
    """One key of a key file: the key, its role, and when it was staged and promoted."""

    key: PrivateKey
    role: str
    staged: float | None = None
    promoted: float | None = None

    @property
    def kid(self) -> str:
        return self.key.kid


@dataclass(frozen=True)
class SigningKeys:
    """An immutable, checked set of signing keys: exactly one ``active``, at most one ``next``
    and one ``previous``, no ``kid`` twice."""

    keys: tuple[SigningKey, ...]

    def __post_init__(self) -> None:
        if not self.keys:
            raise KeyLoadError("a key file needs at least one private key")
        if len(self.keys) > MAX_KEYS:
            raise KeyLoadError(f"a key file holds at most {MAX_KEYS} keys")
        roles = [k.role for k in self.keys]
        if roles.count("active") != 1:
            raise KeyLoadError(
                f"a key file needs exactly one active key, found {roles.count('active')}"
            )
        for role in ("next", "previous"):
            if roles.count(role) > 1:
                raise KeyLoadError(f"a key file holds at most one {role} key")
        kids = [k.kid for k in self.keys]
        if len(set(kids)) != len(kids):
            raise KeyLoadError("the same key appears twice in the key file")

    @property
    def signer(self) -> PrivateKey:
        """The active key: the only one that signs."""
        return self.role("active").key  # type: ignore[union-attr]  # checked in __post_init__

    def role(self, role: str) -> SigningKey | None:
        return next((k for k in self.keys if k.role == role), None)

    @property
    def public_keys(self) -> KeySet:
        """Every key's public half, ``next`` and ``previous`` included: what is published."""
        return KeySet(k.key.public_key for k in self.keys)

    def __iter__(self) -> Iterator[SigningKey]:
        return iter(self.keys)

    def render(self) -> str:
        """The key file text (private key material: write it with mode 0600)."""
        out = ["# tokengate internal signing keys: written by `tokengate keys rotate`", ""]
        order = {role: i for i, role in enumerate(ROLES)}
        for entry in sorted(self.keys, key=lambda k: order[k.role]):
            out.append(f"role: {entry.role}")
            out.append(f"kid: {entry.kid}")
            if entry.staged is not None:
                out.append(f"staged: {format_time(entry.staged)}")
            if entry.promoted is not None:
                out.append(f"promoted: {format_time(entry.promoted)}")
            out.append(entry.key.private_pem().strip())
            out.append("")
        return "\n".join(out)

    @classmethod
    def single(cls, key: PrivateKey) -> SigningKeys:
        return cls((SigningKey(key, "active"),))

    @classmethod
    def parse(cls, text: str | bytes) -> SigningKeys:
        """Parse a key file or a PEM bundle; :class:`KeyLoadError` names what is wrong (never a
        byte of key material)."""
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError:
                raise KeyLoadError("the key file is not UTF-8 text") from None
        if len(text) > MAX_FILE_BYTES:
            raise KeyLoadError(f"the key file is larger than {MAX_FILE_BYTES} bytes")
        text = text.strip()
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
            text = text[1:-1].strip()
        # the one-line form .env files force (literal \n), as load_private_key accepts
        text = text.replace("\\r\\n", "\n").replace("\\n", "\n").replace("\r\n", "\n")
        entries: list[tuple[dict[str, str], PrivateKey]] = []
        position = 0
        for match in _BLOCK.finditer(text):
            attributes = _attributes(text[position : match.start()], len(entries) + 1)
            position = match.end()
            if "PRIVATE KEY" not in match.group(1):
                raise KeyLoadError(
                    f"key {len(entries) + 1}: expected a PRIVATE KEY block, found "
                    f"{match.group(1)!r}"
                )
            try:
                key = load_private_key(match.group(0))
            except KeyLoadError as exc:
                raise KeyLoadError(f"key {len(entries) + 1}: {exc}") from None
            if "kid" in attributes and attributes["kid"] != key.kid:
                raise KeyLoadError(f"key {len(entries) + 1}: 'kid' is not this key's thumbprint")
            entries.append((attributes, key))
        if text[position:].strip() and not all(
            line.strip().startswith("#") for line in text[position:].strip().splitlines()
        ):
            raise KeyLoadError("unexpected text after the last PEM block")
        if not entries:
            raise KeyLoadError("no PRIVATE KEY PEM block found")
        if not any("role" in a for a, _ in entries):
            # a bare bundle: the first key signs, the rest are published only
            return cls(
                tuple(
                    SigningKey(key, "active" if i == 0 else "previous")
                    for i, (_, key) in enumerate(entries)
                )
            )
        keys = []
        for i, (attributes, key) in enumerate(entries, 1):
            role = attributes.get("role")
            if role is None:
                raise KeyLoadError(f"key {i}: no 'role' line while other keys have one")
            if role not in ROLES:
                raise KeyLoadError(f"key {i}: role {role!r} is not one of {', '.join(ROLES)}")
            staged = attributes.get("staged")
            promoted = attributes.get("promoted")
            keys.append(
                SigningKey(
                    key,
                    role,
                    staged=parse_time(staged) if staged else None,
                    promoted=parse_time(promoted) if promoted else None,
                )
            )
        return cls(tuple(keys))

    def with_keys(self, keys: Iterable[SigningKey]) -> SigningKeys:
        return replace(self, keys=tuple(keys))


def _attributes(text: str, number: int) -> dict[str, str]:
    found: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition(":")
        name, value = name.strip().lower(), value.strip()
        if not sep or name not in _ATTRIBUTES:
            raise KeyLoadError(
                f"key {number}: unexpected line before the PEM block (expected role:, kid:, "
                "staged: or promoted:)"
            )
        if name in found:
            raise KeyLoadError(f"key {number}: {name!r} given twice")
        found[name] = value
    return found


def write_key_file(path: str | Path, keys: SigningKeys) -> None:
    """Write ``keys`` to ``path`` atomically: a temporary file of mode 0600 in the same folder,
    fsynced, then renamed over the old one, so a reader sees the old file or the new, never half
    of one."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent or ".")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(keys.render())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with _suppress_os_error():
            os.unlink(tmp)
        raise


class _suppress_os_error:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: object, tb: object) -> bool:
        return isinstance(exc, OSError)


class KeyHolder:
    """The current :class:`SigningKeys` of one process; every minter signs with its signer.

    ``path`` set: :meth:`reload` re-reads the file and swaps the set when its content changed.
    The swap is one attribute assignment, so a concurrent mint sees the old set or the new one.
    A file that cannot be read or parsed leaves the last good set in place and raises, so the
    caller can log and count it.
    """

    __slots__ = ("_digest", "keys", "path")

    def __init__(
        self, keys: SigningKeys, *, path: str | Path | None = None, text: str | None = None
    ) -> None:
        """``text``: the file content ``keys`` were parsed from (so the first :meth:`reload`
        sees no change); without it the file is hashed now."""
        self.keys = keys
        self.path = Path(path) if path is not None else None
        self._digest = b""
        if text is not None:
            self._digest = _digest(text)
        elif self.path is not None:
            self._digest = _digest(_read(self.path))

    @classmethod
    def from_file(cls, path: str | Path) -> KeyHolder:
        text = _read(Path(path))
        return cls(SigningKeys.parse(text), path=path, text=text)

    @property
    def signer(self) -> PrivateKey:
        return self.keys.signer

    def reload(self) -> bool:
        """Re-read the file; ``True`` when a new, valid set was swapped in."""
        if self.path is None:
            return False
        text = _read(self.path)
        digest = _digest(text)
        if digest == self._digest:
            return False
        keys = SigningKeys.parse(text)
        self.keys, self._digest = keys, digest
        return True


def _digest(text: str) -> bytes:
    # surrounding white space is not content (the environment reader strips it too)
    return hashlib.sha256(text.strip().encode("utf-8")).digest()


def _read(path: Path) -> str:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise KeyLoadError(f"cannot read key file {str(path)!r}: {type(exc).__name__}") from None
    if len(data) > MAX_FILE_BYTES:
        raise KeyLoadError(f"the key file is larger than {MAX_FILE_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise KeyLoadError("the key file is not UTF-8 text") from None
