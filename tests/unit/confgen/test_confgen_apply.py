"""ConfigWriter: no-op on identical bytes, validate-then-rename, nothing left behind on failure."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from confgen.apply import ConfigRejected, ConfigWriter, find_executable

VALID = "process api {\n    run /usr/bin/env true;\n    encoder json;\n}\n"
INVALID = "neighbor 10.0.0.12 {\n    local-as 64512;\n}\n"  # peer-as is mandatory in ExaBGP 5


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


async def test_writes_new_file_atomically(tmp_path):
    dest = tmp_path / "etc" / "exabgp.conf"
    writer = ConfigWriter(dest, validate_cmd=None)
    assert await writer.write(VALID) is True
    assert dest.read_text() == VALID
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600  # it holds the MD5 keys
    assert leftovers(dest.parent) == []


async def test_identical_bytes_touch_nothing(tmp_path):
    dest = tmp_path / "exabgp.conf"
    writer = ConfigWriter(dest, validate_cmd=("/bin/false",))  # would reject anything it is asked about
    dest.write_text(VALID)
    os.utime(dest, ns=(1_000_000_000, 1_000_000_000))
    inode = dest.stat().st_ino
    assert await writer.write(VALID) is False
    assert dest.stat().st_mtime_ns == 1_000_000_000
    assert dest.stat().st_ino == inode
    assert leftovers(tmp_path) == []


async def test_changed_bytes_replace_the_file(tmp_path):
    dest = tmp_path / "exabgp.conf"
    dest.write_text("old\n")
    inode = dest.stat().st_ino
    writer = ConfigWriter(dest, validate_cmd=("/bin/true",), mode=0o600)
    assert await writer.write(VALID) is True
    assert dest.read_text() == VALID
    assert dest.stat().st_ino != inode  # renamed into place, not rewritten in place
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600


async def test_rejection_keeps_the_last_good_file(tmp_path):
    dest = tmp_path / "exabgp.conf"
    dest.write_text(VALID)
    script = tmp_path / "check.sh"
    script.write_text('#!/bin/sh\necho "line 1: nope in $1"\nexit 3\n')
    script.chmod(0o755)
    writer = ConfigWriter(dest, validate_cmd=(str(script),))
    with pytest.raises(ConfigRejected, match=r"rejected the config \(rc 3\): line 1: nope in .*\.tmp"):
        await writer.write(INVALID)
    assert dest.read_text() == VALID
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("earlier", "check_first", "checked"),
    [
        (None, False, False),  # nothing to keep: ExaBGP's start is the check
        (None, True, True),
        (VALID, False, True),  # a last good file to keep: every candidate is checked
        (VALID, True, True),
    ],
)
async def test_the_first_file_is_checked_only_when_asked(tmp_path, earlier, check_first, checked):
    dest = tmp_path / "exabgp.conf"
    if earlier is not None:
        dest.write_text(earlier)
    calls = tmp_path / "calls"
    script = tmp_path / "check.sh"
    script.write_text(f'#!/bin/sh\necho "$1" >> {calls}\nexit 1\n')  # refuses everything it sees
    script.chmod(0o755)
    writer = ConfigWriter(dest, validate_cmd=(str(script),), check_first=check_first)
    if checked:
        with pytest.raises(ConfigRejected):
            await writer.write(INVALID)
        assert (dest.read_text() if dest.exists() else None) == earlier  # untouched, or still absent
    else:
        assert await writer.write(INVALID) is True
        assert dest.read_text() == INVALID and writer.checked is False
    assert calls.exists() == checked
    assert leftovers(tmp_path) == []


async def test_after_an_unchecked_first_file_every_change_is_checked(tmp_path):
    dest = tmp_path / "exabgp.conf"
    writer = ConfigWriter(dest, validate_cmd=("/bin/false",))
    assert await writer.write(VALID) is True and writer.checked is False
    with pytest.raises(ConfigRejected):
        await writer.write(INVALID)
    assert dest.read_text() == VALID


async def test_validator_that_hangs_is_killed(tmp_path):
    dest = tmp_path / "exabgp.conf"
    script = tmp_path / "hang.sh"
    script.write_text("#!/bin/sh\nexec sleep 30\n")
    script.chmod(0o755)
    writer = ConfigWriter(dest, validate_cmd=(str(script),), timeout=0.2, check_first=True)
    with pytest.raises(TimeoutError):
        await writer.write(VALID)
    assert not dest.exists()
    assert leftovers(tmp_path) == []


def test_exabgp_is_found_next_to_the_interpreter():
    assert find_executable("exabgp") == str(Path(sys.executable).parent / "exabgp")
    assert find_executable("sh") in ("/bin/sh", "/usr/bin/sh")
    assert find_executable("no-such-tool-xyz") == "no-such-tool-xyz"


@pytest.mark.exabgp
async def test_real_exabgp_validate(tmp_path):
    dest = tmp_path / "exabgp.conf"
    writer = ConfigWriter(dest, check_first=True)
    assert writer.validate_cmd[0].endswith("/exabgp")
    assert await writer.write(VALID) is True
    with pytest.raises(ConfigRejected, match="peer-as"):
        await writer.write(INVALID)
    assert dest.read_text() == VALID
    assert leftovers(tmp_path) == []
