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
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from confgen.validate import SecretError, SecretRef

__all__ = ["MAX_SECRET_BYTES", "SecretError", "SecretStore", "Secrets"]

MAX_SECRET_BYTES = 4096

Fingerprint = tuple[tuple[SecretRef, tuple[int, int, int] | None], ...]
Secrets = Mapping[SecretRef, "str | SecretError"]  # what the pure calculation receives


class SecretStore:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def path(self, ref: SecretRef) -> Path:
        return self.directory / ref.name / ref.key

    def read(self, ref: SecretRef) -> str | SecretError:
        path = self.path(ref)
        try:
            with open(path, "rb") as handle:
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
        result = []
        for ref in sorted(set(refs)):
            try:
                st = os.stat(self.path(ref))
                result.append((ref, (st.st_ino, st.st_size, st.st_mtime_ns)))
            except OSError:
                result.append((ref, None))
        return tuple(result)
