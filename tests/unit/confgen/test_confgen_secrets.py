"""The secrets directory: reading <dir>/<secret>/<key>, failures as values, and change detection that
survives Kubernetes' symlink-swap updates."""

from __future__ import annotations

import os

from confgen.secrets import MAX_SECRET_BYTES, SecretStore
from confgen.validate import SecretError, SecretRef

REF = SecretRef("bgp-secrets", "tor")


def write(directory, ref, data: bytes):
    (directory / ref.name).mkdir(exist_ok=True)
    (directory / ref.name / ref.key).write_bytes(data)


def test_read(tmp_path):
    write(tmp_path, REF, b"s3cret")
    assert SecretStore(tmp_path).read(REF) == "s3cret"


def test_failures_are_values_naming_the_file(tmp_path):
    store = SecretStore(tmp_path)
    assert store.read(REF) == SecretError(f"{tmp_path}/bgp-secrets/tor does not exist")
    write(tmp_path, REF, b"x" * (MAX_SECRET_BYTES + 1))
    assert store.read(REF) == SecretError(f"{tmp_path}/bgp-secrets/tor is larger than 4096 bytes")
    write(tmp_path, REF, b"\xff\xfe")
    assert store.read(REF) == SecretError(f"{tmp_path}/bgp-secrets/tor is not UTF-8 text")
    (tmp_path / "bgp-secrets" / "tor").unlink()
    (tmp_path / "bgp-secrets" / "tor").mkdir()
    assert "cannot be read" in str(store.read(REF))


def test_read_all_returns_values_and_the_fingerprint_taken_first(tmp_path):
    write(tmp_path, REF, b"one")
    other = SecretRef("bgp-secrets", "missing")
    values, fingerprint = SecretStore(tmp_path).read_all([REF, other, REF])
    assert values == {REF: "one", other: SecretError(f"{tmp_path}/bgp-secrets/missing does not exist")}
    assert [ref for ref, _ in fingerprint] == [other, REF]  # sorted, deduplicated
    assert dict(fingerprint)[other] is None


def test_a_kubernetes_style_update_changes_the_fingerprint(tmp_path):
    # A secret volume: <key> -> ..data/<key>, ..data -> ..<timestamp>; updates swap ..data atomically.
    volume = tmp_path / "bgp-secrets"
    (volume / "..2024_01").mkdir(parents=True)
    (volume / "..2024_01" / "tor").write_text("old")
    os.symlink("..2024_01", volume / "..data")
    os.symlink("..data/tor", volume / "tor")
    store = SecretStore(tmp_path)
    before = store.fingerprint([REF])
    assert store.read(REF) == "old"

    (volume / "..2024_02").mkdir()
    (volume / "..2024_02" / "tor").write_text("new")  # same size as before: only the inode differs
    os.symlink("..2024_02", volume / "..data_tmp")
    os.replace(volume / "..data_tmp", volume / "..data")
    assert store.fingerprint([REF]) != before
    assert store.read(REF) == "new"


def test_appearing_and_disappearing_files_change_the_fingerprint(tmp_path):
    store = SecretStore(tmp_path)
    empty = store.fingerprint([REF])
    write(tmp_path, REF, b"x")
    present = store.fingerprint([REF])
    assert present != empty
    (tmp_path / "bgp-secrets" / "tor").unlink()
    assert store.fingerprint([REF]) == empty
