"""Values a sink refused to emit: logged once, counted per sink.

Stage: observability of the sinks' last line of defence. ``bgp.daemon`` builds one ``SinkRefusals`` on its
registry and hands it to each sink's owner: the speaker (ExaBGP API commands), ``bgp.gtsm`` (the nft
script) and the confgen loop (the ExaBGP config).

Owns: the ``calico_bgp_refused_sink_values_total{sink}`` counter and the memory of which refusals were
already logged.

Complicating factors:
- A refused value usually stays where it is (a bad peer refused at every render, a bad prefix at every
  re-announcement), so the same message would be logged again and again; each distinct message is logged
  once, and the memory of them is bounded (the oldest is forgotten first). The counter counts every
  refusal, so its rate says whether a bad value is still being offered.
- One counter with a ``sink`` label, shared by components that run in one process: a registry refuses two
  metrics with one name, so the object is built once and injected, never per component.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter

log = logging.getLogger(__name__)

EXABGP_API = "exabgp_api"
EXABGP_CONFIG = "exabgp_config"
NFT = "nft"
SINKS = (EXABGP_API, EXABGP_CONFIG, NFT)

REMEMBERED = 1024


class SinkRefusals:
    def __init__(self, registry: CollectorRegistry | None = None, *, remembered: int = REMEMBERED) -> None:
        registry = registry if registry is not None else CollectorRegistry()
        self._counter = Counter(
            "calico_bgp_refused_sink_values",
            "Values a sink (ExaBGP API commands, the ExaBGP config, the nft script) refused to emit; "
            "the route, peer or line carrying one was left out.",
            ["sink"],
            registry=registry,
        )
        for sink in SINKS:
            self._counter.labels(sink)  # export zeroes, so rate() works from the start
        self._remembered = remembered
        self._logged: OrderedDict[tuple[str, str], None] = OrderedDict()

    def refuse(self, sink: str, message: str) -> None:
        """Count one refusal and log ``message`` unless it was logged recently."""
        self.count(sink)
        key = (sink, message)
        if key in self._logged:
            self._logged.move_to_end(key)
            return
        self._logged[key] = None
        if len(self._logged) > self._remembered:
            self._logged.popitem(last=False)
        log.warning("%s", message)

    def count(self, sink: str, n: int = 1) -> None:
        """Count ``n`` refusals the caller reports (and logs) itself."""
        self._counter.labels(sink).inc(n)

    def reporter(self, sink: str) -> Callable[[str], None]:
        """A one-argument ``refused(message)`` callback for ``sink``, what the pure sink functions take."""
        return lambda message: self.refuse(sink, message)
