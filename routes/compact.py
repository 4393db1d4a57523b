"""One: a read-only mapping of exactly one entry, and the helpers that keep per-destination maps compact.

Stage: shared by the per-route state of the kernel dataplane (``routes.kernel_view``, ``routes.monitor``).
Several maps there are destination -> metric -> something, and nearly every destination has one metric: a
``dict`` per destination costs about 230 bytes, 23 MB per 100k routes, for one entry. ``One`` holds that
entry in two slots (about 50 bytes) and answers as a ``Mapping``, so readers are unchanged; ``put`` and
``pop`` switch a destination between ``One`` and a ``dict`` as it gains or loses a second metric.

Owns: nothing but the representation. Pure.

Complicating factor: values are replaced, never mutated in place: a reader may hold a destination's map
across a change (the write planner iterates one while the caller's lists grow), and a ``One`` cannot grow.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from typing import Generic, TypeVar

D = TypeVar("D")
K = TypeVar("K")
V = TypeVar("V")


class One(Mapping[K, V], Generic[K, V]):
    __slots__ = ("key", "value")

    def __init__(self, key: K, value: V) -> None:
        self.key = key
        self.value = value

    def __getitem__(self, key: K) -> V:
        if key == self.key:
            return self.value
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return key == self.key

    def get(self, key, default=None):  # the hot lookup of the write planner: no __getitem__ round trip
        return self.value if key == self.key else default

    def __iter__(self) -> Iterator[K]:
        return iter((self.key,))

    def __len__(self) -> int:
        return 1

    def __repr__(self) -> str:
        return f"One({self.key!r}: {self.value!r})"


def put(maps: MutableMapping[D, Mapping[K, V]], dst: D, key: K, value: V) -> bool:
    """Set ``maps[dst][key] = value``; returns True when ``key`` is new for ``dst``."""
    held = maps.get(dst)
    if held is None:
        maps[dst] = One(key, value)
        return True
    if key in held and len(held) == 1:
        maps[dst] = One(key, value)
        return False
    new = key not in held
    grown = dict(held)
    grown[key] = value
    maps[dst] = grown
    return new


def pop(maps: MutableMapping[D, Mapping[K, V]], dst: D, key: K) -> V | None:
    """Remove ``maps[dst][key]`` (and ``dst`` once empty); returns the value removed, None if absent."""
    held = maps.get(dst)
    if type(held) is One:  # the common case, without the Mapping protocol's method calls
        if held.key != key:
            return None
        del maps[dst]
        return held.value
    if held is None or key not in held:
        return None
    value = held[key]
    if len(held) == 1:
        del maps[dst]
    else:
        rest = {k: v for k, v in held.items() if k != key}
        maps[dst] = One(*next(iter(rest.items()))) if len(rest) == 1 else rest
    return value
