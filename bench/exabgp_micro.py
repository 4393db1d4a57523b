"""CPU of ExaBGP's own code for a 100k-route burst, with and without some of ``bgp.exabgp.tuning``'s patches.

Stage: a measurement tool beside the benchmark (``python -m bench.exabgp_micro``); it starts no lab.

What it measures, each in a fresh child process (patches apply per process), as CPU seconds (user + system)
of the best of three runs:
- send: the speaker's command stream for N routes (``announce|withdraw attributes ... nlri`` lines of
  ``NLRI_PER_LINE`` /32s, as ``bgp.exabgp.commands`` writes them) through ExaBGP's own API handlers and
  parser, up to the routes they hand to the RIB; then those routes into an Adj-RIB-Out and out as UPDATEs;
- receive: the UPDATEs ExaBGP encodes for those routes, decoded by ExaBGP and turned into the JSON events
  the daemon reads, and the per-NLRI Adj-RIB-In cache ExaBGP keeps unless the neighbour has
  ``adj-rib-in false``;
- decode: the daemon's ``bgp.exabgp.events.parse_line`` on that JSON.

``--without api_bulk,...`` leaves those patches out (the others still apply), which is how each one's worth
in bench/results/changes.md and docs/exabgp-patches.md was taken. Complicating factor: ExaBGP's logger
needs its environment, so the child routes its lines to nowhere, at INFO, as our ExaBGP runs.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from types import SimpleNamespace
from typing import Any

from bgp.exabgp.commands import NLRI_PER_LINE

PEER = "neighbor 10.0.0.12 local-ip 10.0.0.11"
ATTRIBUTES = "next-hop 10.0.0.11 origin igp local-preference 100"


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _best(run, repeats: int = 3) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = _cpu()
        out = run()
        best = min(best, _cpu() - start)
    return best, out


def _lines(n: int, action: str) -> list[str]:
    prefixes = [f"10.{64 + i // 65536}.{i // 256 % 256}.{i % 256}/32" for i in range(n)]
    return [
        f"neighbor 10.0.0.12 {action} attributes {ATTRIBUTES} nlri {' '.join(chunk)}"
        for chunk in (prefixes[i : i + NLRI_PER_LINE] for i in range(0, n, NLRI_PER_LINE))
    ]


def _kept(accepted: list, change: Any) -> bool:
    accepted.append(change)
    return True  # the RIB took it (a withdraw of a route it held)


def _send(lines: list[str]) -> list:
    from exabgp.reactor.api import API
    from exabgp.reactor.api.command import Command

    scheduled: list = []
    accepted: list = []
    reactor = SimpleNamespace(
        peers=lambda service: [PEER],
        asynchronous=SimpleNamespace(schedule=lambda service, line, callback: scheduled.append(callback)),
        processes=SimpleNamespace(answer_done=lambda service: None, answer_error=lambda service: None),
        configuration=SimpleNamespace(inject_change=lambda peers, change: _kept(accepted, change)),
    )
    api = API(reactor)
    for line in lines:
        name = "announce attributes" if " announce " in line else "withdraw attributes"
        Command.callback["text"][name](api, reactor, "calico-bgp", line, False)
        for _ in scheduled.pop():
            pass
    return accepted


def _rib_and_wire(changes: list, negotiated: Any) -> int:
    """Into a fresh Adj-RIB-Out (with its cache, ExaBGP's default), then out as grouped UPDATEs."""
    from exabgp.protocol.family import AFI, SAFI
    from exabgp.rib.outgoing import OutgoingRIB

    rib = OutgoingRIB(True, [(AFI.ipv4, SAFI.unicast)])
    for change in changes:
        rib.add_to_rib(change)
    return sum(len(m) for update in rib.updates(True) for m in update.messages(negotiated))


def _child(n: int, without: list[str]) -> dict[str, float]:
    import logging

    from exabgp.logger.option import option

    from bgp.exabgp import tuning

    quiet = logging.getLogger("exabgp-micro")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    option.logger, option.formater = quiet, lambda line, source, level, timestamp: line
    option._set_level("INFO")
    option.enabled = dict.fromkeys(option.enabled, True)
    tuning.PATCHES = tuple(p for p in tuning.PATCHES if p[0] not in without)
    tuning.apply()

    from exabgp.bgp.message.open.capability.negotiated import Negotiated
    from exabgp.protocol.family import AFI, SAFI

    negotiated = Negotiated({"capability": {"aigp": False}})
    negotiated.asn4, negotiated.families = True, [(AFI.ipv4, SAFI.unicast)]
    neighbor = type("Neighbor", (dict,), {"uid": "1"})(
        {"local-address": "10.0.0.12", "peer-address": "10.0.0.11", "local-as": 64512, "peer-as": 64512,
         "router-id": "10.0.0.12"}
    )
    out: dict[str, float] = {}
    for action in ("announce", "withdraw"):
        out.update(_one_way(action, n, negotiated, neighbor))
    return out


def _one_way(action: str, n: int, negotiated: Any, neighbor: Any) -> dict[str, float]:
    from exabgp.bgp.message import Action
    from exabgp.bgp.message.direction import Direction
    from exabgp.bgp.message.update import Update
    from exabgp.protocol.family import AFI, SAFI
    from exabgp.reactor.api.response.json import JSON
    from exabgp.rib.cache import Cache
    from exabgp.rib.change import Change

    from bgp.exabgp.events import parse_line

    out: dict[str, float] = {}
    out[f"send {action}: API"], changes = _best(lambda: _send(_lines(n, action)))
    for change in changes:
        change.nlri.action = Action.ANNOUNCE if action == "announce" else Action.WITHDRAW
    out[f"send {action}: RIB, UPDATEs"], _ = _best(lambda: _rib_and_wire(changes, negotiated))
    wire = [m[19:] for m in Update([c.nlri for c in changes], changes[0].attributes).messages(negotiated)]
    updates = [Update.unpack_message(body, Direction.IN, negotiated) for body in wire]
    out[f"receive {action}: decode"], _ = _best(
        lambda: [Update.unpack_message(body, Direction.IN, negotiated) for body in wire]
    )
    encoder = JSON("5.0.15")
    out[f"receive {action}: JSON"], events = _best(
        lambda: [encoder.update(neighbor, "receive", u, None, b"", b"") for u in updates]
    )
    cache = Cache(True, [(AFI.ipv4, SAFI.unicast)])
    out[f"receive {action}: adj-rib-in"], _ = _best(
        lambda: [cache.update_cache(Change(nlri, u.attributes)) for u in updates for nlri in u.nlris]
    )
    out[f"daemon {action}: parse_line"], _ = _best(lambda: [parse_line(line) for line in events])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.exabgp_micro", description=__doc__.split("\n")[0])
    parser.add_argument("--routes", type=int, default=100_000)
    parser.add_argument("--without", default="", help="comma-separated tuning patch names to leave out")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    without = [name for name in args.without.split(",") if name]
    if args.child:
        print(json.dumps(_child(args.routes, without)))
        return 0
    runs = {}
    for label, leave_out in (("without", without), ("with", [])):
        command = [sys.executable, "-m", "bench.exabgp_micro", "--child", "--routes", str(args.routes)]
        done = subprocess.run([*command, "--without", ",".join(leave_out)], capture_output=True, text=True,
                              check=True, timeout=600)
        runs[label] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"CPU s for {args.routes} routes; without = all tuning but {','.join(without) or 'nothing'}")
    print(f"| {'step':<30} | without | with |")
    for key in runs["with"]:
        print(f"| {key:<30} | {runs['without'][key]:7.3f} | {runs['with'][key]:4.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
