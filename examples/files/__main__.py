"""``python -m examples.files [--host H] [--port P]``: the files service under uvicorn."""

from __future__ import annotations

import argparse
import logging
import os
import ssl
import sys

import uvicorn

from examples.files.app import ConfigError, FilesSettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.files")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    # mutual TLS on the hop, as `tokengate backend` (compose.yaml): with a CA, client
    # certificates are required
    parser.add_argument("--ssl-certfile")
    parser.add_argument("--ssl-keyfile")
    parser.add_argument("--ssl-ca-certs")
    args = parser.parse_args(argv)
    if (args.ssl_certfile is None) != (args.ssl_keyfile is None):
        print("files: --ssl-certfile and --ssl-keyfile go together", file=sys.stderr)
        return 2
    if args.ssl_ca_certs is not None and args.ssl_certfile is None:
        print("files: --ssl-ca-certs needs --ssl-certfile and --ssl-keyfile", file=sys.stderr)
        return 2
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
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
        ssl_ca_certs=args.ssl_ca_certs,
        ssl_cert_reqs=ssl.CERT_REQUIRED if args.ssl_ca_certs else ssl.CERT_NONE,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
