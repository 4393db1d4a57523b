"""Least privilege in a live 2-node lab: ExaBGP runs as ``nobody`` with CAP_NET_BIND_SERVICE alone, its
API bridge with no capability, the daemon as root with CAP_NET_ADMIN; sessions come up plain, then with
TCP-MD5 and TTL security (nftables) together; an ``nft flush ruleset`` in a node is undone by its daemon
within ``bgp.gtsm.CHECK_INTERVAL`` (counted, logged once) while the session stays up; and no password,
plain or base64, appears in any log of the lab.

The daemons run from a Python that ``nobody`` can reach (``_reachable_python`` says why that matters).
Reads /proc/<pid>/status of the processes the lab started; kills nothing itself (the lab fixture removes
everything in every outcome).
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from bgp.exabgp.privileges import (
    CAP_NET_ADMIN,
    CAP_NET_BIND_SERVICE,
    exabgp_user_problem,
    resolve_exabgp_user,
)
from bgp.gtsm import CHECK_INTERVAL, TABLE
from labs import lab as labs_lab
from labs import netns, ops, process, report, state

pytestmark = [pytest.mark.lab, pytest.mark.netns, pytest.mark.etcd]

NODES = {"node1": "10.0.0.11", "node2": "10.0.0.12"}
PASSWORD = f"pw-{secrets.token_hex(6)}"
ENCODED = base64.b64encode(PASSWORD.encode()).decode()
NOBODY = "65534"


def _reachable_python(tmp: Path) -> str:
    """The bin directory of a Python that ``nobody`` can run, with this venv's packages.

    ExaBGP runs our interpreter; one installed under a root-only home (pyenv in /root, as on the project's
    build machines) is out of an unprivileged user's reach, and the daemon then keeps ExaBGP root (and
    says why). A system Python of the same minor version (the node image's kind) is: a venv of it that
    adds this venv's site-packages runs the same code."""
    user = resolve_exabgp_user("nobody")
    assert user is not None
    if not exabgp_user_problem(user, tmp):
        return ops.venv_bin()
    system = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    if not system.exists():
        pytest.skip(f"this venv's Python is out of nobody's reach and there is no {system} to use instead")
    venv = tmp / "venv"
    subprocess.run([str(system), "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    ours = sysconfig.get_paths()["purelib"]
    (site / "calico-bgp-main.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    for tool, module in (("calico-bgp", "bgp.cli"), ("exabgp", "exabgp.application.main")):
        script = venv / "bin" / tool
        script.write_text(f"#!{venv}/bin/python\nimport sys\nfrom {module} import main\nsys.exit(main())\n")
        script.chmod(0o755)
    return str(venv / "bin")


@pytest.fixture(scope="module")
def lab():
    name = f"p{secrets.token_hex(4)}"
    tmp = Path(tempfile.mkdtemp(prefix=f"cbgp-{name}-"))
    tmp.chmod(0o755)
    lines: list[str] = []
    try:
        with pytest.MonkeyPatch.context() as patch:
            bin_dir = _reachable_python(tmp)
            print(f"daemons run from {bin_dir}")
            patch.setattr(ops, "venv_bin", lambda: bin_dir)
            assert labs_lab.up("mesh", 2, name=name, echo=lines.append), "\n".join(lines)
            yield name
    finally:
        labs_lab.down(name)
        shutil.rmtree(tmp, ignore_errors=True)
        assert not netns.list_netns(state.netns_prefix(name))


def _wait(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout:.0f}s: {what}"
        time.sleep(0.2)


def _established(lab: str, peer_type: str | None = None) -> bool:
    """Every node's sessions Established (and of ``peer_type``, when given)."""
    loaded = ops.load(lab)
    for node, ip in NODES.items():
        expected = [other for other in NODES.values() if other != ip]
        try:
            out = ops.status(loaded, loaded.node(node), "-o", "json", timeout=5).stdout
        except subprocess.TimeoutExpired:
            return False
        if not report.sessions_ready(out, expected)[0]:
            return False
        if peer_type is not None and any(p["type"] != peer_type for p in json.loads(out)["peers"]):
            return False
    return True


def _process(lab: str, node: str, marker: str) -> int:
    ns = state.netns_name(lab, node)
    found = [pid for pid in netns.pids(ns) if marker in process.cmdline(pid)]
    assert len(found) == 1, {pid: process.cmdline(pid) for pid in netns.pids(ns)}
    return found[0]


def _creds(pid: int) -> dict[str, str]:
    fields = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {k: v.strip() for k, v in fields.items()}


def _caps(creds: dict[str, str], which: str) -> int:
    return int(creds[which], 16)


def _apply(lab: str, documents: list[dict]) -> None:
    endpoints = ",".join(labs_lab.show(lab)["etcd_endpoints"])
    text = "\n---\n".join(json.dumps(d) for d in documents)
    cmd = [ops.venv_tool("calico-bgp"), "apply", "-f", "-", "--etcd-endpoints", endpoints]
    result = subprocess.run(cmd, input=text, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


def _metric(lab: str, node: str, name: str) -> float | None:
    code = (
        "import urllib.request; "
        "print(urllib.request.urlopen('http://127.0.0.1:9094/metrics', timeout=5).read().decode())"
    )
    out = netns.run_in(state.netns_name(lab, node), [sys.executable, "-c", code], timeout=15).stdout
    match = re.search(rf"^{re.escape(name)} (\S+)$", out, re.MULTILINE)
    return float(match.group(1)) if match else None


def _nft_table(lab: str, node: str) -> str:
    argv = ["nft", "list", "table", "inet", TABLE]
    return netns.run_in(state.netns_name(lab, node), argv, timeout=10).stdout


def test_exabgp_runs_unprivileged_and_sessions_come_up_with_md5_and_ttl_security(lab):
    _wait(lambda: _established(lab), 90, "mesh sessions Established")
    exabgp = {}
    for node in NODES:
        exabgp[node] = _process(lab, node, "bgp.exabgp.launch server")
        creds = _creds(exabgp[node])
        assert creds["Uid"].split() == [NOBODY] * 4 and creds["Gid"].split() == [NOBODY] * 4, creds
        assert creds["Groups"] == ""
        kept = 1 << CAP_NET_BIND_SERVICE
        assert (_caps(creds, "CapEff"), _caps(creds, "CapPrm"), _caps(creds, "CapBnd")) == (kept, kept, kept)
        assert _caps(creds, "CapInh") == _caps(creds, "CapAmb") == 0
        assert creds["NoNewPrivs"] == "1"
        pids = netns.pids(state.netns_name(lab, node))
        relays = [pid for pid in pids if "/api.sock" in process.cmdline(pid)]
        if relays:  # the API relay, socat or the Python bridge (without ExaBGP's api_direct adjustment)
            bridge = _creds(_process(lab, node, "/api.sock"))
            assert bridge["Uid"].split() == [NOBODY] * 4
            assert _caps(bridge, "CapEff") == _caps(bridge, "CapPrm") == 0
        else:  # ExaBGP's own connection to the daemon (bgp.exabgp.tuning_channel): no process of its own
            assert psutil.Process(exabgp[node]).children() == []
        daemon = _creds(_process(lab, node, "node run"))
        assert daemon["Uid"].split() == ["0"] * 4
        assert _caps(daemon, "CapEff") & (1 << CAP_NET_ADMIN)  # netlink routes and nftables
        run_dir = Path(ops.load(lab).node(node).run_dir)
        config = (run_dir / "exabgp.conf").stat()
        assert (config.st_mode & 0o777, config.st_uid, config.st_gid) == (0o640, 0, int(NOBODY))

    # TCP-MD5 and TTL security on the sessions between the two unprivileged ExaBGPs: the mesh off, one
    # selector peering both ways carrying both.
    ops.set_secret(lab, "bgp", "mesh", PASSWORD)
    _apply(
        lab,
        [
            {
                "apiVersion": "projectcalico.org/v3", "kind": "BGPConfiguration",
                "metadata": {"name": "default"},
                "spec": {"nodeToNodeMeshEnabled": False, "asNumber": 64512},
            },
            {
                "apiVersion": "projectcalico.org/v3", "kind": "BGPPeer", "metadata": {"name": "all"},
                "spec": {
                    "nodeSelector": "all()", "peerSelector": "all()", "ttlSecurity": 1,
                    "password": {"secretKeyRef": {"name": "bgp", "key": "mesh"}},
                },
            },
        ],
    )  # fmt: skip

    def secured() -> bool:
        """both nodes' configs carry the key and both run the TTL-security table"""
        for node in NODES:
            run_dir = Path(ops.load(lab).node(node).run_dir)
            if ENCODED not in (run_dir / "exabgp.conf").read_text() or "ttl" not in _nft_table(lab, node):
                return False
        return True

    _wait(secured, 30, "md5-password in both configs and the nftables table in both nodes")
    _wait(lambda: _established(lab, "node specific"), 90, "the new sessions Established, with MD5 and GTSM")
    # The kernel holds the key on the BGP socket ExaBGP opened as nobody (ss shows keys to root only).
    argv = ["ss", "-tni", "state", "established", "( sport = :179 or dport = :179 )"]
    sockets = netns.run_in(state.netns_name(lab, "node1"), argv, timeout=10).stdout
    assert "md5keys:10.0.0.12/32=" in sockets, "no TCP-MD5 key on node1's BGP socket"
    for node in NODES:
        assert _process(lab, node, "bgp.exabgp.launch server") == exabgp[node]  # the same, still unprivileged

    # Someone flushes node1's ruleset: the daemon puts the table back within its check interval.
    before = _nft_table(lab, "node1")
    assert "ip ttl < 255 drop" in before
    flushed = netns.run_in(state.netns_name(lab, "node1"), ["nft", "flush", "ruleset"], timeout=10)
    assert flushed.returncode == 0, flushed.stderr
    started = time.monotonic()
    assert _nft_table(lab, "node1") == ""
    _wait(lambda: _nft_table(lab, "node1") == before, CHECK_INTERVAL + 5, "the nftables table restored")
    took = time.monotonic() - started
    print(f"GTSM table restored {took:.1f}s after the flush (checked every {CHECK_INTERVAL:.0f}s)")
    assert _metric(lab, "node1", "calico_bgp_gtsm_restores_total") == 1.0
    assert _metric(lab, "node2", "calico_bgp_gtsm_restores_total") == 0.0
    assert _established(lab)

    node1_log = Path(ops.load(lab).node("node1").log).read_text()
    assert node1_log.count("was deleted by someone else; restoring it") == 1
    assert "secret file" in node1_log and "is readable by" in node1_log  # the lab writes secrets 0644
    for node in NODES:
        loaded = ops.load(lab).node(node)
        for log in (Path(loaded.log), Path(loaded.run_dir) / "exabgp.log"):
            text = log.read_text()
            assert PASSWORD not in text and ENCODED not in text, f"a password in {log}"
