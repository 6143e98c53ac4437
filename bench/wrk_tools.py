"""Running ``wrk`` and reading its summary; shared by the bench scripts."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

INSTALL_HINT = "wrk is not installed; on Debian/Ubuntu: apt-get install wrk"

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


@dataclass(frozen=True)
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    errors: int


def require_wrk() -> None:
    if shutil.which("wrk") is None:
        print(INSTALL_HINT, file=sys.stderr)
        raise SystemExit(2)


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise ValueError(f"cannot read wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse(out: str) -> WrkResult:
    def find(pattern: str) -> str:
        m = re.search(pattern, out)
        if not m:
            raise ValueError(f"wrk output has no {pattern!r}:\n{out}")
        return m.group(1)

    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return WrkResult(
        rps=float(find(r"Requests/sec:\s+([\d.]+)")),
        p50_ms=_ms(find(r"(?m)^\s*50%\s+(\S+)")),
        p99_ms=_ms(find(r"(?m)^\s*99%\s+(\S+)")),
        requests=int(find(r"(\d+) requests in")),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        errors=sum(int(g) for g in sock.groups()) if sock else 0,
    )


def start(
    url: str,
    *,
    connections: int,
    duration: float,
    headers: dict[str, str] | None = None,
    script: Path | None = None,
    threads: int = 1,
) -> subprocess.Popen[str]:
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency"]
    for name, value in (headers or {}).items():
        cmd += ["-H", f"{name}: {value}"]
    if script is not None:
        cmd += ["-s", str(script)]
    cmd.append(url)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str], *, allow_non_2xx: bool = False) -> WrkResult:
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed: {err}")
    result = parse(out)
    if result.non_2xx and not allow_non_2xx:
        raise RuntimeError(f"{result.non_2xx} non-2xx responses:\n{out}")
    return result


def run(url: str, **kw: object) -> WrkResult:
    allow = bool(kw.pop("allow_non_2xx", False))
    return finish(start(url, **kw), allow_non_2xx=allow)  # type: ignore[arg-type]
