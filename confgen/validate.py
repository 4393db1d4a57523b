"""Field-level validation shared by every resource parser: one error type, one reader, canonical values.

Stage: the bottom of the pure calculation. ``confgen.model``, ``confgen.bgppeer`` and
``confgen.bgpfilter`` parse raw resources with ``Reader``; the resource CLI uses the same parsers, so
``calico-bgp apply`` refuses exactly what the daemon would skip.

Owns: ``ValidationError`` (kind, name, field, problem -> "BGPPeer rack1-tor: spec.peerIP '10.0.0.300'
is not an IP address"), the typed field readers, and the canonical forms of AS numbers, durations,
communities, labels and secret references.

Complicating factors:
- Values come from a shared datastore and may be hostile. A value is shown in a message only through
  ``show`` (``repr``, cut to 80 characters), so a message is always one printable line.
- Every reader returns a canonical Python value (ints, normalised addresses, validated names); nothing a
  user typed is passed on verbatim unless it matched a strict pattern first.
- JSON ``null`` means "not set", like an absent field, because calicoctl writes both.
- Durations are Go ``time.Duration`` strings ("90s", "1m30s", "1.5s"), rounded to whole seconds the way
  confd does (``math.Round``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from confgen import addresses
from confgen import selector as selector_lang

MAX_AS_NUMBER = 2**32 - 1

# Calico resource names are DNS-1123 subdomains; "node.<nodename>" BGPConfigurations fit the same rule.
# (Always fullmatch: "$" would also match before a trailing newline.)
NAME_RE = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_PLAIN_RE = re.compile(r"[A-Za-z0-9._:/-]{1,253}")  # printed bare in messages; anything else via repr()
_ASPLAIN_RE = re.compile(r"[0-9]{1,10}")
_ASDOT_RE = re.compile(r"([0-9]{1,5})\.([0-9]{1,5})")
_DURATION_PART_RE = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_STANDARD_COMMUNITY_RE = re.compile(r"([0-9]{1,5}):([0-9]{1,5})")
_LARGE_COMMUNITY_RE = re.compile(r"([0-9]{1,10}):([0-9]{1,10}):([0-9]{1,10})")
# Kubernetes qualified label keys ([prefix/]name) and label values.
_LABEL_NAME_RE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_LABEL_VALUE_RE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")
# Kubernetes secret data keys.
_SECRET_KEY_RE = re.compile(r"[-._A-Za-z0-9]{1,253}")
_MISSING = object()


class ValidationError(ValueError):
    """A resource that cannot be used. The message names kind, name, field and problem."""

    def __init__(self, kind: str, name: str, field: str, problem: str) -> None:
        self.kind, self.name, self.field, self.problem = kind, name, field, problem
        shown = name if _PLAIN_RE.fullmatch(name) else show(name)
        super().__init__(f"{kind} {shown}: " + " ".join(part for part in (field, problem) if part))


def _address_problem(exc: addresses.AddressError, what: str) -> str:
    # "is not an IP address" alone for garbage; the specific reason when there is one worth knowing.
    problem = str(exc)
    return problem if problem.startswith("is not") else f"is not {what}: it {problem}"


def show(value: Any) -> str:
    """repr() for messages, cut short: values come from a shared datastore and may be huge or hostile."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass(frozen=True, order=True)
class SecretRef:
    """``secretKeyRef {name, key}``: one key of one secret, read from the secrets directory."""

    name: str
    key: str

    def __str__(self) -> str:
        return f"{self.name}/{self.key}"


class SecretError(Exception):
    """Why a secret could not be used; stands in for its value in the secrets handed to the calculation."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretError) and str(other) == str(self)

    def __hash__(self) -> int:
        return hash(str(self))


def password_problem(password: str) -> str:
    """Why a TCP-MD5 password is refused ("" = usable): 1-80 printable ASCII characters (RFC 2385 keys
    are bytes, but every router config that must match ours takes printable text, and a stray newline
    from ``echo`` into a secret file is the commonest way to break a session silently)."""
    if not password:
        return "is empty"
    if len(password) > 80:
        return f"is {len(password)} characters long (TCP-MD5 allows 80)"
    if not all(" " <= c <= "~" for c in password):
        trailing = " (a trailing newline?)" if password.rstrip("\r\n") != password else ""
        return f"holds a control or non-ASCII character{trailing}"
    return ""


def parse_as_number(value: Any) -> int | None:
    """An AS number from a JSON number, a decimal string or an asdot string; None if it is none of them.

    >>> parse_as_number("1.10"), parse_as_number(64512), parse_as_number("4200000000")
    (65546, 64512, 4200000000)
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        if _ASPLAIN_RE.fullmatch(value):
            value = int(value)
        elif match := _ASDOT_RE.fullmatch(value):
            high, low = int(match[1]), int(match[2])
            if high > 0xFFFF or low > 0xFFFF:
                return None
            value = (high << 16) | low
        else:
            return None
    if not isinstance(value, int):
        return None
    # AS 0 is reserved (RFC 7607) and ExaBGP refuses it: treat it as invalid rather than render it.
    return value if 1 <= value <= MAX_AS_NUMBER else None


