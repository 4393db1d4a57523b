"""The gRPC channel to one etcd member: TLS and etcd authentication on top of aetcd, and failures turned
into one line an operator can act on.

Stage: under ``EtcdClient`` (confgen/datastore/etcd_client.py), which picks the endpoint and owns the retries.

Owns: ``ChannelClient``, aetcd's client with its connect step replaced so it can build a TLS channel
(aetcd only ever builds an insecure one), and ``describe_failure``, which maps gRPC's failure text to a
reason label and a message naming the endpoint and the likely cause.

Complicating factors:
- Everything except the channel is aetcd's: stubs, watcher, error mapping. ``connect`` fills the same
  attributes aetcd's own does, so every aetcd method works unchanged on the secure channel.
- With username/password, etcd's Authenticate RPC returns a token that must ride in the ``token``
  metadata of every call (aetcd's methods already pass ``self.metadata``). etcd's simple tokens expire
  after a period without use (5 minutes by default); ``reauthenticate`` fetches a new one for the calls
  that follow. The watch stream is authorised once, when it opens, so a lapsed token does not end it; a
  stream that fails is replaced on a fresh client (the syncer's reconnect), which authenticates anew.
- TLS 1.3 finishes the client's side of the handshake before the server checks the client certificate, so
  a refused client certificate never shows up as a handshake error here: gRPC reports an undecryptable
  record ("Unwrap failed"). The client certificate is therefore checked locally as well (present? expired?)
  to name the cause rather than guess.
- No message carries the password, the token or any key material.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
from collections.abc import Iterator
from typing import Any

import aetcd
import aetcd.client
import aetcd.rpc
import aetcd.watcher
import grpc

from confgen.datastore.etcd_security import (
    ENV_CA,
    ENV_CERT,
    ENV_PASSWORD,
    ENV_USERNAME,
    Endpoint,
    EtcdSecurity,
    EtcdSecurityError,
    TlsMaterial,
)


class ChannelClient(aetcd.Client):
    """aetcd's client on a channel we build: TLS when ``tls`` is given, plain otherwise."""

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        tls: TlsMaterial | None,
        credentials: tuple[str, str] | None,
        timeout: float,
        options: dict[str, Any],
    ) -> None:
        username, password = credentials if credentials is not None else (None, None)
        super().__init__(
            host=endpoint.host, port=endpoint.port, username=username, password=password,
            timeout=timeout, options=options,
        )  # fmt: skip
        self._endpoint = endpoint
        self._tls = tls

    @aetcd.client._handle_errors
    async def connect(self) -> None:
        if self._connected.is_set():
            return
        options = list(self._options.items())
        if self._tls is not None:
            creds = grpc.ssl_channel_credentials(self._tls.root, self._tls.key, self._tls.chain)
            self.channel = grpc.aio.secure_channel(self._endpoint.target, creds, options=options)
        else:
            self.channel = grpc.aio.insecure_channel(self._endpoint.target, options=options)
        self.auth_stub = aetcd.rpc.AuthStub(self.channel)
        self.kvstub = aetcd.rpc.KVStub(self.channel)
        self.clusterstub = aetcd.rpc.ClusterStub(self.channel)
        self.leasestub = aetcd.rpc.LeaseStub(self.channel)
        self.maintenancestub = aetcd.rpc.MaintenanceStub(self.channel)
        await self.reauthenticate()
        self._watcher = aetcd.watcher.Watcher(
            aetcd.rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata
        )
        self._connected.set()

    @aetcd.client._handle_errors
    async def reauthenticate(self) -> None:
        """A fresh token for the calls made from now on (no-op without credentials)."""
        if self._username is None or self._password is None:
            return
        response = await self.auth_stub.Authenticate(
            aetcd.rpc.AuthenticateRequest(name=self._username, password=self._password), timeout=self._timeout
        )
        self.metadata = (("token", response.token),)

    @property
    def authenticated(self) -> bool:
        return self._username is not None


# (pattern in gRPC's text, reason label, message); the first match wins.
_CAUSES: tuple[tuple[re.Pattern[str], str, str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), reason, message)
    for pattern, reason, message in (
        (r"CERTIFICATE_VERIFY_FAILED|certificate verify failed", "tls", "TLS handshake failed: certificate "
         "verify failed{ca_hint}"),
        (r"not in peer certificate|hostname|Peer name", "tls", "TLS handshake failed: the server's "
         "certificate does not name {host} in its subjectAltName"),
        (r"WRONG_VERSION_NUMBER|record layer failure|packet length too long", "tls", "TLS handshake failed: "
         "the server does not speak TLS on this port (use http://, or enable TLS on etcd)"),
        (r"Handshake read failed|Handshake write failed", "tls", "TLS handshake failed: the server closed "
         "the connection (is it serving TLS on this port?)"),
        (r"Unwrap failed|TSI_DATA_CORRUPTED|BAD_CERTIFICATE|certificate required|UNKNOWN_CA|"
         r"CERTIFICATE_EXPIRED", "tls", "TLS: the server refused our client certificate{cert_hint}"),
        (r"Tls handshake failed|Ssl handshake failed|SSL_ERROR", "tls", "TLS handshake failed: {detail}"),
        (r"invalid user ID or password|authentication failed", "auth", "authentication failed: wrong "
         f"{ENV_USERNAME} or {ENV_PASSWORD}"),
        (r"user name is empty|user name not found", "auth", "the server requires authentication: set "
         f"{ENV_USERNAME} and {ENV_PASSWORD}"),
        (r"authentication is not enabled", "auth", "authentication is not enabled on the server: unset "
         f"{ENV_USERNAME}/{ENV_PASSWORD} or enable auth on etcd"),
        (r"invalid auth token|auth token", "auth", "the server refused our auth token (expired or revoked)"),
        (r"permission denied", "auth", "permission denied: the etcd user lacks a role granting /calico/"),
    )
)  # fmt: skip


