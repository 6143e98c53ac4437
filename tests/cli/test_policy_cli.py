"""``tokengate policy check|explain|test`` (issue 25), run as an operator or a CI job runs them: a
subprocess, its output and its exit status. None of them needs a service, a secret or a
database, so the environment here has none."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.test_gateway_config_cli import BAD
from tests.cli.test_gateway_config_cli import _run as run_gateway
from tests.support.stack import ROOT

EXAMPLE = ROOT / "examples" / "gateway.toml"
CASES = ROOT / "examples" / "gateway_cases.toml"


def policy(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("JWT_", "INTERNAL_JWT", "DATABASE_URL", "REDIS_URL", "GATEWAY_"))
    }
    return subprocess.run(
        [sys.executable, "-m", "tokengate.cli", "policy", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


# -- check ------------------------------------------------------------------------------------


def test_check_a_valid_file_is_exit_0_and_names_its_hash() -> None:
    import hashlib

    done = policy("check", EXAMPLE)
    assert done.returncode == 0, done.stderr
    digest = hashlib.sha256(EXAMPLE.read_bytes()).hexdigest()
    assert f"valid: 2 services, 2 routes, 7 rules; sha256 {digest}" in done.stdout
    assert f"(config_hash {int(digest[:12], 16)})" in done.stdout
    assert done.stderr == ""


def test_check_a_bad_file_prints_the_lines_start_up_prints_and_is_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(BAD)
    checked = policy("check", config)
    started = run_gateway(config)
    assert checked.returncode == 2 and started.returncode == 2
    problems = [line for line in checked.stderr.splitlines() if line.startswith(str(config))]
    assert len(problems) == 3
    assert problems == [
        line for line in started.stderr.splitlines() if line.startswith(str(config))
    ]
    assert f'{config}:15: route.service "nosuch" is not a service' in problems
    assert "Traceback" not in checked.stderr and checked.stdout == ""


def test_check_a_missing_file_is_exit_2(tmp_path: Path) -> None:
    done = policy("check", tmp_path / "nope.toml")
    assert done.returncode == 2 and "cannot be read" in done.stderr


DOCUMENT = {
    "openapi": "3.1.0",
    "info": {"title": "backend", "version": "1"},
    "paths": {
        "/v1/me": {"get": {}},
        "/v1/notes/{note_id}": {"get": {}, "patch": {}, "delete": {}, "put": {}},
        "/v1/users/{user_id}/disable": {"post": {}},
        "/v1/stats": {"get": {}},
        "/internal/auth/validate": {"post": {}},
        "/v1/files/docs/{name}": {"get": {}},
    },
}


@pytest.fixture
def served_document() -> Iterator[str]:
    body = json.dumps(DOCUMENT).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/v1/openapi.json" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)  # a free port
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/openapi.json"
    finally:
        server.shutdown()
        server.server_close()


def _expected_warnings(stderr: str) -> list[str]:
    warnings = [line for line in stderr.splitlines() if line.startswith("warning: ")]
    assert any("backend: PUT /v1/notes/{note_id} (rules' /notes/*)" in w for w in warnings)
    assert any("backend: POST /v1/users/{user_id}/disable" in w for w in warnings)
    assert any("backend: GET /v1/stats" in w for w in warnings)
    assert any("POST /internal/auth/validate is not under /v1" in w for w in warnings)
    assert any("GET /v1/files/docs/{name} is routed to service files" in w for w in warnings)
    # covered: GET /me, GET/PATCH/DELETE /notes/{id} (notes: /notes/**)
    assert not any("/v1/me" in w or "GET /v1/notes" in w or "PATCH" in w for w in warnings)
    assert len(warnings) == 5
    return warnings


def test_check_openapi_warns_of_uncovered_operations_without_changing_the_status(
    tmp_path: Path,
) -> None:
    document = tmp_path / "backend.json"
    document.write_text(json.dumps(DOCUMENT))
    done = policy("check", EXAMPLE, "--openapi", f"backend={document}")
    assert done.returncode == 0, done.stderr
    _expected_warnings(done.stderr)
    assert "valid:" in done.stdout


def test_check_openapi_fetches_a_url(served_document: str) -> None:
    done = policy("check", EXAMPLE, "--openapi", f"backend={served_document}")
    assert done.returncode == 0, done.stderr
    _expected_warnings(done.stderr)


def test_check_openapi_a_template_is_any_one_segment(tmp_path: Path) -> None:
    # files-read covers /files/docs/** : GET /v1/files/docs/{name} is covered for files
    document = tmp_path / "files.json"
    document.write_text(json.dumps({"paths": {"/v1/files/docs/{name}": {"get": {}, "post": {}}}}))
    done = policy("check", EXAMPLE, "--openapi", f"files={document}")
    assert done.returncode == 0
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "files: POST /v1/files/docs/{name}" in warnings[0]


def test_check_openapi_bad_arguments_are_exit_2(tmp_path: Path) -> None:
    not_json = tmp_path / "x.json"
    not_json.write_text("paths: {}")
    assert policy("check", EXAMPLE, "--openapi", f"nosuch={not_json}").returncode == 2
    done = policy("check", EXAMPLE, "--openapi", f"backend={not_json}")
    assert done.returncode == 2 and "is not JSON" in done.stderr
    assert policy("check", EXAMPLE, "--openapi", "backend").returncode == 2


# -- explain ----------------------------------------------------------------------------------


def _lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_explain_deny_overrides_naming_the_deny_rule() -> None:
    lines = _lines(
        policy(
            "explain", EXAMPLE, "--method", "DELETE", "--path", "/files/docs/a", "--role", "admin"
        )
    )
    assert lines[0] == "request: DELETE /files/docs/a as any user, admin"
    assert lines[1] == "route: prefix /files -> service files"
    rules = [line for line in lines if line.startswith("rule ")]
    assert len(rules) == 7
    assert (
        "rule files-admin-write (allow): methods=hit paths=hit public=- authenticated=- "
        "roles_any=hit roles_all=- users=- => match"
    ) in rules
    assert (
        "rule files-read (allow): methods=miss paths=hit public=- authenticated=hit "
        "roles_any=- roles_all=- users=- => no match"
    ) in rules
    assert lines[-1] == "decision: deny (deny rule no-file-deletes matched -> 403)"


def test_explain_default_caller_is_an_authenticated_user_without_roles() -> None:
    lines = _lines(policy("explain", EXAMPLE, "--method", "GET", "--path", "/users"))
    assert "as any user, no roles" in lines[0]
    assert any(
        line.startswith("rule admin-users (allow):") and "roles_any=miss" in line for line in lines
    )
    assert lines[-1] == "decision: deny (no allow rule matched -> 403)"
    admin = _lines(
        policy("explain", EXAMPLE, "--method", "GET", "--path", "/users", "--role", "admin")
    )
    assert admin[-1] == "decision: allow (rule admin-users)"


def test_explain_anonymous_and_users() -> None:
    lines = _lines(
        policy("explain", EXAMPLE, "--method", "HEAD", "--path", "/files/public/x", "--anonymous")
    )
    assert lines[-1] == "decision: allow (rule files-public)"
    denied = _lines(policy("explain", EXAMPLE, "--method", "GET", "--path", "/me", "--anonymous"))
    assert any(
        line.startswith("rule me (allow):") and "authenticated=miss" in line for line in denied
    )
    assert denied[-1] == "decision: deny (no allow rule matched -> 401)"


def test_explain_users_criterion(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        'version = 1\n[services.backend]\nurl = "http://b:1"\naudience = "b"\n'
        '[[route]]\nprefix = "/notes"\nservice = "backend"\n'
        '[[rule]]\nname = "alice"\neffect = "allow"\npaths = ["/notes/**"]\nusers = ["u-1"]\n'
    )
    hit = _lines(policy("explain", config, "--method", "GET", "--path", "/notes", "--user", "u-1"))
    assert "users=hit" in hit[-2] and hit[-1] == "decision: allow (rule alice)"
    miss = _lines(policy("explain", config, "--method", "GET", "--path", "/notes"))
    assert "users=miss" in miss[-2] and miss[-1].startswith("decision: deny")
    # no catch-all route: a path outside every prefix is a 404, whatever the rules
    none = _lines(policy("explain", config, "--method", "GET", "--path", "/me", "--user", "u-1"))
    assert "route: no route -> 404" in none and none[-1] == "decision: deny (no route -> 404)"


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/files/public/../docs/a", "400"),
        ("/files/public/%2e%2e/docs/a", "400"),
        ("/files/public/a%2fb", "400"),
        ("/files//public/a", "404"),
        ("/files/public/", "404"),
        ("/auth/login", "404"),
        ("/files/public/a\\b", "400"),
        ("/files/public/a?x=1", "400"),
    ],
)
def test_explain_reports_a_path_the_proxy_refuses(path: str, status: str) -> None:
    lines = _lines(policy("explain", EXAMPLE, "--method", "GET", "--path", path, "--anonymous"))
    assert lines[1].startswith(f"path: refused by the proxy before any rule ({status} ")
    assert lines[-1].startswith("decision: deny (the proxy refuses the path")
    assert not any(line.startswith("rule ") for line in lines)


def test_explain_shows_the_decoded_path_rules_match() -> None:
    lines = _lines(
        policy(
            "explain", EXAMPLE, "--method", "GET", "--path", "/files/public/a%20b", "--anonymous"
        )
    )
    assert "path: rules see /files/public/a b" in lines
    assert lines[-1] == "decision: allow (rule files-public)"


def test_explain_bad_arguments_or_file_are_exit_2(tmp_path: Path) -> None:
    both = policy(
        "explain", EXAMPLE, "--method", "GET", "--path", "/me", "--anonymous", "--role", "a"
    )
    assert both.returncode == 2 and "--anonymous" in both.stderr
    config = tmp_path / "gateway.toml"
    config.write_text(BAD)
    bad = policy("explain", config, "--method", "GET", "--path", "/me")
    assert bad.returncode == 2 and "is not a service" in bad.stderr
    assert policy("explain", EXAMPLE, "--path", "/me").returncode == 2  # --method is required


# -- test -------------------------------------------------------------------------------------


def test_the_example_cases_pass_and_exercise_every_rule() -> None:
    done = policy("test", EXAMPLE, CASES)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 failed" in done.stdout
    assert "every rule exercised (7)" in done.stdout


def test_a_mismatch_is_exit_1_with_one_line_each_and_unexercised_rules_listed(
    tmp_path: Path,
) -> None:
    cases = tmp_path / "cases.toml"
    cases.write_text(
        '[[case]]\nname = "wrong"\nmethod = "DELETE"\npath = "/files/docs/a"\nroles = ["admin"]\n'
        'expect = "allow"\n'
        '[[case]]\nmethod = "GET"\npath = "/me"\nexpect = "allow"\n'
        '[[case]]\nmethod = "GET"\npath = "/users"\nexpect = "allow"\n'
    )
    done = policy("test", EXAMPLE, cases)
    assert done.returncode == 1
    fails = [line for line in done.stdout.splitlines() if line.startswith("FAIL ")]
    assert fails == [
        "FAIL case 1 (wrong): DELETE /files/docs/a as any user, admin: expected allow, got deny "
        "(decision: deny (deny rule no-file-deletes matched -> 403))",
        "FAIL case 3: GET /users as any user, no roles: expected allow, got deny "
        "(decision: deny (no allow rule matched -> 403))",
    ]
    assert "1 passed, 2 failed, 3 cases" in done.stdout
    assert "rules no case exercised (4): notes, admin-users, files-read, files-public" in (
        done.stdout
    )


@pytest.mark.parametrize(
    "text",
    [
        '[[case]]\nmethod = "GET"\npath = "/me"\nexpect = "maybe"\n',
        '[[case]]\nmethod = "get"\npath = "/me"\nexpect = "allow"\n',
        '[[case]]\nmethod = "GET"\npath = "me"\nexpect = "allow"\n',
        '[[case]]\nmethod = "GET"\npath = "/me"\nexpect = "allow"\ncolour = 1\n',
        '[[case]]\nmethod = "GET"\npath = "/me"\nexpect = "deny"\nanonymous = true\nuser = "a"\n',
        'title = "no cases"\n',
        "not toml [",
    ],
)
def test_a_bad_case_file_is_exit_2(tmp_path: Path, text: str) -> None:
    cases = tmp_path / "cases.toml"
    cases.write_text(text)
    done = policy("test", EXAMPLE, cases)
    assert done.returncode == 2, done.stdout
    assert str(cases) in done.stderr and "Traceback" not in done.stderr
