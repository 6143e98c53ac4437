"""The ``tokengate`` command: one entry point, each package registering its own subcommands."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from servicekit.config import ConfigError


def build_parser() -> argparse.ArgumentParser:
    # Imported here so ``tokengate --help`` stays cheap and a broken optional part (the
    # embedded stack) cannot stop the other commands from loading.
    from backend import cli as backend_cli
    from gateway import cli as gateway_cli
    from gateway.policy import cli as policy_cli
    from tokengate import audit, certs, client, dev, keys, migrate

    parser = argparse.ArgumentParser(prog="tokengate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    keys.register(sub)
    certs.register(sub)
    migrate.register(sub)
    backend_cli.register(sub)
    gateway_cli.register(sub)
    policy_cli.register(sub)
    audit.register(sub)
    dev.register(sub)
    client.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # prometheus-client decides where metric values live when it is first imported (below):
    # this process keeps them in memory; only workers of --workers N get the folder.
    requested = os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    parser = build_parser()
    from servicekit import metrics

    metrics.requested_dir = requested
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
    except ConfigError as exc:
        # one line per problem, every problem of this run, no traceback
        for message in exc.messages:
            print(f"tokengate: configuration error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    raise SystemExit(main())
