"""Who ExaBGP runs as: an unprivileged user holding CAP_NET_BIND_SERVICE and nothing else.

Stage: the BGP engine's process lifecycle. The daemon resolves the user (``resolve_exabgp_user``) and
prepares the files ExaBGP must reach; ``bgp.exabgp.launch`` drops to that user in the child, before
ExaBGP's code runs (``drop_privileges``).

Owns: the choice of user, the capability sets of the ExaBGP process, and the ownership and modes of the
run directory's shared files (``EXABGP_CONFIG_MODE``, ``API_SOCKET_MODE``, ``RUN_DIR_MODE``).

Why: ExaBGP parses every byte a peer sends; it should not hold root while doing so. What each part of BGP
needs on Linux, and where it happens:
- Listening on port 179 (< 1024): CAP_NET_BIND_SERVICE, kept in ExaBGP's effective set. Outgoing
  connections bind the local address with port 0 and need nothing.
- TCP-MD5 (``setsockopt(TCP_MD5SIG)`` on ExaBGP's own listening and session sockets): no capability; the
  kernel lets a process key its own sockets. What MD5 needs is that ExaBGP can read its config, where the
  keys are: ``exabgp.conf`` is ``root:<the user's primary group>`` mode 0640, so ExaBGP reads it but
  cannot change it, and no other user reads it. The group should be the user's own: ``nobody``'s group
  ``nogroup`` is shared by every service that runs as nobody, so a production node should name a
  dedicated user (``--exabgp-user``).
- TTL security (GTSM): the nftables table lives in the daemon (``bgp.gtsm``) and needs CAP_NET_ADMIN
  there, not in ExaBGP. ExaBGP's own ``outgoing-ttl`` (``IP_TTL`` 255, rendered for GTSM sessions) and
  ``incoming-ttl`` (``IP_MINTTL``, not rendered: ``bgp.gtsm`` says why) need no capability.
- ``source-interface`` (SO_BINDTODEVICE) would need CAP_NET_RAW; the renderer never emits it.
- The API bridge (ExaBGP's child) connects to the daemon's socket ``api.sock``: ``root:<group>`` mode
  0660 in a run directory ``root:<group>`` mode 0710 (the group may enter but not list it; ``ctl.sock``
  and the log stay root's). The daemon still checks that each connection comes from the running ExaBGP's
  own child (``ExaBGPSupervisor.accept_api``).

Complicating factors:
- The drop happens in the child with plain syscalls (``setpriv``'s job, without depending on it): the
  bounding set loses every other capability while we are still root (that needs CAP_SETPCAP), then
  PR_SET_KEEPCAPS carries the permitted set across ``setresuid``, then ``capset`` leaves only
  CAP_NET_BIND_SERVICE permitted and effective, with empty inheritable and ambient sets, so the bridge
  ExaBGP spawns gets no capability at all. PR_SET_NO_NEW_PRIVS then closes setuid binaries to both.
- The kernel clears PR_SET_PDEATHSIG when the effective uid changes, so ``launch`` drops privileges
  *before* it sets the parent-death signal.
- ExaBGP is Python: the unprivileged user must reach our interpreter, its standard library, ExaBGP's and
  our packages, and the run directory. A Python under a root-only home (pyenv in /root) is out of its
  reach; ``exabgp_user_problem`` names the first obstacle before anything starts.
- The default, ``nobody``, is used when it exists and can run ExaBGP here; otherwise ExaBGP stays root with
  a warning saying why. A named user that does not exist or cannot run ExaBGP is an error. ``root`` (or an
  empty value) keeps ExaBGP root.
"""

from __future__ import annotations

import ctypes
import logging
import os
import pwd
import sys
import sysconfig
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

log = logging.getLogger(__name__)

DEFAULT_EXABGP_USER = "nobody"
DROP_ENV = "CALICO_BGP_EXABGP_DROP"  # "uid:gid", read (and removed) by bgp.exabgp.launch

CAP_NET_BIND_SERVICE = 10
CAP_NET_ADMIN = 12
KEPT_CAPABILITIES = (CAP_NET_BIND_SERVICE,)

