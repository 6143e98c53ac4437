"""Public path -> backend path: what passes, and every shape of escape that must not."""

from __future__ import annotations

import pytest

from gateway.errors import BadRequest, GatewayError, NotFound
from gateway.proxy.paths import backend_path


def _map(raw: str) -> tuple[str, str]:
    mapped = backend_path(raw.encode("ascii"), raw)
    return mapped.raw, mapped.path


@pytest.mark.parametrize(
    ("raw", "wire", "htu"),
    [
        ("/api/v1/me", "/v1/me", "/v1/me"),
        ("/api/v1/notes/7c6f7e39-2b0b-4a43-9a39-9d7b5f1f7e11", None, None),
        ("/api/v1/notes/a%20b", "/v1/notes/a%20b", "/v1/notes/a b"),
        ("/api/v1/files/caf%C3%A9", "/v1/files/caf%C3%A9", "/v1/files/café"),
        ("/api/v1/users/me@example.test", None, None),
        ("/api/v1/a.b/c..d/...", None, None),
    ],
)
def test_plain_paths_map_under_v1(raw: str, wire: str | None, htu: str | None) -> None:
    expected = "/v1/" + raw.removeprefix("/api/v1/")
    assert _map(raw) == (wire or expected, htu or expected)


TRAVERSALS = [
    "/api/v1/..",
    "/api/v1/../internal/auth/validate",
    "/api/v1/notes/../../internal/auth/validate",
    "/api/v1/./me",
    "/api/v1/notes/.",
    "/api/v1/%2e%2e/internal/auth/validate",
    "/api/v1/%2E%2E/internal/auth/validate",
    "/api/v1/.%2e/internal/auth/validate",
    "/api/v1/%2e./internal",
    "/api/v1/..%2finternal%2fauth%2fvalidate",
    "/api/v1/..%2Finternal",
    "/api/v1/notes%2f..%2f..%2finternal",
    "/api/v1/..%5cinternal",
    "/api/v1/..%5Cinternal",
    "/api/v1/..\\internal",
    "/api/v1/notes\\..\\..\\internal",
    "/api/v1/%252e%252e/internal",
    "/api/v1/%25%32%65%25%32%65/internal",
    "/api/v1/..;/internal",
    "/api/v1/notes;jsessionid=x",
    "/api/v1/me%00",
    "/api/v1/me%0d%0aX-Internal-Auth:%20x",
    "/api/v1/%ff",
    "/api/v1/a%zz",
]


@pytest.mark.parametrize("raw", TRAVERSALS)
def test_traversal_and_ambiguous_encodings_are_400(raw: str) -> None:
    with pytest.raises(BadRequest):
        backend_path(raw.encode("latin-1"), raw)


@pytest.mark.parametrize(
    "raw",
    ["/api/v1/", "/api/v1//internal/auth/validate", "/api/v1/notes//x", "/api/v1/notes/"],
)
def test_empty_segments_are_404(raw: str) -> None:
    with pytest.raises(NotFound):
        backend_path(raw.encode("ascii"), raw)


@pytest.mark.parametrize("raw", ["/api/v1/auth/login", "/api/v1/auth", "/internal/auth/validate"])
def test_gateway_and_foreign_paths_are_never_mapped(raw: str) -> None:
    with pytest.raises(NotFound):
        backend_path(raw.encode("ascii"), raw)


def test_non_ascii_raw_path_is_400() -> None:
    with pytest.raises(BadRequest):
        backend_path("/api/v1/café".encode(), "/api/v1/café")


@pytest.mark.parametrize("raw", [*TRAVERSALS, "/api/v1/notes//x"])
def test_nothing_refused_ever_maps_outside_v1(raw: str) -> None:
    # Belt and braces over the table above: refused, or (never) a path outside /v1/.
    try:
        mapped = backend_path(raw.encode("latin-1"), raw)
    except GatewayError:
        return
    raise AssertionError(f"{raw!r} mapped to {mapped}")


def test_without_raw_path_the_decoded_path_is_checked() -> None:
    assert backend_path(None, "/api/v1/me").path == "/v1/me"
    with pytest.raises(BadRequest):
        backend_path(None, "/api/v1/../internal")
