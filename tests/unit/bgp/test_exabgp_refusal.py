"""ExaBGP refusing its configuration at start: the supervisor says why, in the daemon's log, with the keys
masked, counts it, and starts ExaBGP again at once when a new file is installed (the first config goes in
without a separate check, so ExaBGP's start is where a bad one is found)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

import pytest
from prometheus_client import CollectorRegistry

from bgp.exabgp import supervisor as sup

# ExaBGP 5.0.15's own lines (log.short off: time, pid, source, message) for a refused file at start.
REFUSED = [
    b"11:31:25 10701  configuration   performing reload of exabgp 5.0.15",
    b"11:31:25 10701  configuration   could not load/reload configuration",
    b"11:31:25 10701  configuration   ",
    b"11:31:25 10701  configuration   syntax error in section neighbor",
    b"11:31:25 10701  configuration   line 10: peer-az 64512 ;",
    b"11:31:25 10701  configuration   ",
    b'11:31:25 10701  configuration   invalid keyword "peer-az"',
]


@pytest.mark.parametrize(
    ("lines", "secrets", "reason"),
    [
        (
            REFUSED[2:],
            (),
            'syntax error in section neighbor; line 10: peer-az 64512 ;; invalid keyword "peer-az"',
        ),
        ([], (), ""),
        ([b"   ", b""], (), ""),
        # A line without ExaBGP's columns is kept whole.
        ([b"Traceback (most recent call last):"], (), "Traceback (most recent call last):"),
        # The key as ExaBGP's tokeniser quotes it (no quotes), and as the file holds it.
        (
            [b"11:31:25 1  configuration   line 9: md5-password c2VjcmV0 ;"],
            {"c2VjcmV0"},
            "line 9: md5-password <redacted> ;",
        ),
        (
            [b'11:31:25 1  configuration   line 9: md5-password "c2VjcmV0";'],
            (),
            'line 9: md5-password "<redacted>";',
        ),
    ],
)
def test_refusal_reason(lines, secrets, reason):
    assert sup.refusal_reason(lines, secrets) == reason


FAKE_EXABGP = """#!/bin/sh
# Refuses its configuration (ExaBGP's lines, exit 1) while {refuse} exists; otherwise runs until TERM.
echo start >> {calls}
if [ -e {refuse} ]; then
  printf '%s\\n' {lines}
  exit 1
fi
trap 'exit 0' TERM
while true; do sleep 0.05; done
"""


async def _until(predicate, timeout=5.0):
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


async def test_a_refused_first_config_is_an_error_and_a_new_file_starts_exabgp_at_once(
    tmp_path, monkeypatch, caplog
):
    calls, refuse = tmp_path / "calls", tmp_path / "refuse"
    refuse.touch()
    quoted = " ".join("'" + line.decode() + "'" for line in REFUSED)
    script = tmp_path / "exabgp"
    script.write_text(FAKE_EXABGP.format(calls=calls, refuse=refuse, lines=quoted))
    script.chmod(0o755)
    monkeypatch.setattr(sup, "exabgp_command", lambda: [str(script)])
    config = tmp_path / "exabgp.conf"
    config.write_text("neighbor 10.0.0.12 {\n    peer-az 64512;\n}\n")
    registry = CollectorRegistry()
    s = sup.ExaBGPSupervisor(
        config, tmp_path / "exabgp.log", environment={}, backoff_initial=30.0, registry=registry
    )
    caplog.set_level(logging.INFO, logger=sup.__name__)
    task = asyncio.create_task(s.run())
    try:
        await _until(lambda: any("refused its configuration" in r.getMessage() for r in caplog.records))
        error = next(r for r in caplog.records if "refused its configuration" in r.getMessage())
        assert error.levelno == logging.ERROR
        assert 'invalid keyword "peer-az"' in error.getMessage() and str(config) in error.getMessage()
        assert (
            registry.get_sample_value("calico_bgp_exabgp_restarts_total", {"reason": "config-refused"}) == 1
        )
        assert calls.read_text().count("start") == 1  # waiting out a 30 s backoff
        refuse.unlink()  # confgen installs a new (checked) file and asks for a reload
        s.reload()
        await _until(lambda: calls.read_text().count("start") == 2 and s.pid is not None)
        assert s.starts == 2
        await s.stop(timeout=5)
        await asyncio.wait_for(task, 5)
    finally:
        if s.pid is not None:
            os.kill(s.pid, signal.SIGKILL)
        task.cancel()


async def test_a_crash_that_is_not_a_refusal_is_reported_as_before(tmp_path, monkeypatch, caplog):
    calls = tmp_path / "calls"
    script = tmp_path / "exabgp"
    script.write_text(f"#!/bin/sh\necho start >> {calls}\necho 'some other failure'\nexit 3\n")
    script.chmod(0o755)
    monkeypatch.setattr(sup, "exabgp_command", lambda: [str(script)])
    registry = CollectorRegistry()
    s = sup.ExaBGPSupervisor(
        tmp_path / "exabgp.conf",
        tmp_path / "exabgp.log",
        environment={},
        backoff_initial=30.0,
        registry=registry,
    )
    caplog.set_level(logging.INFO, logger=sup.__name__)
    task = asyncio.create_task(s.run())
    try:
        await _until(lambda: any("exited with 3" in r.getMessage() for r in caplog.records))
        assert not any("refused" in r.getMessage() for r in caplog.records)
        assert registry.get_sample_value("calico_bgp_exabgp_restarts_total", {"reason": "exited"}) == 1
        await s.stop(timeout=5)
        await asyncio.wait_for(task, 5)
    finally:
        task.cancel()
