"""Install a rendered config file: only when it changed, only after ExaBGP's check accepted it, atomically.

Stage: last step of the config dataplane (render -> write -> the daemon's reload). confd's
check_cmd/rename sequence, for ExaBGP.

Owns: the destination file. Nothing else writes it.

Complicating factors:
- Identical bytes must be a true no-op (no write, no mtime change): the loop reloads ExaBGP only on
  ``True``, and a reload that changes nothing still costs a re-parse and a helper re-spawn.
- The candidate is validated where it will live (a temp file in the destination directory): the
  ``rename`` is then atomic, and relative ``run`` paths resolve the same way for the check as for the
  daemon. A rejected candidate never replaces the last good file; ExaBGP keeps running on that.
- ``exabgp`` is looked up next to ``sys.executable`` first: the daemon runs from a venv whose ``bin`` is
  often not on PATH, and the validator must be the same ExaBGP version that will read the file.
- The file holds TCP-MD5 keys: it is written 0600, or 0640 with the unprivileged ExaBGP's ``group``
  (``bgp.exabgp.privileges``), mode and group set on the temp file before the rename so the keys are
  never readable by anyone else, not even for a moment. The validator's output is logged by the caller,
  so keys are masked in it.
- The validator is a child process; it gets a timeout and is killed if it hangs, so a wedged check
  cannot stall the confgen loop forever.
- The check exists to keep a last good file in force, so the first file (nothing at the destination yet)
  goes in without it unless ``check_first`` asks: it is ExaBGP's own start that reads it next, with the
  same parser, and a refusal there ends that ExaBGP with the reason in its log, which the supervisor
  reports (``bgp.exabgp.supervisor``). The check is an interpreter and a third of ExaBGP's imports, about
  0.2 s of CPU, paid by every node at every start: a quarter of a node's start-up in a large mesh, where
  every node starts at once (bench/results/changes.md). From the second file on every candidate is checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from confgen.redact import config_secrets, redact_config, redact_values

log = logging.getLogger(__name__)


class ConfigRejected(Exception):
    """The validator refused the candidate config; the message carries its output."""


def find_executable(name: str) -> str:
    """``name`` next to the running interpreter (the venv), else from PATH, else ``name`` unchanged."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name) or name


class ConfigWriter:
    def __init__(
        self,
        dest: Path,
        validate_cmd: Sequence[str] | None = ("exabgp", "validate"),
        *,
        mode: int = 0o600,  # the config holds the MD5 keys
        group: int | None = None,  # the group that may read it (``mode`` says how): the unprivileged ExaBGP
        timeout: float = 30.0,
        check_first: bool = False,  # also check a file when there is none at ``dest`` to keep
    ) -> None:
        self.dest = Path(dest)
        if validate_cmd:
            validate_cmd = (find_executable(validate_cmd[0]), *validate_cmd[1:])
        self.validate_cmd = tuple(validate_cmd or ())  # () = no validation (tests of the writer only)
        self.mode = mode
        self.group = group
        self.timeout = timeout
        self.check_first = check_first
        self.checked = False  # whether the last file installed went through the validator

    async def write(self, text: str) -> bool:
        """Install ``text`` if it differs from the file; True when the file changed.

        Raises ``ConfigRejected`` when the validator fails; the destination is then untouched. With no file
        at the destination the validator runs only if ``check_first`` (see the module docstring);
        ``checked`` says afterwards whether it ran.
        """
        data = text.encode()
        current: bytes | None = None
        with contextlib.suppress(FileNotFoundError):
            current = self.dest.read_bytes()
        if current == data:
            return False
        check = bool(self.validate_cmd) and (current is not None or self.check_first)
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=self.dest.parent, prefix=f".{self.dest.name}.", suffix=".tmp")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as tmp_file:
                tmp_file.write(data)
                tmp_file.flush()
                if self.group is not None:
                    os.fchown(tmp_file.fileno(), -1, self.group)
                os.fchmod(tmp_file.fileno(), self.mode)
                os.fsync(tmp_file.fileno())
            if check:
                await self._validate(tmp, config_secrets(text))
            os.replace(tmp, self.dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._fsync_dir()
        self.checked = check
        if self.validate_cmd and not check:
            log.info("installed the first ExaBGP config without a separate check: ExaBGP's start checks it")
        return True

    async def _validate(self, candidate: Path, secrets: set[str]) -> None:
        proc = await asyncio.create_subprocess_exec(
            *self.validate_cmd,
            str(candidate),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=self.dest.parent,
        )
        try:
            output, _ = await asyncio.wait_for(proc.communicate(), self.timeout)
        except BaseException:  # timeout or cancellation: do not leave the validator behind
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        if proc.returncode != 0:
            # The message is logged: a validator quoting the offending line must not carry a key there.
            text = redact_values(redact_config(output.decode(errors="replace").strip()), secrets)
            command = " ".join(self.validate_cmd)
            raise ConfigRejected(f"{command} rejected the config (rc {proc.returncode}): {text}")

    def _fsync_dir(self) -> None:
        # The rename itself must survive a crash, or a reboot could bring back the old file.
        dir_fd = os.open(self.dest.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
