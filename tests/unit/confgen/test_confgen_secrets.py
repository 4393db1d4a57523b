"""The secrets directory: reading <dir>/<secret>/<key>, failures as values, and change detection that
survives Kubernetes' symlink-swap updates."""

from __future__ import annotations

import logging
import os

import pytest

from confgen.secrets import MAX_SECRET_BYTES, ExposedFiles, SecretStore
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


def exposure_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "confgen.secrets"]


@pytest.mark.parametrize(
    "mode, who",
    [
        (0o600, None),
        (0o400, None),
        (0o700, None),
        (0o620, None),
        (0o640, "its group"),
        (0o604, "others"),
        (0o644, "its group and others"),
        (0o444, "its group and others"),
    ],
)
def test_a_secret_readable_by_group_or_others_is_used_and_warned_about_once(tmp_path, caplog, mode, who):
    write(tmp_path, REF, b"s3cret")
    path = tmp_path / "bgp-secrets" / "tor"
    path.chmod(mode)
    store = SecretStore(tmp_path)
    with caplog.at_level(logging.WARNING, logger="confgen.secrets"):
        for _ in range(3):
            assert store.read(REF) == "s3cret"  # still used: refusing it would drop the peering
    warning = f"secret file {path} is readable by {who} (mode {mode:04o}): make it 0600 or 0400"
    expected = [] if who is None else [warning]
    assert exposure_warnings(caplog) == expected
    assert "s3cret" not in caplog.text


def test_the_mode_checked_is_the_files_behind_kubernetes_symlinks_and_a_new_mode_warns_again(
    tmp_path, caplog
):
    # <dir>/<secret>/tor -> ..data/tor, ..data -> ..2024_01 (how the kubelet lays out a secret volume)
    volume = tmp_path / "bgp-secrets"
    (volume / "..2024_01").mkdir(parents=True)
    target = volume / "..2024_01" / "tor"
    target.write_text("s3cret")
    target.chmod(0o600)
    (volume / "..data").symlink_to("..2024_01")
    (volume / "tor").symlink_to("..data/tor")
    store = SecretStore(tmp_path)
    with caplog.at_level(logging.WARNING, logger="confgen.secrets"):
        assert store.read(REF) == "s3cret"
        assert exposure_warnings(caplog) == []  # the link's own mode (0777) is not the file's
        target.chmod(0o640)
        store.read(REF)
        target.chmod(0o644)
        store.read(REF)
        store.read(REF)
    assert [m.split("(mode ")[1][:4] for m in exposure_warnings(caplog)] == ["0640", "0644"]


def test_exposure_memory_is_bounded():
    exposed = ExposedFiles(limit=2)
    assert [exposed.check(f"/s/{i}", 0o644) for i in range(5)] == [True] * 5
    assert len(exposed._warned) <= 2
