"""Request bodies, read one way by both services: framing, size limit, media type, strict JSON.

Before this module the body-size limit was written three times (the gateway's auth routes, the
backend's validation, the proxy's framing) and the three disagreed on a bad ``Content-Length``:
one answered 400, one ignored it, one let ``"²"`` through ``str.isdigit`` into ``int()``. Here is
the one decision:

- :func:`framing`: ``Content-Length`` is 1 to 18 ASCII digits (RFC 9110 §8.6), repeated only
  with the same value; anything else is 400. With ``Transfer-Encoding`` present the body is
  chunked and ``Content-Length`` is ignored (RFC 9112 §6.3).
- A declared size over the limit is 413 before a byte is read; a body that grows past the limit
  while streaming (chunked, or a lying client) is 413 too, so memory stays bounded.
- :func:`read_limited` waits at most ``pause`` seconds for each piece of the body: a client
  that stops sending half-way is 408 (:class:`BodyTimeout`, RFC 9110 §15.5.9), so a slow upload
  cannot hold a request (and whatever it holds) for ever.
- :func:`require_json` / :func:`refuse_foreign_body`: a JSON endpoint takes ``application/json``
  only (415 otherwise). A cross-site HTML form can send ``text/plain`` without a CORS preflight;
  it cannot send ``application/json``, so this is part of the CSRF defence.
- :func:`parse_json`: strict JSON text (RFC 8259): UTF-8 only, nesting at most ``max_depth``
  deep (deep nesting blows Python's recursion limit), no duplicate member names (two parsers
  could each pick a different one), no ``NaN``/``Infinity``, and no string (key or value) holding
  a NUL or an unpaired surrogate: PostgreSQL cannot store either and RFC 8259 §8.2 calls such
  strings non-interoperable, so they are refused here rather than fail in a driver later.
  Every check is linear in the body (issue 21, finding 1): one pass of the C parser, whose own
  recursion guard stops nesting deeper than the interpreter's limit, then one iterative walk of
  the values it built for depth and text. No check rescans the text from a later offset.

Errors are :class:`BodyError` subclasses carrying status, code and message; each service maps
``BodyError`` to its JSON error body in its one exception handler.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "DEFAULT_BODY_TIMEOUT",
    "DEFAULT_MAX_DEPTH",
    "BodyError",
    "BodyTimeout",
    "Framing",
    "InvalidJson",
    "MalformedFraming",
    "PayloadTooLarge",
    "UnsupportedMediaType",
    "framing",
    "is_json_media_type",
    "parse_json",
    "read_json",
    "read_limited",
    "refuse_foreign_body",
    "require_json",
]

Header = tuple[bytes, bytes]

#: Seconds a client may leave between two pieces of its body (``BODY_READ_TIMEOUT``): nginx's
#: ``client_body_timeout`` is 60 s; a client that sends nothing for 10 s is not uploading.
DEFAULT_BODY_TIMEOUT = 10.0
#: Deeper than any document our APIs define, far below Python's recursion limit.
DEFAULT_MAX_DEPTH = 32
# 18 digits stay below 2**63; a longer Content-Length cannot be a body we would ever accept.
_CONTENT_LENGTH = re.compile(rb"[0-9]{1,18}")
_TOO_LONG_DIGITS = re.compile(rb"[0-9]{19,}")
_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")


class BodyError(Exception):
    """A request body (or its framing) that the service refuses; a 4xx, never a 500."""

    status = 400
    code = "bad_request"
    message = "malformed request body"
    #: response headers the refusal needs (none but for a timeout)
    headers: dict[str, str] = {}

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.message)
        if message is not None:
            self.message = message


class MalformedFraming(BodyError):
    message = "invalid Content-Length"


class PayloadTooLarge(BodyError):
    status = 413
    code = "payload_too_large"
    message = "request body is too large"

    @classmethod
    def over(cls, limit: int) -> PayloadTooLarge:
        # The limit in the message tells a client (and a test) which hop refused the body.
        return cls(f"request body is larger than {limit} bytes")


class BodyTimeout(BodyError):
    status = 408
    code = "request_timeout"
    message = "the request body did not arrive in time"
    # the rest of the body may still be on its way: the connection cannot carry another request
    # (RFC 9110 §15.5.9, "the server SHOULD send the close connection option")
    headers = {"Connection": "close"}

    @classmethod
    def after(cls, seconds: float) -> BodyTimeout:
        return cls(f"no part of the request body arrived for {seconds:g} s")


class UnsupportedMediaType(BodyError):
    status = 415
    code = "unsupported_media_type"
    message = "the request body must be application/json"


class InvalidJson(BodyError):
    message = "request body must be JSON"


@dataclass(frozen=True, slots=True)
class Framing:
    """How the client framed its body: a declared ``length``, or ``chunked``, or neither."""

    length: int | None
    chunked: bool

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.length)


def framing(headers: Iterable[Header], *, limit: int | None = None) -> Framing:
    """The body framing from ASGI headers (lower-case names); 400 or 413 as the module says."""
    length: int | None = None
    chunked = False
    for name, value in headers:
        if name == b"content-length":
            if _TOO_LONG_DIGITS.fullmatch(value):
                raise PayloadTooLarge()
            if not _CONTENT_LENGTH.fullmatch(value):
                raise MalformedFraming()
            parsed = int(value)
            if length is not None and parsed != length:
                raise MalformedFraming()
            length = parsed
        elif name == b"transfer-encoding":
            chunked = True
    if chunked:
        return Framing(None, True)
    if limit is not None and length is not None and length > limit:
        raise PayloadTooLarge.over(limit)
    return Framing(length, False)


class _Streaming(Protocol):
    @property
    def headers(self) -> Any: ...

    def stream(self) -> AsyncIterator[bytes]: ...


async def read_limited(
    request: _Streaming, limit: int, *, pause: float = DEFAULT_BODY_TIMEOUT
) -> bytes:
    """The whole body, at most ``limit`` bytes whatever the client declared (413 beyond), each
    piece within ``pause`` seconds of the one before (408 beyond)."""
    framing(request.headers.raw, limit=limit)
    body = bytearray()
    chunks = request.stream()
    while True:
        try:
            async with asyncio.timeout(pause):
                chunk = await anext(chunks)
        except StopAsyncIteration:
            return bytes(body)
        except TimeoutError:
            raise BodyTimeout.after(pause) from None
        body.extend(chunk)
        if len(body) > limit:
            raise PayloadTooLarge.over(limit)


def is_json_media_type(content_type: str | None) -> bool:
    """``application/json`` (any case), with no parameter but ``charset=utf-8`` (RFC 8259 §11)."""
    if not content_type:
        return False
    media, *params = (part.strip() for part in content_type.split(";"))
    if media.lower() != "application/json":
        return False
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() != "charset" or value.strip().strip('"').lower() != "utf-8":
            return False
    return True


def _content_type(headers: Sequence[Header]) -> str | None:
    values = [value for name, value in headers if name == b"content-type"]
    if len(values) != 1:
        return None
    return values[0].decode("latin-1")


def require_json(headers: Sequence[Header]) -> None:
    """415 unless the request says its body is ``application/json``."""
    if not is_json_media_type(_content_type(headers)):
        raise UnsupportedMediaType()


def refuse_foreign_body(headers: Sequence[Header]) -> None:
    """For endpoints that read no body: a body is tolerated only as ``application/json``.

    A cross-site form can POST ``text/plain`` or ``application/x-www-form-urlencoded`` with no
    preflight; refusing such bodies on every JSON endpoint leaves a form nothing to send.
    """
    if framing(headers).has_body:
        require_json(headers)


def parse_json(raw: bytes, *, max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """Strict JSON text to Python values, or :class:`InvalidJson` (400)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidJson("request body must be UTF-8 JSON") from None
    too_deep = f"JSON nested deeper than {max_depth} levels"
    try:
        value = json.loads(
            text,
            object_pairs_hook=_object_without_duplicates,
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
        )
    except RecursionError:
        # The C scanner's guard (Py_EnterRecursiveCall): deeper than the interpreter allows,
        # so far deeper than max_depth. Caught before anything of that depth is walked.
        raise InvalidJson(too_deep) from None
    except ValueError:
        raise InvalidJson() from None
    problem = _check_values(value, max_depth)
    if problem is _TOO_DEEP:
        raise InvalidJson(too_deep)
    if problem is _UNCLEAN:
        raise InvalidJson("JSON strings must not contain NUL or unpaired surrogates")
    return value


