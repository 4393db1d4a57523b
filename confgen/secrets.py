"""BGP passwords from a directory laid out like Kubernetes secret volumes: ``<dir>/<secret>/<key>``.

Stage: an input of the confgen loop next to the datastore. Calico reads ``secretKeyRef`` passwords only
through the Kubernetes API, so in etcd mode it has none; we read them from files instead (mount each
secret as a volume under ``--secrets-dir`` / ``CALICO_BGP_SECRETS_DIR``). The loop reads the secrets the
model references, hands them to the pure calculation as a plain mapping, and polls their files so a
rotated password re-renders the config.

Owns: reading secret files (``SecretStore``) and noticing that they changed (``fingerprint``). Whether a
value is an acceptable TCP-MD5 password is the calculation's business.

Complicating factors:
- Kubernetes updates a secret volume by swapping a ``..data`` symlink, so the key file's path never
  changes while its target does: change detection stats *through* the symlink (inode, size, mtime),
  and a key that appears or disappears counts as a change too.
- A missing or unreadable secret is an error for the peerings that use it, not for the node: reads never
  raise, they return a ``SecretError`` in place of the value.
- Names and keys are validated by the model (DNS-1123 names, Kubernetes key characters, never ``..``),
  so a path built from them stays inside the directory.
- Secret files are small; anything above ``MAX_SECRET_BYTES`` is refused rather than read.
- A secret file that its group or others may read is still used (refusing it would drop the peering),
  but warned about (``ExposedFiles``), naming the file and its mode, once per file and mode: reads are
  repeated on every render and SIGHUP, the warning is not. A secret volume's ``defaultMode`` (0644 unless
  set) is where such a mode usually comes from. Any other key file the daemon reads can use the same check.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path

from confgen.validate import SecretError, SecretRef

__all__ = ["MAX_SECRET_BYTES", "ExposedFiles", "SecretError", "SecretStore", "Secrets"]

log = logging.getLogger(__name__)

MAX_SECRET_BYTES = 4096
EXPOSED_BITS = 0o044  # readable by group or others

Fingerprint = tuple[tuple[SecretRef, tuple[int, int, int] | None], ...]
Secrets = Mapping[SecretRef, "str | SecretError"]  # what the pure calculation receives


class ExposedFiles:
    """Warns about secret files readable by group or others: once per (file, mode), at most ``limit``
    remembered (then the memory starts again, so a warning may repeat but memory stays bounded)."""

    def __init__(self, limit: int = 1024) -> None:
        self._limit = limit
        self._warned: set[tuple[str, int]] = set()

    def check(self, path: Path | str, mode: int) -> bool:
        """True when ``mode`` lets group or others read the file (warned the first time)."""
        mode = stat.S_IMODE(mode)
        if not mode & EXPOSED_BITS:
            return False
        key = (str(path), mode)
        if key not in self._warned:
            if len(self._warned) >= self._limit:
                self._warned.clear()
            self._warned.add(key)
            who = {0o040: "its group", 0o004: "others", 0o044: "its group and others"}[mode & EXPOSED_BITS]
            log.warning("secret file %s is readable by %s (mode %04o): make it 0600 or 0400", path, who, mode)
        return True


class SecretStore:
    def __init__(self, directory: Path, exposed: ExposedFiles | None = None) -> None:
        self.directory = Path(directory)
        self.exposed = exposed if exposed is not None else ExposedFiles()

    def path(self, ref: SecretRef) -> Path:
        return self.directory / ref.name / ref.key

    def read(self, ref: SecretRef) -> str | SecretError:
        path = self.path(ref)
        try:
            with open(path, "rb") as handle:
                self.exposed.check(path, os.fstat(handle.fileno()).st_mode)  # the file itself, not the link
                data = handle.read(MAX_SECRET_BYTES + 1)
        except FileNotFoundError:
            return SecretError(f"{path} does not exist")
        except OSError as exc:
            return SecretError(f"{path} cannot be read ({exc.strerror or exc.__class__.__name__})")
        if len(data) > MAX_SECRET_BYTES:
            return SecretError(f"{path} is larger than {MAX_SECRET_BYTES} bytes")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return SecretError(f"{path} is not UTF-8 text")

    def read_all(self, refs: Iterable[SecretRef]) -> tuple[Secrets, Fingerprint]:
        """Every referenced secret, plus the fingerprint of the files as they were before reading
        (taken first, so a change during the read is seen by the next poll, never lost)."""
        ordered = sorted(set(refs))
        before = self.fingerprint(ordered)
        return {ref: self.read(ref) for ref in ordered}, before

    def fingerprint(self, refs: Iterable[SecretRef]) -> Fingerprint:
        """(inode, size, mtime) of each referenced file through its symlinks; None when it is missing."""
        result: list[tuple[SecretRef, tuple[int, int, int] | None]] = []
        for ref in sorted(set(refs)):
            try:
                st = os.stat(self.path(ref))
                result.append((ref, (st.st_ino, st.st_size, st.st_mtime_ns)))
            except OSError:
                result.append((ref, None))
        return tuple(result)