def describe_failure(endpoint: Endpoint, security: EtcdSecurity, exc: BaseException) -> tuple[str, str]:
    """(reason label, one-line message "etcd <url>: <cause>") for a failure to reach or use ``endpoint``."""
    if isinstance(exc, EtcdSecurityError):
        return "tls_config", f"etcd {endpoint.url}: {exc}"
    text = _failure_text(exc)
    for pattern, reason, message in _CAUSES:
        if pattern.search(text):
            cause = message.format(
                host=endpoint.host,
                detail=_short(text),
                ca_hint=_ca_hint(security),
                cert_hint=_client_cert_hint(security),
            )
            return reason, f"etcd {endpoint.url}: {cause}"
    return "error", f"etcd {endpoint.url}: {exc.__class__.__name__}: {_short(text)}"


# gRPC's wrapping around the one useful part: "failed to connect to all addresses; last error: UNKNOWN:
# ipv4:10.0.0.1:2379: <what happened>".
_GRPC_WRAPPING = re.compile(
    r"failed to connect to all addresses; last error: [A-Z_]+: (?:ipv4:[0-9.]+:\d+|ipv6:\[[^\]]*\]:\d+): "
)


def _failure_text(exc: BaseException) -> str:
    """The exception's text and its causes', each once, without gRPC's wrapping."""
    parts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(parts) < 4:
        text = (seen.details() or "") if isinstance(seen, grpc.aio.AioRpcError) else str(seen)
        text = _GRPC_WRAPPING.sub("", " ".join(text.split()))
        if text and not any(text in part for part in parts):
            parts.append(text)
        seen = seen.__cause__
    return " | ".join(parts)


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _ca_hint(security: EtcdSecurity) -> str:
    if security.ca_file is None:
        return (f" (no {ENV_CA} is set, so the system trust store was used: set it to the CA that signed the "
                "server's certificate)")  # fmt: skip
    return f" (is {ENV_CA} {security.ca_file} the CA that signed the server's certificate?)"


def _client_cert_hint(security: EtcdSecurity) -> str:
    if security.cert_file is None:
        return f": none was sent (set {ENV_CERT} and ETCD_KEY_FILE; etcd runs with --client-cert-auth)"
    try:
        material = security.load_tls()
    except EtcdSecurityError as exc:
        return f" ({exc})"
    not_after = certificate_not_after(material.chain or b"")
    if not_after is not None and not_after < dt.datetime.now(dt.UTC):
        return f" ({ENV_CERT} {security.cert_file} expired on {not_after:%Y-%m-%d %H:%M:%S} UTC)"
    return (f" ({ENV_CERT} {security.cert_file}: expired, revoked, or not signed by a CA in etcd's "
            "--trusted-ca-file?)")  # fmt: skip


# --- the certificate's notAfter, from DER, without a crypto library ---------------------------------------


def certificate_not_after(pem: bytes) -> dt.datetime | None:
    """notAfter of the first certificate in ``pem`` (UTC), or None if it cannot be read."""
    match = re.search(rb"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", pem, re.DOTALL)
    if match is None:
        return None
    try:
        der = base64.b64decode(b"".join(match.group(1).split()), validate=True)
        certificate = _children(_value(der, 0, 0x30))
        tbs = list(_children(_value(der, next(certificate), 0x30)))
        # tbsCertificate: [0] version (optional), serial, signature algorithm, issuer, validity, ...
        index = 1 if der[tbs[0]] == 0xA0 else 0
        validity = list(_children(_value(der, tbs[index + 3], 0x30)))
        tag, body = der[validity[1]], _value(der, validity[1], None)
        return _parse_time(tag, der[body.start : body.stop].decode("ascii"))
    except (ValueError, IndexError, StopIteration, binascii.Error, UnicodeDecodeError):
        return None


class _Span:
    __slots__ = ("data", "start", "stop")

    def __init__(self, data: bytes, start: int, stop: int) -> None:
        self.data, self.start, self.stop = data, start, stop


def _value(der: bytes, offset: int, tag: int | None) -> _Span:
    """The content span of the TLV at ``offset`` (checking its tag when given)."""
    if tag is not None and der[offset] != tag:
        raise ValueError(f"tag {der[offset]:#x} at {offset}, expected {tag:#x}")
    length, at = der[offset + 1], offset + 2
    if length & 0x80:
        count = length & 0x7F
        if not 0 < count <= 4:
            raise ValueError("bad DER length")
        length, at = int.from_bytes(der[at : at + count], "big"), at + count
    if at + length > len(der):
        raise ValueError("DER value runs past the end")
    return _Span(der, at, at + length)


def _children(span: _Span) -> Iterator[int]:
    """Offsets of the TLVs directly inside ``span``."""
    at = span.start
    while at < span.stop:
        yield at
        at = _value(span.data, at, None).stop


def _parse_time(tag: int, text: str) -> dt.datetime:
    if tag == 0x17:  # UTCTime YYMMDDHHMMSSZ, years 1950-2049
        moment = dt.datetime.strptime(text, "%y%m%d%H%M%SZ")
        if moment.year >= 2050:
            moment = moment.replace(year=moment.year - 100)
    elif tag == 0x18:  # GeneralizedTime YYYYMMDDHHMMSSZ
        moment = dt.datetime.strptime(text, "%Y%m%d%H%M%SZ")
    else:
        raise ValueError(f"not a time tag {tag:#x}")
    return moment.replace(tzinfo=dt.UTC)