async def read_json(
    request: _Streaming,
    *,
    limit: int,
    max_depth: int = DEFAULT_MAX_DEPTH,
    pause: float = DEFAULT_BODY_TIMEOUT,
) -> Any:
    """Media type, size and strict parsing, in that order (cheap refusals first)."""
    require_json(request.headers.raw)
    return parse_json(await read_limited(request, limit, pause=pause), max_depth=max_depth)


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate member name")
    return obj


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError("number out of range")
    return value


_TOO_DEEP = "too deep"
_UNCLEAN = "unclean"


def _check_values(value: Any, max_depth: int) -> str | None:
    """``_TOO_DEEP``, ``_UNCLEAN`` or ``None``, visiting each value once (linear in the body).

    The walk is iterative with an explicit stack: the values may nest up to the interpreter's
    recursion limit (json.loads allows that much), and a recursive walk would hit it here.
    The old check cut strings out with a regex that restarted at every quote, O(n²) for
    ``"`` followed by many ``\\"``: 9 s of event loop for one 64 KB note.
    """
    bad_text = _BAD_TEXT.search
    if isinstance(value, str):
        return _UNCLEAN if bad_text(value) is not None else None
    if not isinstance(value, dict | list):
        return None
    # Only containers are pushed; strings are checked where they are found.
    stack: list[tuple[dict[str, Any] | list[Any], int]] = [(value, 1)]
    while stack:
        container, depth = stack.pop()
        if depth > max_depth:
            return _TOO_DEEP
        if isinstance(container, dict):
            for key in container:
                if bad_text(key) is not None:
                    return _UNCLEAN
            members: Iterable[Any] = container.values()
        else:
            members = container
        for member in members:
            if isinstance(member, str):
                if bad_text(member) is not None:
                    return _UNCLEAN
            elif isinstance(member, dict | list):
                stack.append((member, depth + 1))
    return None