EXABGP_CONFIG_MODE = 0o640  # root:<group>: ExaBGP reads its config (MD5 keys included), nobody else
API_SOCKET_MODE = 0o660  # root:<group>: the bridge connects
RUN_DIR_MODE = 0o710  # root:<group>: the group may enter, not list
ROOT_ONLY_MODE = 0o600  # the config when ExaBGP runs as root

# prctl(2) and capget(2)/capset(2) constants (linux/prctl.h, linux/capability.h)
PR_SET_KEEPCAPS = 8
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class PrivilegeError(Exception):
    """The user cannot be used, or a step of dropping privileges failed (message names which)."""


@dataclass(frozen=True)
class ExaBGPUser:
    name: str
    uid: int
    gid: int

    @property
    def drop_setting(self) -> str:
        return f"{self.uid}:{self.gid}"


def resolve_exabgp_user(
    name: str | None, *, explicit: bool = True, lookup: Callable[[str], pwd.struct_passwd] = pwd.getpwnam
) -> ExaBGPUser | None:
    """The user ExaBGP runs as; None keeps it root. ``explicit`` is False for the built-in default, which
    may be absent (then: root, with a warning); a user the operator named must exist."""
    name = (name or "").strip()
    if name in ("", "root"):
        return None
    try:
        entry = lookup(name)
    except KeyError:
        if not explicit:
            log.warning("user %r does not exist: ExaBGP runs as root (set --exabgp-user)", name)
            return None
        raise PrivilegeError(f"--exabgp-user {name!r}: no such user") from None
    if entry.pw_uid == 0:
        return None  # another name for root: nothing to drop
    return ExaBGPUser(name, entry.pw_uid, entry.pw_gid)


def parse_drop_setting(value: str) -> tuple[int, int] | None:
    """``"uid:gid"`` from ``DROP_ENV``; None for an empty value. Anything else is a ``PrivilegeError``."""
    if not value:
        return None
    uid, sep, gid = value.partition(":")
    if not sep or not uid.isdigit() or not gid.isdigit() or not uid.isascii() or not gid.isascii():
        raise PrivilegeError(f"{DROP_ENV}={value!r} is not uid:gid")
    if int(uid) == 0:
        raise PrivilegeError(f"{DROP_ENV}={value!r}: uid 0 is not a drop")
    return int(uid), int(gid)


def capability_mask(capabilities: Iterable[int]) -> int:
    mask = 0
    for cap in capabilities:
        mask |= 1 << cap
    return mask


def capabilities_to_drop(last_cap: int, keep: Iterable[int] = KEPT_CAPABILITIES) -> list[int]:
    """Every capability number up to ``last_cap`` (``/proc/sys/kernel/cap_last_cap``) except ``keep``."""
    kept = set(keep)
    return [cap for cap in range(last_cap + 1) if cap not in kept]


def _last_cap() -> int:
    try:
        return int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        return 63  # dropping a capability the kernel does not know fails with EINVAL, which we skip


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def drop_privileges(uid: int, gid: int, keep: Iterable[int] = KEPT_CAPABILITIES) -> None:
    """Become ``uid:gid`` (no supplementary groups) holding only ``keep`` (permitted and effective).
    Must run as root, in a single-threaded process, before anything untrusted. Raises ``PrivilegeError``."""
    libc = ctypes.CDLL(None, use_errno=True)
    keep = tuple(keep)

    def call(what: str, result: int) -> None:
        if result != 0:
            errno = ctypes.get_errno()
            raise PrivilegeError(f"dropping privileges: {what} failed: {os.strerror(errno)}")

    for cap in capabilities_to_drop(_last_cap(), keep):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() != 22:  # EINVAL: unknown cap
            call(f"PR_CAPBSET_DROP {cap}", -1)
    call("PR_SET_KEEPCAPS", libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0))
    try:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    except OSError as exc:
        raise PrivilegeError(f"dropping privileges to {uid}:{gid}: {exc.strerror}") from None
    mask = capability_mask(keep)
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    data[0].effective = data[0].permitted = mask & 0xFFFFFFFF
    data[1].effective = data[1].permitted = mask >> 32
    call("capset", libc.capset(ctypes.byref(header), data))
    call("PR_SET_KEEPCAPS 0", libc.prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0))
    # Ambient capabilities exist since Linux 4.3; an older kernel has none to clear (EINVAL).
    if libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 and ctypes.get_errno() != 22:
        call("PR_CAP_AMBIENT_CLEAR_ALL", -1)
    call("PR_SET_NO_NEW_PRIVS", libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))


