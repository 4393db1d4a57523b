"""bgp.exabgp.check: the config validator the daemon runs is ExaBGP's own check, with its outcomes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bgp.exabgp import check
from confgen.apply import ConfigRejected, ConfigWriter, find_executable
from confgen.intent import NodeIntent, PeerIntent
from confgen.render import render_config

ME = "10.0.0.11"


def rendered() -> str:
    peers = tuple(
        PeerIntent(
            name=f"Mesh_{n}", address=f"10.0.0.{n}", family="ipv4", peer_as=64512, local_as=64512,
            local_address=ME, passive=n > 11, restart_time=120,
        )
        for n in (9, 12, 13)
    )
    intent = NodeIntent(node="node1", router_id=ME, local_as=64512, ipv4_address=ME, peers=peers)
    return render_config(intent, api_run="/bin/cat").text


# Each edit leaves the file's grammar to ExaBGP's parser: a config our renderer would never write.
BROKEN = {
    "unknown keyword": ("    manual-eor true;", "    manual-eor true;\n    no-such-option 1;"),
    "bad peer address": ("neighbor 10.0.0.12 {", "neighbor 10.0.0.312 {"),
    "bad AS number": ("peer-as 64512;", "peer-as sixty;"),
    "unclosed block": ("\n}\n", "\n\n"),
}


def run(argv: list[str], path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*argv, str(path)], capture_output=True, text=True, timeout=60, cwd=path.parent)


@pytest.mark.parametrize("case", [None, *BROKEN])
def test_the_check_decides_as_exabgp_validate_does(tmp_path, case):
    text = rendered()
    if case is not None:
        old, new = BROKEN[case]
        assert old in text
        text = text.replace(old, new, 1)
    path = tmp_path / "exabgp.conf"
    path.write_text(text)
    ours = run(list(check.command()), path)
    theirs = run([find_executable("exabgp"), "validate"], path)
    assert ours.returncode == theirs.returncode == (0 if case is None else 1), (ours, theirs)
    error_lines = [line for line in theirs.stderr.splitlines() if line.startswith("error:")]
    assert [line for line in ours.stderr.splitlines() if line.startswith("error:")] == error_lines
    assert bool(error_lines) == (case is not None)


async def test_the_writer_refuses_what_the_check_refuses(tmp_path):
    dest = tmp_path / "run" / "exabgp.conf"
    writer = ConfigWriter(dest, validate_cmd=check.command())
    assert await writer.write(rendered())
    old, new = BROKEN["bad peer address"]
    with pytest.raises(ConfigRejected, match="not a valid config file"):
        await writer.write(rendered().replace(old, new))
    assert dest.read_text() == rendered()


def test_the_command_runs_this_interpreter():
    assert check.command() == (sys.executable, "-m", "bgp.exabgp.check")