def parse_duration(value: Any) -> int | None:
    """Whole seconds (rounded half away from zero, like Go's math.Round) of a Go duration string.

    >>> parse_duration("120s"), parse_duration("1m30s"), parse_duration("1.5s"), parse_duration("0")
    (120, 90, 2, 0)
    """
    if not isinstance(value, str) or not value or len(value) > 64:
        return None
    if value == "0":
        return 0
    seconds, pos = 0.0, 0
    while pos < len(value):
        match = _DURATION_PART_RE.match(value, pos)
        if match is None:
            return None
        seconds += float(match[1]) * _DURATION_UNITS[match[2]]
        pos = match.end()
    return int(seconds + 0.5)


def parse_community(value: Any) -> tuple[str, str] | None:
    """("standard", "aa:nn") or ("large", "aa:nn:mm") in canonical decimal form; None if neither.

    >>> parse_community("65000:100"), parse_community("4200000000:1:2"), parse_community("65536:1")
    (('standard', '65000:100'), ('large', '4200000000:1:2'), None)
    """
    if not isinstance(value, str):
        return None
    if match := _STANDARD_COMMUNITY_RE.fullmatch(value):
        parts = [int(p) for p in match.groups()]
        return ("standard", ":".join(map(str, parts))) if max(parts) <= 0xFFFF else None
    if match := _LARGE_COMMUNITY_RE.fullmatch(value):
        parts = [int(p) for p in match.groups()]
        return ("large", ":".join(map(str, parts))) if max(parts) <= MAX_AS_NUMBER else None
    return None


def valid_label_key(key: Any) -> bool:
    if not isinstance(key, str):
        return False
    prefix, slash, name = key.rpartition("/")
    if slash and not (0 < len(prefix) <= 253 and NAME_RE.fullmatch(prefix)):
        return False
    return bool(_LABEL_NAME_RE.fullmatch(name))


def valid_label_value(value: Any) -> bool:
    return isinstance(value, str) and bool(_LABEL_VALUE_RE.fullmatch(value))


