"""BoundHits: counts the times a bounded queue, cache or map reached its limit.

Stage: observability shared by every package of the daemon (``routes`` sits below ``bgp``, so both can
import it). ``bgp.daemon`` builds one on its registry and hands it to each component that holds a bounded
structure; a component built without one (tests, tools) gets a private registry.

Owns: the ``calico_bgp_bound_hits_total{what}`` counter. ``what`` names the structure (a fixed identifier
chosen by its owner, listed in docs/bounds.md), never a value from the input, so the label set stays
small however hostile the input is.

Complicating factors: a registry refuses two metrics with one name, so the counter is built once per
registry and shared; each owner takes a ``reporter(what)``, which also exports the zero at once so that
``rate()`` and alerts work before the first hit.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter


class BoundHits:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self._counter = Counter(
            "calico_bgp_bound_hits",
            "Times a bounded queue, cache or map reached its limit (what: which one; docs/bounds.md says "
            "what each does when full).",
            ["what"],
            registry=registry if registry is not None else CollectorRegistry(),
        )

    def hit(self, what: str, n: int = 1) -> None:
        self._counter.labels(what).inc(n)

    def reporter(self, what: str) -> Callable[[], None]:
        """A no-argument callback that counts one hit of ``what``; its series is exported from now on."""
        child = self._counter.labels(what)
        return child.inc
