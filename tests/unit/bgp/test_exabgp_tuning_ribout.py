"""bgp.exabgp.tuning_ribout: ExaBGP's own OutgoingRIB, run with and without the ``ribout_compact``
adjustment on the same routes, answers the same at every step (each run in a child: the adjustment patches
ExaBGP's Cache class for the whole process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bgp.exabgp import tuning

# Announce, ask, resend (route refresh), withdraw, replay after a reconnect, clear: what upstream's readers
# do with the cache, each step described by its visible outcome.
SCENARIO = r"""
import json, sys
from bgp.exabgp import tuning
applied = tuning.apply()
from exabgp.bgp.message import Action
from exabgp.bgp.message.update.attribute import Attributes, LocalPreference, Origin
from exabgp.bgp.message.update.nlri import CIDR, INET
from exabgp.bgp.message.update.nlri.qualifier import PathInfo
from exabgp.protocol.family import AFI, SAFI
from exabgp.protocol.ip import IP
from exabgp.protocol.ip.netmask import NetMask
from exabgp.rib.change import Change
from exabgp.rib.outgoing import OutgoingRIB
from exabgp.logger import log
log.debug = lambda *args, **kwargs: None  # ExaBGP's logger needs its environment; nothing to log here

def attributes(pref):
    a = Attributes()
    a.add(Origin(Origin.IGP))
    a.add(LocalPreference(pref))
    return a

A1, A2 = attributes(100), attributes(200)
HOPS = {AFI.ipv4: IP.create("10.0.0.11"), AFI.ipv6: IP.create("fd00::11")}

def route(prefix, attrs, action=Action.ANNOUNCE, path=None, extra=False):
    address, _, length = prefix.partition("/")
    afi = AFI.ipv6 if ":" in address else AFI.ipv4
    nlri = INET(afi, SAFI.unicast, action)
    nlri.cidr = CIDR(IP.pton(address), NetMask.create(length, afi))
    nlri.nexthop = HOPS[afi]
    if path is not None:
        nlri.path_info = PathInfo(integer=path)
    if extra:
        nlri.note = "kept"  # a field a rebuilt route would not have: must be stored as it is
    return Change(nlri, attrs)

PLAIN = ["10.1.0.1/32", "10.1.0.2/32", "10.2.0.0/26", "10.3.0.0/20", "10.4.0.0/16", "0.0.0.0/0",
         "fd00:1::/64", "fd00:2::1/128"]
rib = OutgoingRIB(True, [(AFI.ipv4, SAFI.unicast), (AFI.ipv6, SAFI.unicast)])
out = {}

def h(value):
    return value.hex() if isinstance(value, bytes) else str(value)

def described(change):
    n = change.nlri
    return [h(change.index()), type(n).__name__, n.cidr._packed.hex(), int(n.cidr.mask), str(n.path_info),
            h(n.nexthop.index()), h(change.attributes.index()), int(n.action), str(change),
            getattr(n, "note", None)]

def cached():
    return sorted(described(c) for c in rib.cached_changes())

def sent():
    return sorted([sorted(h(n.index()) for n in u.nlris), h(u.attributes.index())]
                  for u in rib.updates(True) if hasattr(u, "nlris"))

for i, prefix in enumerate(PLAIN):
    rib.add_to_rib(route(prefix, A1 if i % 2 else A2))
rib.add_to_rib(route("10.9.0.1/32", A1, path=7))
rib.add_to_rib(route("10.9.0.2/32", A1, extra=True))
rib.add_to_rib(route("10.9.1.7/20", A2))  # host bits past the index's bytes: not given back by the index
out["first"] = sent()
out["cached"] = cached()
out["in_cache"] = [rib.in_cache(route(p, a)) for p in PLAIN for a in (A1, A2)]
out["readd"] = [rib.add_to_rib(route(p, A1 if i % 2 else A2)) for i, p in enumerate(PLAIN)]
out["after_readd"] = sent()
rib.resend(False)
out["refresh"] = sent()
for prefix in PLAIN[:3]:
    rib.del_from_rib(route(prefix, A1, Action.WITHDRAW))
rib.add_to_rib(route(PLAIN[4], A1))  # new attributes for a held prefix
out["changed"] = sent()
out["cached_after"] = cached()
out["held_before_reconnect"] = sorted(type(v).__name__ for r in rib._seen.values() for v in dict.values(r))
rib.replace_restart([], [])
out["reconnect"] = sent()
rib.withdraw()
out["withdraw_all"] = sent()
out["cached_end"] = cached()
out["held"] = sorted(type(v).__name__ for r in rib._seen.values() for v in dict.values(r))
rib.clear()
out["cleared"] = cached()
rib.add_to_rib(route(PLAIN[0], A1))
out["after_clear"] = [sent(), cached()]
json.dump({"applied": applied, "out": out}, sys.stdout)
"""


def _run(setting: str) -> dict:
    env = {**os.environ, tuning.TUNING_ENV: setting}
    proc = subprocess.run(
        [sys.executable, "-c", SCENARIO], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def _others() -> str:
    return ",".join(name for name, *_ in tuning.PATCHES if name != "ribout_compact")


@pytest.fixture(scope="module")
def runs() -> tuple[dict, dict]:
    return _run(f"skip:{_others()},ribout_compact"), _run(f"skip:{_others()}")


def test_the_cache_answers_as_upstreams_at_every_step(runs):
    upstream, compact = runs
    assert upstream["applied"] == [] and compact["applied"] == ["ribout_compact"]
    for run in runs:
        del run["out"]["held"], run["out"]["held_before_reconnect"]
    assert compact["out"] == upstream["out"]


def test_the_scenario_exercises_what_it_compares(runs):
    """Guards the comparison above against comparing nothing: each step has an outcome to compare."""
    out = runs[0]["out"]
    assert len(out["cached"]) == 11 and len(out["cached_after"]) == 8 and out["cached_end"] == []
    assert out["in_cache"].count(True) == 8 and out["readd"] == [None] * 8 and out["after_readd"] == []
    assert out["refresh"] and out["reconnect"] and out["withdraw_all"] and out["cleared"] == []
    assert {entry[-1] for entry in out["cached"]} == {None, "kept"}
    assert "0a090107" in {entry[2] for entry in out["cached"]}  # the host bits, as upstream keeps them


def test_a_plain_route_is_held_as_a_template_and_the_others_as_they_are():
    upstream, compact = (_run(f"skip:{_others()},ribout_compact")["out"], _run(f"skip:{_others()}")["out"])
    # Held before the reconnect: 5 plain routes (3 of the 8 withdrawn), the path-id one, the one with a note,
    # the one with host bits.
    assert compact["held_before_reconnect"] == [*["Change"] * 3, *["Template"] * 5]
    assert upstream["held_before_reconnect"] == ["Change"] * 8


def test_a_cache_that_reads_its_maps_another_way_is_left_alone():
    """An upstream Cache method calling a dict method the compact maps do not answer (here ``copy``, which
    would hand out templates) makes the adjustment refuse, before it patches anything."""
    script = r"""
import json
from exabgp.rib.cache import Cache
from bgp.exabgp import tuning_ribout
def cached_changes(self, families=None, actions=()):
    return list(self._seen.copy().values())
Cache.cached_changes = cached_changes
before = (Cache.__init__, Cache.clear_cache, Cache.update_cache)
try:
    tuning_ribout.compact_cache(Cache.__init__)
except AttributeError as exc:
    print(json.dumps([str(exc), (Cache.__init__, Cache.clear_cache, Cache.update_cache) == before]))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    message, untouched = json.loads(proc.stdout)
    assert "copy" in message and untouched
