"""The datastore seam: what a syncer delivers (``Snapshot``) and the shape every datastore has.

Stage: first stage of the confgen pipeline. A datastore (``EtcdSyncer`` for real, ``MemoryDatastore`` in
tests and labs) keeps a local copy of the keys confgen watches and hands the whole view to a callback
after every change. The pure calculation (``confgen.calc``) turns a ``Snapshot`` into a ``NodeIntent``.

Owns: the ``Snapshot`` value, the ``Datastore`` protocol, the datastore error family and the one function
that turns a raw key/value map into a ``Snapshot`` (shared by every datastore, so the fake decodes exactly
like the real syncer).

Complicating factors:
- Snapshots are deliberately raw: JSON values as decoded dicts, no defaults, no validation. One bad
  resource must not stop the others, so validation belongs to ``confgen.model``, which can skip it and
  say why. Values that are not even a JSON object are reported in ``Snapshot.errors`` the same way.
- A snapshot is a value. Delivered snapshots are never mutated afterwards (the syncer builds fresh outer
  dicts each time and replaces, never edits, decoded values), so consumers may keep them across awaits.
- An empty affinity value means ``{}`` (older Calico versions wrote affinities without a body).
- Values may be hostile: a 100k-deep JSON array makes ``json.loads`` raise ``RecursionError``, a megabyte
  of data costs every snapshot. ``decode_value`` bounds size and depth and never raises, so one key can
  only ever break itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from confgen.datastore import keys

# Bounds on one stored value. etcd's own default request limit is 1.5 MiB; the largest resource confgen
# reads in practice (a BGPFilter with a few hundred rules, a Node with its annotations) is a few KiB, so
# 256 KiB leaves two orders of magnitude and caps what one key can cost the parser and every snapshot.
# The deepest legitimate path (BGPFilter spec.exportV4[i].operations[j].prependASPath.prefix[k]) is 7
# containers deep; 32 leaves room for metadata and future fields, and keeps every later walk over a value
# far from Python's recursion limit.
MAX_VALUE_BYTES = 256 * 1024
MAX_VALUE_DEPTH = 32


class DatastoreError(Exception):
    """Any failure talking to the datastore: the syncer logs it, backs off and resyncs."""


class CompactedError(DatastoreError):
    """A watch asked for history the datastore has already compacted away: only a full relist helps."""


@dataclass(frozen=True)
class Snapshot:
    """Everything confgen reads, at one datastore revision (raw, unvalidated)."""

    revision: int
    resources: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # {kind: {name: decoded JSON}}
    affinities: Mapping[str, Any] = field(default_factory=dict)  # this node's blocks: {cidr: decoded JSON}
    errors: tuple[str, ...] = ()  # keys whose value could not be decoded, "key: problem"
    # (kind, name) of the resources among ``errors``: the model keeps their last valid version in force.
    broken: tuple[tuple[str, str], ...] = ()

    def resource(self, kind: str, name: str) -> Any | None:
        return self.resources.get(kind, {}).get(name)


OnSnapshot = Callable[[Snapshot], None]


class Datastore(Protocol):
    """A source of snapshots. ``run`` delivers the first one once in sync, then one per change batch,
    and only returns when cancelled."""

    async def run(self, on_snapshot: OnSnapshot) -> None: ...


class Undecodable:
    """Marker kept in a decoded key/value cache for a value that is not a JSON object."""

    __slots__ = ("problem",)

    def __init__(self, problem: str) -> None:
        self.problem = problem

    def __repr__(self) -> str:
        return f"Undecodable({self.problem!r})"


_JSON_TYPES = {list: "a JSON array", str: "a JSON string", int: "a JSON number", float: "a JSON number"}
_JSON_TYPES.update({bool: "a JSON boolean", type(None): "JSON null"})


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Whether ``value`` nests containers deeper than ``limit`` (iterative: no recursion to exhaust)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(node, dict):
            stack.extend((child, depth + 1) for child in node.values() if isinstance(child, dict | list))
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node if isinstance(child, dict | list))
    return False


def decode_value(key: str, raw: bytes) -> Any:
    """Decode one stored value: a dict, or an ``Undecodable`` saying why not.

    Never raises: whatever a value holds, the worst it can do is make its own key undecodable.
    """
    if len(raw) > MAX_VALUE_BYTES:
        return Undecodable(f"value is {len(raw)} bytes long (at most {MAX_VALUE_BYTES})")
    if not raw.strip():
        # Calico reads an empty affinity as {}; an empty resource is still an empty object to the model,
        # which then reports the missing spec fields it needs.
        return {}
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        return Undecodable(f"value is not valid JSON ({exc.__class__.__name__})")
    except RecursionError:
        return Undecodable(f"value nests deeper than {MAX_VALUE_DEPTH} levels")
    if not isinstance(value, dict):
        return Undecodable(f"value is {_JSON_TYPES.get(type(value), 'something else')}, not an object")
    if _depth_exceeds(value, MAX_VALUE_DEPTH):
        return Undecodable(f"value nests deeper than {MAX_VALUE_DEPTH} levels")
    return value


def watched_prefixes(node: str) -> tuple[str, ...]:
    """Every prefix a syncer for ``node`` lists and watches.

    One prefix per resource kind rather than all of ``RESOURCE_PREFIX``: the latter also holds every
    workload endpoint and network policy of the cluster, which confgen never reads.
    """
    resource_prefixes = tuple(keys.resource_prefix(kind) for kind in keys.PLURALS)
    return resource_prefixes + tuple(keys.affinity_prefix(node, family) for family in keys.FAMILIES)


def build_snapshot(revision: int, decoded: Mapping[str, Any], node: str) -> Snapshot:
    """Group a decoded key/value map into a ``Snapshot`` for ``node``; unrelated keys are ignored."""
    resources: dict[str, dict[str, Any]] = {kind: {} for kind in keys.PLURALS}
    affinities: dict[str, Any] = {}
    errors: list[str] = []
    broken: list[tuple[str, str]] = []
    for key in sorted(decoded):
        value = decoded[key]
        parsed = keys.parse_resource_key(key)
        if parsed is not None:
            target, name = resources[parsed[0]], parsed[1]
        else:
            affinity = keys.parse_affinity_key(key)
            if affinity is None or affinity[0] != node:
                if key.startswith(keys.IPAM_HOST_PREFIX + node + "/"):
                    # Under this node's own affinities but not a block: say so rather than lose a block
                    # silently (a scope id or a stray host bit in the CIDR lands here).
                    errors.append(f"{_shown(key)}: not a block affinity key (a canonical CIDR is expected)")
                continue
            target, name = affinities, affinity[1]
        if isinstance(value, Undecodable):
            errors.append(f"{_shown(key)}: {value.problem}")
            if parsed is not None:
                broken.append(parsed)
            continue
        target[name] = value
    return Snapshot(
        revision=revision,
        resources=resources,
        affinities=affinities,
        errors=tuple(errors),
        broken=tuple(broken),
    )


def _shown(key: str) -> str:
    # Keys are datastore text too: one printable line, cut short.
    text = key if key.isprintable() and len(key) <= 200 else repr(key)
    return text if len(text) <= 200 else text[:197] + "..."


def decode_all(items: Iterable[tuple[str, bytes]]) -> dict[str, Any]:
    return {key: decode_value(key, raw) for key, raw in items}
