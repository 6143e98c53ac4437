"""``python -m examples.files [--host H] [--port P]``: the files service under uvicorn."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import uvicorn

from examples.files.app import ConfigError, FilesSettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.files")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    args = parser.parse_args(argv)
    try:
        FilesSettings.from_env(os.environ)  # every variable checked before serving
    except ConfigError as exc:
        print(f"files: configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO").upper())
    uvicorn.run(
        "examples.files.app:app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        proxy_headers=False,
        access_log=False,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
