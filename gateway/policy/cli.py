"""``tokengate policy check|explain|test``: what an operator runs on a ``GATEWAY_CONFIG`` file
before deploying it. None of them needs a running service, a secret or a database.

Exit status (README, "Checking a policy before deploying"):

- ``check``: 0 the file is valid, 2 it is not (one line per problem, the lines start-up prints)
  or an ``--openapi`` document cannot be read; operations no allow rule covers are warnings on
  stderr and never change the status;
- ``explain``: 0 explained (allow or deny), 2 the file or the arguments are bad;
- ``test``: 0 every case passed, 1 a case did not (one line each), 2 the file or the case file
  is bad. Rules no case exercised are listed, and do not change the status.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from servicekit.config import ConfigError, get_int

from gateway.policy.cases import CasesError, caller_from, describe, load_cases
from gateway.policy.coverage import DocumentError, read_document, uncovered
from gateway.policy.explain import exercised, explain
from gateway.policy.loader import DEFAULT_MAX_BYTES, load_policy
from gateway.policy.reload import hash_metric
from gateway.policy.table import Policy


def register(sub: argparse._SubParsersAction[Any]) -> None:
    policy = sub.add_parser(
        "policy", help="check, explain and test a GATEWAY_CONFIG file before deploying it"
    )
    actions = policy.add_subparsers(dest="action", required=True, metavar="ACTION")

    check = actions.add_parser("check", help="validate the file as start-up does")
    check.add_argument("file")
    check.add_argument(
        "--openapi",
        action="append",
        default=[],
        metavar="SERVICE=FILE_OR_URL",
        help="warn about operations of this service's OpenAPI document no allow rule covers",
    )
    check.set_defaults(func=_check)

    why = actions.add_parser("explain", help="which rules allow or deny one request, and why")
    why.add_argument("file")
    why.add_argument("--method", required=True)
    why.add_argument("--path", required=True, help="as rules write it (relative to /api/v1)")
    why.add_argument("--role", action="append", default=[], help="a role of the caller")
    why.add_argument("--user", help="the caller's user id")
    why.add_argument("--anonymous", action="store_true", help="a request without a token")
    why.set_defaults(func=_explain)

    test = actions.add_parser("test", help="run a file of expected decisions against the policy")
    test.add_argument("file")
    test.add_argument("cases", help="TOML, [[case]] tables (see README)")
    test.set_defaults(func=_test)


def _load(path: str) -> Policy:
    # the same bound as start-up: a file the gateway would refuse for its size is refused here
    max_bytes = get_int(os.environ, "GATEWAY_CONFIG_MAX_BYTES", DEFAULT_MAX_BYTES, minimum=1)
    return load_policy(path, max_bytes=max_bytes)


def _check(args: argparse.Namespace) -> int:
    documents = []
    for item in args.openapi:
        service, sep, source = item.partition("=")
        if not sep or not service or not source:
            raise ConfigError(f"--openapi {item!r}: write SERVICE=FILE_OR_URL")
        documents.append((service, source))
    # PolicyFileError is a ConfigError: the command prints the problem lines start-up prints
    policy = _load(args.file)
    for service, source in documents:
        if service not in policy.services:
            raise ConfigError(f"--openapi {service}=...: {service!r} is not a service of the file")
        try:
            document = read_document(source)
        except DocumentError as exc:
            raise ConfigError(f"--openapi {service}={source}: {exc}") from None
        for warning in uncovered(policy, service, document):
            print(f"warning: {warning}", file=sys.stderr)
    print(
        f"{args.file}: valid: {len(policy.services)} services, {len(policy.routes)} routes, "
        f"{len(policy.rules)} rules; sha256 {policy.digest} "
        f"(config_hash {hash_metric(policy.digest)})"
    )
    return 0


def _explain(args: argparse.Namespace) -> int:
    if args.anonymous and (args.role or args.user):
        raise ConfigError("--anonymous cannot be combined with --role or --user")
    method = args.method.upper()
    policy = _load(args.file)
    caller = caller_from(args.role, args.user, args.anonymous)
    result = explain(policy, method, args.path, caller)
    print(f"request: {method} {args.path} as {describe(caller)}")
    if result.path is not None and result.path != args.path:
        print(f"path: rules see {result.path}")
    print(result.route_line())
    for trace in result.traces:
        print(trace.line())
    print(result.decision_line(anonymous=caller is None))
    return 0


def _test(args: argparse.Namespace) -> int:
    policy = _load(args.file)
    try:
        cases = load_cases(args.cases)
    except CasesError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    failed = 0
    results = []
    for case in cases:
        result = explain(policy, case.method, case.path, case.caller)
        results.append(result)
        if result.allowed != case.expect_allow:
            failed += 1
            expected, got = ("allow", "deny") if case.expect_allow else ("deny", "allow")
            print(
                f"FAIL {case.label}: {case.method} {case.path} as {describe(case.caller)}: "
                f"expected {expected}, got {got} ({result.decision_line(case.caller is None)})"
            )
    unused = [rule.name for rule in policy.rules if rule.name not in exercised(results)]
    print(f"{len(cases) - failed} passed, {failed} failed, {len(cases)} cases")
    if unused:
        print(f"rules no case exercised ({len(unused)}): {', '.join(unused)}")
    else:
        print(f"every rule exercised ({len(policy.rules)})")
    return 1 if failed else 0
