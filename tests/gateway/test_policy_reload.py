"""Reloading GATEWAY_CONFIG in one worker (issue 25), on a real file and a real event loop: a
change applied within the interval, by an in-place write and by an atomic rename; a write still
in progress never applied as its prefix; a broken and a half-written file keep the last good
table and are counted; a change of services refused; SIGHUP's wake checks at once."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway import metrics
from gateway.policy import Caller, Policy, load_policy
from gateway.policy.reload import PolicyReloader, hash_metric

HEAD = """\
version = 1

[services.backend]
url = "http://127.0.0.1:1"
audience = "tokengate-backend"

[[route]]
prefix = "/"
service = "backend"

[[rule]]
name = "notes"
effect = "allow"
paths = ["/notes/**"]
authenticated = true
"""
# appended: a deny the editor is still typing when the prefix above is already valid TOML
DENY = """
[[rule]]
name = "no-deletes"
effect = "deny"
methods = ["DELETE"]
paths = ["/notes/**"]
"""
USER = Caller("u-1", frozenset())


@dataclass
class Holder:
    policy: Policy | None


def _reloads(outcome: str) -> float:
    return float(metrics.CONFIG_RELOADS.labels(outcome)._value.get())


def _allowed(holder: Holder, method: str = "DELETE") -> bool:
    assert holder.policy is not None
    return holder.policy.decide(method, "/notes/1", USER).allowed


def _reloader(path: Path, interval: float = 60.0) -> tuple[Holder, PolicyReloader]:
    holder = Holder(load_policy(str(path)))
    return holder, PolicyReloader(holder, str(path), interval=interval, max_bytes=1 << 20)


async def _until(predicate: object, timeout: float) -> float:
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not predicate():  # type: ignore[operator]
        if loop.time() - started > timeout:
            raise AssertionError("not within the time")
        await asyncio.sleep(0.02)
    return loop.time() - started


async def test_an_in_place_write_is_applied_within_the_interval(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(HEAD)
    holder, reloader = _reloader(config, interval=0.3)
    assert _allowed(holder)
    before = _reloads("applied")
    reloader.start()
    try:
        with config.open("a") as handle:  # in place: same inode, same name
            handle.write(DENY)
        took = await _until(lambda: not _allowed(holder), 3.0)
    finally:
        await reloader.stop()
    assert took < 0.3 + 1.0
    assert _reloads("applied") == before + 1
    digest = hashlib.sha256(config.read_bytes()).hexdigest()
    assert holder.policy is not None and holder.policy.digest == digest
    assert metrics.CONFIG_HASH._value.get() == hash_metric(digest)


async def test_an_atomic_rename_is_applied(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(HEAD)
    holder, reloader = _reloader(config, interval=0.3)
    reloader.start()
    try:
        staged = tmp_path / ".gateway.toml.new"
        staged.write_text(HEAD + DENY)
        os.replace(staged, config)  # what editors, config management and k8s ConfigMaps do
        await _until(lambda: not _allowed(holder), 3.0)
    finally:
        await reloader.stop()


async def test_a_write_in_progress_is_never_applied_as_its_prefix(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(HEAD.replace("notes", "old"))
    holder, reloader = _reloader(config)
    first = holder.policy
    # the editor has written a valid prefix (rules without the deny) and is still writing
    config.write_text(HEAD)
    check = asyncio.create_task(reloader.check())
    await asyncio.sleep(0.03)  # inside the settle window
    with config.open("a") as handle:
        handle.write(DENY)
    assert await check == "unsettled"
    assert holder.policy is first  # neither the prefix nor anything else was served
    assert await reloader.check() == "applied"
    assert not _allowed(holder)


@pytest.mark.parametrize(
    ("text", "marker"),
    [
        (HEAD + '\n[[rule]]\nname = "x"\neffect = "maybe"\n', "maybe"),  # invalid
        (HEAD + DENY[: DENY.index("methods")] + 'methods = ["DEL', "DEL"),  # half-written
    ],
    ids=["broken", "half-written"],
)
async def test_a_bad_file_keeps_the_last_good_table_and_is_counted(
    tmp_path: Path, text: str, marker: str, caplog: pytest.LogCaptureFixture
) -> None:
    line = next(n for n, t in enumerate(text.splitlines(), 1) if marker in t)
    config = tmp_path / "gateway.toml"
    config.write_text(HEAD + DENY)
    holder, reloader = _reloader(config)
    good = holder.policy
    assert good is not None
    failed = _reloads("failed")
    config.write_text(text)
    with caplog.at_level(logging.ERROR, logger="gateway.policy"):
        assert await reloader.check() == "failed"
        # the same bad content is reported once, not at every look
        assert await reloader.check() == "unchanged"
    assert holder.policy is good and not _allowed(holder)
    assert _reloads("failed") == failed + 1
    assert metrics.CONFIG_HASH._value.get() == hash_metric(good.digest)
    records = [r for r in caplog.records if r.getMessage() == "config_reload_failed"]
    assert len(records) == 1
    problems = records[0].fields["problems"]  # type: ignore[attr-defined]
    assert problems and all(p.startswith(f"{config}:{line}:") for p in problems), problems
    # fixed: applied again
    config.write_text(HEAD)
    assert await reloader.check() == "applied"
    assert _allowed(holder)


async def test_a_missing_file_keeps_the_last_good_table(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(HEAD + DENY)
    holder, reloader = _reloader(config)
    failed = _reloads("failed")
    config.unlink()
    assert await reloader.check() == "failed"
    assert _reloads("failed") == failed + 1 and not _allowed(holder)


async def test_a_change_of_services_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(HEAD)
    holder, reloader = _reloader(config)
    good = holder.policy
    refused = _reloads("refused")
    config.write_text(HEAD.replace("127.0.0.1:1", "127.0.0.1:2") + DENY)
    with caplog.at_level(logging.ERROR, logger="gateway.policy"):
        assert await reloader.check() == "refused"
    assert holder.policy is good and _reloads("refused") == refused + 1
    assert any(r.getMessage() == "config_reload_refused" for r in caplog.records)


async def test_wake_checks_at_once_and_reports_a_refused_content_again(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(HEAD)
    holder, reloader = _reloader(config, interval=600.0)
    reloader.start()
    try:
        await asyncio.sleep(0.05)
        config.write_text(HEAD + DENY)
        await asyncio.sleep(0.3)
        assert _allowed(holder)  # the interval is ten minutes: nothing looked yet
        reloader.wake()  # what the SIGHUP handler calls
        took = await _until(lambda: not _allowed(holder), 2.0)
        assert took < 1.0
        failed = _reloads("failed")
        config.write_text("version = ")
        reloader.wake()
        await _until(lambda: _reloads("failed") == failed + 1, 2.0)
        reloader.wake()  # SIGHUP again: the operator is told again
        await _until(lambda: _reloads("failed") == failed + 2, 2.0)
    finally:
        await reloader.stop()


@pytest.mark.parametrize(
    ("raw", "expected"), [("", 5.0), ("0.1", 0.1), ("3600", 3600.0), ("0.05", None), ("3601", None)]
)
def test_the_reload_interval_is_bounded(
    env: dict[str, str], raw: str, expected: float | None
) -> None:
    from servicekit.config import ConfigError

    from gateway.settings import Settings

    environ = {**env, "GATEWAY_CONFIG_RELOAD_INTERVAL": raw}
    if expected is None:
        with pytest.raises(ConfigError, match="GATEWAY_CONFIG_RELOAD_INTERVAL"):
            Settings.from_env(environ)
    else:
        assert Settings.from_env(environ).gateway_config_reload_interval == expected


async def test_sighup_wakes_the_reloader_and_keeps_the_handler_before_it() -> None:
    import signal

    from gateway.app import on_sighup

    seen: list[str] = []
    # a handler already there, as servicekit.tls installs for a certificate reload in place
    before = signal.signal(signal.SIGHUP, lambda signum, frame: seen.append("certificate"))
    try:
        undo = on_sighup(lambda: seen.append("policy"))
        assert undo is not None
        os.kill(os.getpid(), signal.SIGHUP)
        await _until(lambda: len(seen) == 2, 2.0)
        assert sorted(seen) == ["certificate", "policy"]
        undo()
        assert signal.getsignal(signal.SIGHUP) is not signal.SIG_DFL  # the one before is back
    finally:
        signal.signal(signal.SIGHUP, before)