def _allowed(st: os.stat_result, user: ExaBGPUser, bits: int) -> bool:
    """Would ``user`` get ``bits`` (0o1 enter/execute, 0o4 read) on this file? Owner, group or others."""
    if st.st_uid == user.uid:
        return st.st_mode & (bits << 6) == bits << 6
    if st.st_gid == user.gid:
        return st.st_mode & (bits << 3) == bits << 3
    return st.st_mode & bits == bits


def unreachable(
    path: Path, user: ExaBGPUser, need: int = 0o1, stat_of: Callable[[Path], os.stat_result] = os.stat
) -> str:
    """Why ``user`` could not use ``path`` (every existing ancestor entered, then ``need`` on the path
    itself when it exists), or "". Missing parts are ours to create, root's and enterable."""
    path = Path(path).absolute()
    for directory in [*reversed(path.parents), path]:
        try:
            st = stat_of(directory)
        except FileNotFoundError:
            break
        bits = need if directory == path else 0o1
        if not _allowed(st, user, bits):
            verb = "enter" if bits == 0o1 else "use"
            return f"user {user.name} cannot {verb} {directory} (mode {st.st_mode & 0o7777:04o})"
    return ""


def exabgp_user_problem(user: ExaBGPUser, run_dir: Path, stat_of=os.stat) -> str:
    """Why ExaBGP could not run as ``user`` here, or "": it runs our interpreter (and its standard
    library and packages) and reads the run directory. A Python installed under a root-only home (pyenv in
    /root) is the usual reason; a system or container Python is reachable."""
    import exabgp

    import bgp

    interpreter = Path(os.path.realpath(sys.executable))
    checks = [
        (interpreter, 0o5),
        (Path(sysconfig.get_paths()["stdlib"]), 0o5),
        (Path(os.path.dirname(exabgp.__file__)), 0o5),
        (Path(list(bgp.__path__)[0]), 0o5),
        (Path(run_dir), 0o1),
    ]
    for path, need in checks:
        if problem := unreachable(path, user, need, stat_of):
            return problem
    return ""


def choose_exabgp_user(
    name: str | None, run_dir: Path, lookup=pwd.getpwnam, stat_of=os.stat
) -> ExaBGPUser | None:
    """``--exabgp-user``: None (not given) tries ``DEFAULT_EXABGP_USER`` and falls back to root with a
    warning when it is missing or cannot run ExaBGP here; a named user that cannot is a ``PrivilegeError``."""
    given = name is not None
    user = resolve_exabgp_user(name if given else DEFAULT_EXABGP_USER, explicit=given, lookup=lookup)
    if user is None or not (problem := exabgp_user_problem(user, run_dir, stat_of)):
        return user
    if given:
        raise PrivilegeError(f"ExaBGP cannot run as {user.name}: {problem}")
    log.warning("ExaBGP runs as root: %s (set --exabgp-user)", problem)
    return None


class ConfigFileAccess(TypedDict):
    """``ConfigWriter``'s keyword arguments for the config's owner group and mode."""

    mode: int
    group: int | None  # None: the file keeps the writing process's group (root's)


def config_file_access(user: ExaBGPUser | None) -> ConfigFileAccess:
    """``ConfigWriter``'s mode and group for ExaBGP's config when ExaBGP runs as ``user``."""
    if user is None:
        return {"mode": ROOT_ONLY_MODE, "group": None}
    return {"mode": EXABGP_CONFIG_MODE, "group": user.gid}


def prepare_run_dir(run_dir: Path, user: ExaBGPUser | None, config: Path) -> None:
    """The run directory's and an existing config's owner and mode for ``user`` (root-only when ExaBGP
    runs as root). The config is rewritten only when its bytes change, so a file left by a run with
    another user is adjusted here."""
    gid = 0 if user is None else user.gid
    os.chown(run_dir, 0, gid)
    os.chmod(run_dir, 0o700 if user is None else RUN_DIR_MODE)
    access = config_file_access(user)
    try:
        os.chown(config, 0, gid)
        os.chmod(config, access["mode"])
    except FileNotFoundError:
        pass
