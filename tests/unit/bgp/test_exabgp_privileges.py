"""bgp.exabgp.privileges: which user ExaBGP runs as, the capability sets it keeps, and the run directory's
modes. The drop itself is exercised for real in a child process (these tests run as root; they are skipped
otherwise), since a fake could not show what the kernel leaves the process holding."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from bgp.exabgp.channel import ApiChannel
from bgp.exabgp.privileges import (
    CAP_NET_BIND_SERVICE,
    DROP_ENV,
    ExaBGPUser,
    PrivilegeError,
    capabilities_to_drop,
    capability_mask,
    choose_exabgp_user,
    config_file_access,
    exabgp_user_problem,
    parse_drop_setting,
    prepare_run_dir,
    resolve_exabgp_user,
    unreachable,
)
from bgp.exabgp.supervisor import ExaBGPSupervisor

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")


@pytest.fixture
def traversable_dir():
    """A directory every user may enter (pytest's tmp_path sits under a root-only one), removed after."""
    path = Path(tempfile.mkdtemp(prefix="calico-bgp-priv-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def passwd(name, uid, gid):
    return pwd.struct_passwd((name, "x", uid, gid, "", "/", "/bin/false"))


USERS = {
    "nobody": passwd("nobody", 65534, 65534),
    "bgp": passwd("bgp", 990, 991),
    "toor": passwd("toor", 0, 0),
}


def lookup(name):
    return USERS[name]


@pytest.mark.parametrize(
    "name, explicit, expected",
    [
        (None, True, None),
        ("", True, None),
        ("root", True, None),
        (" root ", True, None),
        ("toor", True, None),  # uid 0 under another name: nothing to drop
        ("nobody", False, ExaBGPUser("nobody", 65534, 65534)),
        ("bgp", True, ExaBGPUser("bgp", 990, 991)),
    ],
)
def test_resolve_user(name, explicit, expected):
    assert resolve_exabgp_user(name, explicit=explicit, lookup=lookup) == expected


def test_a_missing_default_user_keeps_root_with_a_warning_and_a_missing_named_one_is_an_error(caplog):
    with caplog.at_level(logging.WARNING, logger="bgp.exabgp.privileges"):
        assert resolve_exabgp_user("nobody", explicit=False, lookup=lambda name: USERS["missing"]) is None
    assert "user 'nobody' does not exist: ExaBGP runs as root" in caplog.text
    with pytest.raises(PrivilegeError, match="--exabgp-user 'bpg': no such user"):
        resolve_exabgp_user("bpg", lookup=lookup)


@pytest.mark.parametrize(
    "value, expected",
    [("", None), ("65534:65534", (65534, 65534)), ("990:0", (990, 0))],
)
def test_parse_drop_setting(value, expected):
    assert parse_drop_setting(value) == expected


@pytest.mark.parametrize("value", ["0:0", "65534", "a:b", "-1:5", "65534:", ":65534", "١:٢", "1:2:3"])
def test_parse_drop_setting_refuses(value):
    with pytest.raises(PrivilegeError, match=DROP_ENV):
        parse_drop_setting(value)


def test_capability_sets():
    assert capability_mask([CAP_NET_BIND_SERVICE]) == 0x400
    assert capability_mask([]) == 0
    dropped = capabilities_to_drop(40)
    assert CAP_NET_BIND_SERVICE not in dropped and len(dropped) == 40 and max(dropped) == 40
    assert capabilities_to_drop(40, keep=()) == list(range(41))


def test_config_file_access():
    assert config_file_access(None) == {"mode": 0o600, "group": None}
    assert config_file_access(ExaBGPUser("bgp", 990, 991)) == {"mode": 0o640, "group": 991}


# A child that drops, then reports what the kernel says it holds and what it can still do.
PROBE = r"""
import json, os, socket, subprocess, sys
from bgp.exabgp.privileges import drop_privileges, KEPT_CAPABILITIES
uid, gid, keep, address = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
drop_privileges(uid, gid, KEPT_CAPABILITIES if keep == "keep" else ())
status = dict(line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\t" in line)
s = socket.socket()
try:
    s.bind((address, 179))
    bind = "ok"
except OSError as exc:
    bind = exc.strerror
child = subprocess.run(["grep", "-E", "^Cap(Eff|Prm)", "/proc/self/status"], capture_output=True, text=True)
try:
    open("/etc/shadow").close()
    shadow = "readable"
except OSError as exc:
    shadow = exc.strerror
print(json.dumps({k: status[k].strip() for k in ("Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff",
      "CapBnd", "CapAmb", "NoNewPrivs")} | {"bind": bind, "child": child.stdout.split(), "shadow": shadow}))
"""


def probe(keep: str) -> dict:
    address = f"127.{secrets.randbelow(200) + 20}.{secrets.randbelow(250) + 1}.{secrets.randbelow(250) + 1}"
    out = subprocess.run(
        [sys.executable, "-c", PROBE, "65534", "65534", keep, address],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout)


@as_root
def test_the_drop_leaves_only_net_bind_service_and_the_process_can_bind_port_179():
    got = probe("keep")
    assert got["Uid"].split() == ["65534"] * 4 and got["Gid"].split() == ["65534"] * 4
    assert got["Groups"] == ""
    kept = 1 << CAP_NET_BIND_SERVICE
    assert int(got["CapEff"], 16) == int(got["CapPrm"], 16) == int(got["CapBnd"], 16) == kept
    assert int(got["CapInh"], 16) == int(got["CapAmb"], 16) == 0
    assert got["NoNewPrivs"] == "1"
    assert got["bind"] == "ok"
    # What ExaBGP starts (its API bridge) holds no capability at all.
    assert got["child"] == ["CapPrm:", "0000000000000000", "CapEff:", "0000000000000000"]
    assert got["shadow"] == "Permission denied"


@as_root
def test_without_the_capability_port_179_is_refused():
    """The control for the test above: the bind works because of the kept capability, not by accident."""
    got = probe("none")
    assert int(got["CapEff"], 16) == int(got["CapBnd"], 16) == 0
    assert got["bind"] == "Permission denied"


@as_root
async def test_the_run_directory_lets_the_exabgp_user_reach_the_api_socket_and_its_config_only(
    traversable_dir,
):
    user = ExaBGPUser("nobody", 65534, 65534)
    run_dir = traversable_dir / "run"
    run_dir.mkdir()
    config = run_dir / "exabgp.conf"
    config.write_text('md5-password "czNjcmV0";\n')
    config.chmod(0o644)  # as an earlier version left it; unchanged bytes are not rewritten, so start fixes it
    (run_dir / "ctl.sock").write_text("")
    (run_dir / "ctl.sock").chmod(0o600)
    channel = ApiChannel(run_dir / "api.sock", on_line=lambda line: None, group=user.gid)
    await channel.start()
    try:
        prepare_run_dir(run_dir, user, config)
        assert stat.S_IMODE(run_dir.stat().st_mode) == 0o710 and run_dir.stat().st_gid == user.gid
        assert stat.S_IMODE(config.stat().st_mode) == 0o640 and config.stat().st_gid == user.gid
        assert config.stat().st_uid == 0  # ExaBGP reads it, cannot change it
        api = (run_dir / "api.sock").stat()
        assert stat.S_IMODE(api.st_mode) == 0o660 and api.st_gid == user.gid
        script = (
            "import os, socket, sys\n"
            "from bgp.exabgp.privileges import drop_privileges\n"
            "drop_privileges(65534, 65534)\n"
            "def attempt(f):\n"
            "    try:\n        f()\n        return 'ok'\n"
            "    except OSError as exc:\n        return exc.strerror\n"
            "d = sys.argv[1]\n"
            "print('|'.join([\n"
            "    attempt(lambda: socket.socket(socket.AF_UNIX).connect(d + '/api.sock')),\n"
            "    attempt(lambda: open(d + '/exabgp.conf').read()),\n"
            "    attempt(lambda: open(d + '/ctl.sock').read()),\n"
            "    attempt(lambda: os.listdir(d)),\n"
            "    attempt(lambda: open(d + '/exabgp.conf', 'a')),\n"
            "]))\n"
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, str(run_dir), stdout=asyncio.subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        api_connect, config_read, ctl_read, listing, config_write = out.decode().strip().split("|")
        assert (api_connect, config_read) == ("ok", "ok")
        assert ctl_read == listing == config_write == "Permission denied"
    finally:
        await channel.close()
    prepare_run_dir(run_dir, None, config)  # ExaBGP as root again: nothing for any group
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700 and stat.S_IMODE(config.stat().st_mode) == 0o600
    assert config.stat().st_gid == 0


async def test_the_supervisor_passes_the_drop_to_the_child_only_when_a_user_is_set(tmp_path, monkeypatch):
    """What ``bgp.exabgp.launch`` receives: a stand-in child prints its environment's drop setting."""
    monkeypatch.setenv(DROP_ENV, "1:1")  # one inherited from our own environment never reaches the child
    monkeypatch.setenv("ETCD_PASSWORD", "etcd-secret")  # nor do our etcd credentials
    printer = tmp_path / "child.py"
    printer.write_text(
        f"import os; print('drop=' + os.environ.get({DROP_ENV!r}, 'none'),"
        " sorted(k for k in os.environ if k.startswith('ETCD_')), flush=True)\n"
    )
    seen = {}
    for run_as in (None, ExaBGPUser("nobody", 65534, 65534)):
        monkeypatch.setattr(
            "bgp.exabgp.supervisor.exabgp_command", lambda: [sys.executable, str(printer)]
        )
        supervisor = ExaBGPSupervisor(tmp_path / "exabgp.conf", tmp_path / f"log-{run_as}", run_as=run_as)
        await asyncio.wait_for(supervisor._run_once(), 30)
        seen[run_as] = (tmp_path / f"log-{run_as}").read_text().strip()
        assert stat.S_IMODE((tmp_path / f"log-{run_as}").stat().st_mode) == 0o600
    assert seen == {None: "drop=none []", ExaBGPUser("nobody", 65534, 65534): "drop=65534:65534 []"}


TREE = {
    "/": (0, 0, 0o755),
    "/root": (0, 0, 0o700),
    "/srv": (0, 65534, 0o750),
    "/home": (0, 0, 0o755),
    "/home/n": (65534, 1, 0o700),
    "/home/m": (1000, 65534, 0o705),  # its group is denied even though others may enter
    "/usr": (0, 0, 0o755),
    "/usr/bin": (0, 0, 0o755),
    "/usr/bin/python3": (0, 0, 0o755),
    "/usr/bin/secret-tool": (0, 0, 0o750),
}


def fake_stat(path):
    if str(path) not in TREE:
        raise FileNotFoundError(path)
    uid, gid, mode = TREE[str(path)]
    return os.stat_result((stat.S_IFDIR | mode, 0, 0, 2, uid, gid, 0, 0, 0, 0))


@pytest.mark.parametrize(
    "path, need, expected",
    [
        ("/root/run/calico-bgp", 0o1, "user nobody cannot enter /root (mode 0700)"),
        ("/root", 0o1, "user nobody cannot enter /root (mode 0700)"),
        ("/home/m/run", 0o1, "user nobody cannot enter /home/m (mode 0705)"),
        ("/srv/calico-bgp", 0o1, ""),  # through its group
        ("/home/n/run", 0o1, ""),  # its own directory
        ("/var/run/calico-bgp", 0o1, ""),  # not there yet: ours to create
        ("/usr/bin/python3", 0o5, ""),
        ("/usr/bin/secret-tool", 0o5, "user nobody cannot use /usr/bin/secret-tool (mode 0750)"),
    ],
)
def test_what_the_exabgp_user_cannot_reach_is_named(path, need, expected):
    assert unreachable(Path(path), ExaBGPUser("nobody", 65534, 65534), need, fake_stat) == expected


def test_exabgp_user_problem_checks_the_interpreter_and_the_run_directory(tmp_path):
    user = ExaBGPUser("nobody", 65534, 65534)
    everything_open = lambda path: os.stat_result((stat.S_IFDIR | 0o755, 0, 0, 2, 0, 0, 0, 0, 0, 0))  # noqa: E731
    assert exabgp_user_problem(user, tmp_path / "run", everything_open) == ""
    interpreter = os.path.realpath(sys.executable)

    def closed_interpreter(path):
        mode = 0o700 if str(path) == interpreter else 0o755
        return os.stat_result((stat.S_IFREG | mode, 0, 0, 1, 0, 0, 0, 0, 0, 0))

    assert exabgp_user_problem(user, tmp_path / "run", closed_interpreter) == (
        f"user nobody cannot use {interpreter} (mode 0700)"
    )

    def closed_run_dir(path):
        mode = 0o700 if path == tmp_path else 0o755
        return os.stat_result((stat.S_IFDIR | mode, 0, 0, 2, 0, 0, 0, 0, 0, 0))

    assert exabgp_user_problem(user, tmp_path / "run", closed_run_dir) == (
        f"user nobody cannot enter {tmp_path} (mode 0700)"
    )


def test_choose_exabgp_user_falls_back_to_root_only_for_the_default(tmp_path, caplog):
    def closed(path):
        mode = 0o700 if str(path) == "/" else 0o755
        return os.stat_result((stat.S_IFDIR | mode, 0, 0, 2, 0, 0, 0, 0, 0, 0))

    def open_(path):
        return os.stat_result((stat.S_IFDIR | 0o755, 0, 0, 2, 0, 0, 0, 0, 0, 0))

    nobody = ExaBGPUser("nobody", 65534, 65534)
    assert choose_exabgp_user(None, tmp_path, lookup, open_) == nobody
    assert choose_exabgp_user("bgp", tmp_path, lookup, open_) == ExaBGPUser("bgp", 990, 991)
    assert choose_exabgp_user("root", tmp_path, lookup, closed) is None
    with caplog.at_level(logging.WARNING, logger="bgp.exabgp.privileges"):
        assert choose_exabgp_user(None, tmp_path, lookup, closed) is None
    assert "ExaBGP runs as root: user nobody cannot enter / (mode 0700) (set --exabgp-user)" in caplog.text
    with pytest.raises(PrivilegeError, match=r"ExaBGP cannot run as bgp: user bgp cannot enter / \(mode"):
        choose_exabgp_user("bgp", tmp_path, lookup, closed)
