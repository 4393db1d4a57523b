"""Calico v3 resource documents as calicoctl reads and writes them: kinds, aliases, validation, storage.

Stage: the pure half of the resource CLI (``bgp.resources_cli`` does the etcd I/O). Documents are
validated with the same parsers the daemon uses (``confgen.model.PARSERS``), so whatever ``apply``
accepts the daemon can use, and whatever the daemon would skip ``apply`` refuses.

Owns: the mapping from calicoctl's kind names and aliases to kinds, the stored JSON shape, and the
decoding of YAML/JSON input (one or many documents, or calicoctl ``<Kind>List`` documents).

Complicating factors:
- Data written by calicoctl and by us must be interchangeable: the value under
  ``/calico/resources/v3/projectcalico.org/<plural>/<name>`` is the whole object (``kind``,
  ``apiVersion: projectcalico.org/v3``, ``metadata`` with name, uid, creationTimestamp, labels,
  annotations, then ``spec``), and ``resourceVersion`` is never stored: it is etcd's ``mod_revision``,
  added when the object is read back.
- On update the stored ``uid`` and ``creationTimestamp`` are kept; on create a uuid4 and the current time
  are set (the clock and the uid source are parameters, so this stays testable).
- CalicoNodeStatus is validated by ``confgen.nodestatus`` (the daemon reads it outside its BGP model), and
  its ``status`` belongs to the reporting node: an update keeps the stored one, a document's is ignored.
- The daemon ignores fields it does not know (forward compatibility); ``apply`` reports them as warnings,
  because a misspelt field (``peerIp``) is otherwise silently ignored.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import yaml

from confgen.datastore import keys
from confgen.model import PARSERS
from confgen.nodestatus import KIND as NODE_STATUS_KIND
from confgen.nodestatus import parse_node_status
from confgen.validate import ValidationError, show

API_VERSION = "projectcalico.org/v3"

ALIASES = {
    "BGPConfiguration": ("bgpconfiguration", "bgpconfigurations", "bgpconfig", "bgpconfigs"),
    "BGPPeer": ("bgppeer", "bgppeers", "bgpp", "bgpps", "bp", "bps"),
    "BGPFilter": ("bgpfilter", "bgpfilters"),
    "Node": ("node", "nodes", "no", "nos"),
    "IPPool": ("ippool", "ippools", "ipp", "ipps", "pool", "pools"),
    "CalicoNodeStatus": ("caliconodestatus", "caliconodestatuses"),
}
_KIND_BY_ALIAS = {alias: kind for kind, aliases in ALIASES.items() for alias in aliases}

# Spec fields of Calico v3 (docs/calico-model.md); anything else draws a warning from apply.
KNOWN_SPEC_FIELDS = {
    "BGPConfiguration": {
        "logSeverityScreen", "nodeToNodeMeshEnabled", "asNumber", "serviceClusterIPs", "serviceExternalIPs",
        "serviceLoadBalancerIPs", "serviceLoadBalancerAggregation", "communities", "prefixAdvertisements",
        "listenPort", "nodeMeshPassword", "nodeMeshMaxRestartTime", "bindMode", "ignoredInterfaces",
        "localWorkloadPeeringIPV4", "localWorkloadPeeringIPV6", "programClusterRoutes",
        "ipv4NormalRoutePriority", "ipv6NormalRoutePriority",
        "nodeMeshHoldTime",  # extension (docs/calico-model.md#extensions)
        "nodeMeshFailureDetectionMode",  # extension (docs/bfd.md)
    },
    "BGPPeer": {
        "node", "nodeSelector", "peerIP", "asNumber", "localASNumber", "peerSelector", "keepOriginalNextHop",
        "nextHopMode", "password", "sourceAddress", "maxRestartTime", "keepaliveTime",
        "numAllowedLocalASNumbers", "ttlSecurity", "reachableBy", "filters", "localWorkloadSelector",
        "reversePeering", "failureDetectionMode",
        "holdTime", "restartMode",  # extensions (docs/calico-model.md#extensions)
    },
    "BGPFilter": {"exportV4", "importV4", "exportV6", "importV6"},
    "Node": {
        "bgp", "ipv4VXLANTunnelAddr", "vxlanTunnelMACAddr", "ipv6VXLANTunnelAddr", "vxlanTunnelMACAddrV6",
        "wireguard", "orchRefs", "addresses",
    },
    "IPPool": {
        "cidr", "ipipMode", "vxlanMode", "natOutgoing", "disabled", "disableBGPExport", "blockSize",
        "nodeSelector", "namespaceSelector", "allowedUses", "assignmentMode", "ipip", "nat-outgoing",
    },
    "CalicoNodeStatus": {"node", "classes", "updatePeriodSeconds"},
}  # fmt: skip

# The daemon's parsers, plus the node-status requests the daemon reads outside its BGP model.
VALIDATORS = {**PARSERS, NODE_STATUS_KIND: parse_node_status}


class DocumentError(ValueError):
    """Input that is not a usable resource document (the message says which and why)."""


def kind_of(text: str) -> str:
    """The kind named by calicoctl-style text: case-insensitive, singular, plural or short alias.

    >>> kind_of("BGPPeers"), kind_of("ipp"), kind_of("Node")
    ('BGPPeer', 'IPPool', 'Node')
    """
    kind = _KIND_BY_ALIAS.get(text.lower())
    if kind is None:
        raise DocumentError(f"unknown resource kind {show(text)} (one of {', '.join(ALIASES)})")
    return kind


def load_documents(text: str) -> list[dict[str, Any]]:
    """Every resource in YAML or JSON input: several ``---`` documents, a JSON object, or a
    ``<Kind>List`` with ``items``. Empty documents are skipped."""
    try:
        raw_documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise DocumentError(f"the input is not valid YAML or JSON: {exc}") from None
    documents: list[dict[str, Any]] = []
    for number, document in enumerate(raw_documents, 1):
        if document is None:
            continue
        if not isinstance(document, dict):
            raise DocumentError(f"document {number} is not an object")
        kind = document.get("kind")
        if isinstance(kind, str) and kind.endswith("List") and isinstance(document.get("items"), list):
            documents.extend(document["items"])
        else:
            documents.append(document)
    return documents


@dataclass(frozen=True)
class Prepared:
    """One validated document, ready to be stored."""

    kind: str
    name: str
    key: str
    value: bytes  # the JSON stored in etcd
    warnings: tuple[str, ...] = ()


def identify(document: Any) -> tuple[str, str]:
    """(kind, name) of a document, checking the envelope calicoctl requires."""
    if not isinstance(document, dict):
        raise DocumentError(f"a resource must be an object, not {show(document)}")
    kind = document.get("kind")
    if kind not in ALIASES:
        raise DocumentError(f"kind {show(kind)} is not one of {', '.join(ALIASES)}")
    api_version = document.get("apiVersion")
    metadata = document.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    if not isinstance(name, str) or not name:
        raise DocumentError(f"a {kind} needs metadata.name")
    if api_version != API_VERSION:
        raise ValidationError(kind, name, "apiVersion", f"{show(api_version)} is not {API_VERSION}")
    return kind, name


def prepare(
    document: Any,
    existing: Mapping[str, Any] | None,
    *,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    new_uid: Callable[[], str] = lambda: str(uuid.uuid4()),
) -> Prepared:
    """Validate one document and build the object to store. ``existing`` is the stored object with the
    same key, if any (its uid and creationTimestamp are kept). Raises ``DocumentError`` or
    ``ValidationError`` (the daemon's own message)."""
    kind, name = identify(document)
    VALIDATORS[kind](name, document)  # the daemon's validation, verbatim
    metadata = document["metadata"]
    kept = existing.get("metadata", {}) if isinstance(existing, Mapping) else {}
    stored_metadata: dict[str, Any] = {
        "name": name,
        "uid": kept.get("uid") or new_uid(),
        "creationTimestamp": kept.get("creationTimestamp") or now().strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    for field in ("labels", "annotations"):
        value = metadata.get(field)
        if value:
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                problem = f"{show(value)} is not a map of strings"
                raise ValidationError(kind, name, f"metadata.{field}", problem)
            stored_metadata[field] = value
    spec = document.get("spec") or {}
    stored: dict[str, Any] = {"kind": kind, "apiVersion": API_VERSION, "metadata": stored_metadata}
    stored["spec"] = spec
    if kind == "Node" and "status" in document:
        stored["status"] = document["status"]
    if kind == NODE_STATUS_KIND and isinstance(existing, Mapping) and "status" in existing:
        # The status belongs to the reporting node; a spec update keeps what it wrote until its next write.
        stored["status"] = existing["status"]
    unknown = sorted(set(spec) - KNOWN_SPEC_FIELDS[kind]) if isinstance(spec, dict) else []
    warnings = tuple(f"{kind} {name}: spec.{field} is not a {kind} field; it is ignored" for field in unknown)
    value = json.dumps(stored, separators=(",", ":")).encode()
    return Prepared(kind, name, keys.resource_key(kind, name), value, warnings)


def present(value: bytes, mod_revision: int) -> dict[str, Any]:
    """A stored object as ``get`` shows it: with ``metadata.resourceVersion`` from etcd."""
    document = json.loads(value)
    if isinstance(document, dict) and isinstance(document.get("metadata"), dict):
        document["metadata"]["resourceVersion"] = str(mod_revision)
    return document


def as_list(kind: str, documents: Iterable[dict[str, Any]], revision: int) -> dict[str, Any]:
    """calicoctl's list shape for ``get KIND`` with ``-o yaml|json``."""
    return {
        "apiVersion": API_VERSION,
        "kind": f"{kind}List",
        "items": list(documents),
        "metadata": {"resourceVersion": str(revision)},
    }


def summary_row(document: Mapping[str, Any]) -> tuple[str, ...]:
    """The columns of ``get`` without ``-o`` (see ``SUMMARY_COLUMNS``)."""
    kind = document.get("kind")
    name = str(document.get("metadata", {}).get("name", ""))
    spec = document.get("spec") or {}
    if not isinstance(spec, dict):
        spec = {}
    if kind == "BGPPeer":
        scope = spec.get("node") or spec.get("nodeSelector") or "(global)"
        peer = spec.get("peerIP") or spec.get("peerSelector") or ""
        return name, str(peer), str(scope), str(spec.get("asNumber", ""))
    if kind == "Node":
        bgp = spec.get("bgp") or {}
        return name, *(str(bgp.get(field, "")) for field in ("asNumber", "ipv4Address", "ipv6Address"))
    if kind == "IPPool":
        return name, str(spec.get("cidr", "")), str(spec.get("nodeSelector", "all()"))
    if kind == NODE_STATUS_KIND:
        status = document.get("status") or {}
        classes = spec.get("classes") or []
        return (
            name,
            str(spec.get("node", "")),
            ",".join(str(c) for c in classes) if isinstance(classes, list) else str(classes),
            f"{spec.get('updatePeriodSeconds', '')}s",
            str(status.get("lastUpdated", "")) if isinstance(status, dict) else "",
        )
    if kind == "BGPConfiguration":
        return (
            name,
            str(spec.get("logSeverityScreen", "")),
            str(spec.get("nodeToNodeMeshEnabled", "")),
            str(spec.get("asNumber", "")),
        )
    return (name,)


SUMMARY_COLUMNS = {
    "BGPPeer": ("NAME", "PEERIP", "NODE", "ASN"),
    "Node": ("NAME", "ASN", "IPV4", "IPV6"),
    "IPPool": ("NAME", "CIDR", "SELECTOR"),
    "BGPConfiguration": ("NAME", "LOGSEVERITY", "MESHENABLED", "ASNUMBER"),
    "BGPFilter": ("NAME",),
    NODE_STATUS_KIND: ("NAME", "NODE", "CLASSES", "UPDATEPERIOD", "LASTUPDATED"),
}
