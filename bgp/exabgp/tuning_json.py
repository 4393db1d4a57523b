"""The JSON of a received UPDATE's IPv4/IPv6 unicast NLRI, written without per-NLRI objects: a wrapper
``bgp.exabgp.tuning`` applies to ExaBGP's JSON encoder.

Stage: the BGP engine's process (runs inside the ExaBGP child, never in the daemon).

Owns: the fast path of ``JSON._update``. For each NLRI upstream builds a ``Family`` object to find its
family, turns the next hop into text again, and goes through ``INET.json`` (a list, a join, a format) for
a string that, for a plain unicast prefix, is ``"<prefix>"`` or ``{ "nlri": "<prefix>" }``. We group by
the NLRI's own (afi, safi) values, name each group with upstream's ``family().afi_safi()`` of its first
NLRI (upstream keeps that key too), turn each next hop object into text once, and write each prefix's
JSON from ``cidr.prefix()`` and ``path_info.json()``, the parts ``INET.json`` is made of.

Complicating factors: the bytes must be upstream's, every one (tests/unit/bgp/test_exabgp_tuning_json.py
compares both on a corpus: announces and withdrawals, several next hops, path ids, IPv6, communities,
End-of-RIB, compact mode). An UPDATE with any NLRI that is not exactly ``INET`` (labels, VPN, flow,
End-of-RIB) goes to upstream whole. The attributes' JSON and the envelope stay upstream's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _by_next_hop(by_hop: dict[str, list[str]]) -> str:
    return ", ".join(f'"{hop}": [ ' + ", ".join(texts) + " ]" for hop, texts in by_hop.items())


def fast_update(original: Callable[..., Any]) -> Callable[..., Any]:
    """``JSON._update`` that writes plain unicast NLRI lists itself, upstream's bytes exactly."""
    from exabgp.bgp.message import Action
    from exabgp.bgp.message.update.nlri import INET
    from exabgp.bgp.message.update.nlri.qualifier import PathInfo

    announce, withdraw, nopath = Action.ANNOUNCE, Action.WITHDRAW, PathInfo.NOPATH

    def _update(self, update):
        nlris = update.nlris
        if not nlris or any(type(nlri) is not INET for nlri in nlris):
            return original(self, update)
        compact = self.compact
        names: dict[tuple, str] = {}  # (afi, safi) -> '"ipv4 unicast"', from the group's first NLRI
        plus: dict[tuple, dict[str, list[str]]] = {}
        minus: dict[tuple, list[str]] = {}
        nexthops: dict[int, str] = {}  # id(next hop object) -> its text; every one is alive in nlris
        for nlri in nlris:
            action = nlri.action
            if action != announce and action != withdraw:
                continue
            key = (nlri.afi, nlri.safi)
            if key not in names:
                afi, safi = nlri.family().afi_safi()
                names[key] = f'"{afi} {safi}"'
            prefix = nlri.cidr.prefix()
            path = nlri.path_info
            internal = "" if path is nopath else path.json()
            if internal:
                text = f'{{ "nlri": "{prefix}", {internal} }}'
            elif compact:
                text = f'"{prefix}"'
            else:
                text = f'{{ "nlri": "{prefix}" }}'
            if action == announce:
                hop = nlri.nexthop
                nexthop = nexthops.get(id(hop))
                if nexthop is None:
                    try:
                        nexthop = str(hop)
                    except Exception:
                        nexthop = "null"
                    nexthops[id(hop)] = nexthop
                plus.setdefault(key, {}).setdefault(nexthop, []).append(text)
            else:
                minus.setdefault(key, []).append(text)
        add = [f"{names[key]}: {{ {_by_next_hop(by_hop)} }}" for key, by_hop in plus.items()]
        remove = [f"{names[key]}: [ " + ", ".join(texts) + " ]" for key, texts in minus.items()]
        if not add and not remove:
            return original(self, update)  # nothing announced or withdrawn: upstream's own answer
        nlri_text = ""
        if add:
            nlri_text += '"announce": { ' + ", ".join(add) + " }"
        if add and remove:
            nlri_text += ", "
        if remove:
            nlri_text += '"withdraw": { ' + ", ".join(remove) + " }"
        attributes = f'"attribute": {{ {update.attributes.json()} }}' if update.attributes else ""
        body = f"{attributes}, {nlri_text}" if attributes else nlri_text
        return {"message": self._json(f'{{ "update": {{ {body} }} }}')}

    return _update