class Reader:
    """Field access into one raw resource, raising ``ValidationError`` with the field's dotted path."""

    def __init__(self, kind: str, name: str, raw: Any, *, prefix: str = "") -> None:
        self.kind, self.name, self.raw, self.prefix = kind, name, raw, prefix
        if not prefix and (not isinstance(name, str) or not NAME_RE.fullmatch(name)):
            raise self.error("metadata.name", "is not a valid resource name (DNS-1123 subdomain)")
        if not isinstance(raw, dict):
            raise self.error("", "is not a JSON object" if not prefix else f"{show(raw)} is not an object")

    def child(self, path: str, raw: Any) -> Reader:
        """A reader for a nested object (a list item), reporting fields under ``path``."""
        return Reader(self.kind, self.name, raw, prefix=".".join(p for p in (self.prefix, path) if p))

    def error(self, field: str, problem: str) -> ValidationError:
        where = ".".join(part for part in (self.prefix, field) if part)
        return ValidationError(self.kind, self.name if isinstance(self.name, str) else "?", where, problem)

    def get(self, path: str, default: Any = _MISSING) -> Any:
        node: Any = self.raw
        walked: list[str] = []
        for part in path.split("."):
            if node is None:
                return default
            if not isinstance(node, dict):
                raise self.error(".".join(walked), f"{show(node)} is not an object")
            walked.append(part)
            node = node.get(part)
        return default if node is None else node

    def boolean(self, path: str) -> bool | None:
        value = self.get(path, None)
        if value is not None and not isinstance(value, bool):
            raise self.error(path, f"{show(value)} is not a boolean")
        return value

    def integer(self, path: str, low: int, high: int) -> int | None:
        value = self.get(path, None)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(path, f"{show(value)} is not an integer")
        if not low <= value <= high:
            raise self.error(path, f"{value} is out of range {low}-{high}")
        return value

    def choice(self, path: str, choices: tuple[str, ...], default: str) -> str:
        value = self.get(path, "")
        if value == "":
            return default
        if value not in choices:
            raise self.error(path, f"{show(value)} is not one of {', '.join(choices)}")
        return value

    def as_number(self, path: str) -> int | None:
        value = self.get(path, None)
        if value is None:
            return None
        parsed = parse_as_number(value)
        if parsed is None:
            raise self.error(path, f"{show(value)} is not an AS number (1-{MAX_AS_NUMBER} or asdot X.Y)")
        return parsed

    def duration(self, path: str, high: int) -> int | None:
        """Whole seconds, 0..``high``; None when unset."""
        value = self.get(path, None)
        if value is None:
            return None
        seconds = parse_duration(value)
        if seconds is None:
            raise self.error(path, f"{show(value)} is not a duration (like '90s' or '2m')")
        if seconds > high:
            raise self.error(path, f"{show(value)} is longer than {high}s")
        return seconds

    def string(self, path: str, pattern: re.Pattern[str], what: str) -> str:
        """A string that fully matches ``pattern``; "" when unset."""
        value = self.get(path, "")
        if value == "":
            return ""
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise self.error(path, f"{show(value)} is not {what}")
        return value

    def name_ref(self, path: str, kind: str) -> str:
        """The name of another resource (a Node, a BGPFilter): a valid resource name or ""."""
        return self.string(path, NAME_RE, f"a valid {kind} name")

    def ip(self, path: str) -> str:
        value = self.get(path, "")
        if value == "":
            return ""
        try:
            return addresses.canonical_ip(value)
        except addresses.AddressError as exc:
            raise self.error(path, f"{show(value)} {_address_problem(exc, 'an IP address')}") from None

    def cidr(self, path: str, value: Any) -> str:
        """A network (a bare address means /32 or /128), normalised; host bits are cleared."""
        try:
            return addresses.canonical_network(value, strict=False)
        except addresses.AddressError as exc:
            raise self.error(path, f"{show(value)} {_address_problem(exc, 'an IP network')}") from None

    def items(self, path: str) -> list[Any]:
        value = self.get(path, [])
        if not isinstance(value, list):
            raise self.error(path, f"{show(value)} is not a list")
        return value

    def selector(self, path: str) -> selector_lang.Selector | None:
        value = self.get(path, "")
        if value == "":
            return None
        if not isinstance(value, str):
            raise self.error(path, f"{show(value)} is not a selector string")
        if not value.strip():
            # "" means unset (a global peering); blank but not empty is ambiguous, so say so.
            raise self.error(path, f"{show(value)} is blank (write all() or leave it unset)")
        try:
            return selector_lang.parse(value)
        except selector_lang.SelectorError as exc:
            raise self.error(path, f"is not a valid selector: {exc}") from None

    def secret_ref(self, path: str) -> SecretRef | None:
        """``{secretKeyRef: {name, key}}`` under ``path``; None when unset."""
        if self.get(path, None) is None:
            return None
        ref = f"{path}.secretKeyRef"
        if self.get(ref, None) is None:
            raise self.error(ref, "is required (only secretKeyRef passwords are supported)")
        name = self.get(f"{ref}.name", "")
        key = self.get(f"{ref}.key", "")
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise self.error(f"{ref}.name", f"{show(name)} is not a valid secret name")
        if not isinstance(key, str) or not _SECRET_KEY_RE.fullmatch(key) or key in (".", ".."):
            raise self.error(f"{ref}.key", f"{show(key)} is not a valid secret key")
        return SecretRef(name, key)

    def labels(self, path: str = "metadata.labels") -> tuple[tuple[str, str], ...]:
        value = self.get(path, {})
        if not isinstance(value, dict):
            raise self.error(path, f"{show(value)} is not an object")
        for key, label in value.items():
            if not valid_label_key(key):
                raise self.error(path, f"key {show(key)} is not a valid label key")
            if not valid_label_value(label):
                raise self.error(f"{path}.{key}", f"{show(label)} is not a valid label value")
        return tuple(sorted(value.items()))
