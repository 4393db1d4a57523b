"""How to reach etcd securely: endpoint URLs, TLS files and username/password, read the way calico-node
reads them (``ETCD_ENDPOINTS``, ``ETCD_CA_CERT_FILE``, ``ETCD_CERT_FILE``, ``ETCD_KEY_FILE``,
``ETCD_USERNAME``, ``ETCD_PASSWORD``).

Stage: configuration for the datastore connection; pure apart from reading the files it names.
``EtcdClient`` (confgen/datastore/etcd_client.py) turns an ``EtcdSecurity`` into a gRPC channel.

Owns: the settings value, the checks that turn a bad setting into one line naming the setting and the
problem, and the loading of the PEM bytes gRPC wants.

Complicating factors:
- Calico uses username and password only when *both* are set; one without the other is ignored, not an
  error. We do the same, and say so as a warning, since an operator who set one meant something.
- An https endpoint with no CA file is legitimate: the server is then verified against the system trust
  store (gRPC's default roots).
- TLS files on an http:// endpoint would be silently unused: refused, because the operator plainly wanted
  TLS and would otherwise send everything in clear.
- The files are read again at every connect, so a renewed certificate (or a corrected path's content) is
  picked up by the next reconnect without restarting the daemon.
- The password must never be shown: ``repr`` masks it, and no message built here includes it or any key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

ENV_CA = "ETCD_CA_CERT_FILE"
ENV_CERT = "ETCD_CERT_FILE"
ENV_KEY = "ETCD_KEY_FILE"
ENV_USERNAME = "ETCD_USERNAME"
ENV_PASSWORD = "ETCD_PASSWORD"

# PEM files for etcd are a few KiB; a bound keeps a mistaken path (a disk image, /dev/zero) harmless.
MAX_PEM_BYTES = 1024 * 1024


class EtcdSecurityError(ValueError):
    """A setting that cannot work; the message is one line naming the setting and the problem."""


@dataclass(frozen=True)
class Endpoint:
    """One parsed etcd endpoint; ``url`` is the text as given, for messages."""

    scheme: str  # "http" or "https"
    host: str
    port: int
    url: str

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    @property
    def target(self) -> str:
        """gRPC target: host:port, IPv6 in brackets."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_endpoint(endpoint: str) -> Endpoint:
    """``Endpoint`` from "http://10.0.0.1:2379", "https://etcd1:2379" or a bare "host:port" (http)."""
    text = endpoint.strip()
    parts = urlsplit(text if "//" in text else f"http://{text}")
    if parts.scheme not in ("http", "https"):
        raise EtcdSecurityError(f"etcd endpoint {endpoint!r}: scheme must be http:// or https://")
    try:
        port = parts.port or 2379
    except ValueError as exc:
        raise EtcdSecurityError(f"etcd endpoint {endpoint!r}: bad port ({exc})") from None
    if not parts.hostname:
        raise EtcdSecurityError(f"etcd endpoint {endpoint!r}: no host")
    return Endpoint(parts.scheme, parts.hostname, port, text)


@dataclass(frozen=True)
class TlsMaterial:
    """PEM bytes for ``grpc.ssl_channel_credentials``; None means gRPC's default (system roots, no client
    certificate)."""

    root: bytes | None
    key: bytes | None
    chain: bytes | None

    def __repr__(self) -> str:  # the key is a secret
        given = (f"{name}={getattr(self, name) is not None}" for name in ("root", "key", "chain"))
        return f"TlsMaterial({', '.join(given)})"


@dataclass(frozen=True)
class EtcdSecurity:
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{name}={getattr(self, name)!r}" for name in ("ca_file", "cert_file", "key_file", "username")
        )
        return f"EtcdSecurity({shown}, password={'<set>' if self.password else None})"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> EtcdSecurity:
        """calico-node's variables; empty values count as unset."""

        def path(name: str) -> Path | None:
            value = environ.get(name, "").strip()
            return Path(value) if value else None

        return cls(
            ca_file=path(ENV_CA),
            cert_file=path(ENV_CERT),
            key_file=path(ENV_KEY),
            username=environ.get(ENV_USERNAME) or None,
            password=environ.get(ENV_PASSWORD) or None,
        )

    @property
    def uses_tls_files(self) -> bool:
        return any(p is not None for p in (self.ca_file, self.cert_file, self.key_file))

    @property
    def credentials(self) -> tuple[str, str] | None:
        """(username, password) when both are set, else None: Calico ignores one without the other."""
        if self.username and self.password:
            return self.username, self.password
        return None

    def validate(self, endpoints: Sequence[str]) -> list[Endpoint]:
        """The parsed endpoints, or ``EtcdSecurityError`` with one line saying what is wrong: ``check``,
        and every file named is a readable PEM file of the right kind."""
        parsed = self.check(endpoints)
        self.load_tls()
        return parsed

    def check(self, endpoints: Sequence[str]) -> list[Endpoint]:
        """``validate`` without reading the files: the settings that can never work whatever the files
        hold (a daemon retries a missing file, since it may yet appear; it cannot retry these)."""
        if not endpoints:
            raise EtcdSecurityError("no etcd endpoints (set ETCD_ENDPOINTS)")
        parsed = [parse_endpoint(e) for e in endpoints]
        if (self.cert_file is None) != (self.key_file is None):
            given, missing = (ENV_CERT, ENV_KEY) if self.key_file is None else (ENV_KEY, ENV_CERT)
            raise EtcdSecurityError(f"{given} is set but {missing} is not: a client certificate needs both")
        if self.uses_tls_files:
            plain = [e.url for e in parsed if not e.tls]
            if plain:
                raise EtcdSecurityError(
                    f"etcd endpoint {plain[0]} is plain http but TLS files are set "
                    f"({', '.join(self._tls_settings())}): use https:// endpoints"
                )
        return parsed

    def warnings(self, endpoints: Sequence[str]) -> list[str]:
        """Settings that work but are probably not what the operator meant."""
        out = []
        if bool(self.username) != bool(self.password):
            given, missing = (ENV_USERNAME, ENV_PASSWORD) if self.username else (ENV_PASSWORD, ENV_USERNAME)
            out.append(f"{given} is set without {missing}: etcd authentication is not used (it needs both)")
        if self.credentials is not None:
            plain = [e for e in endpoints if not parse_endpoint(e).tls]
            if plain:
                out.append(f"etcd endpoint {plain[0]} is plain http: the etcd password is sent unencrypted")
        return out

    def _tls_settings(self) -> list[str]:
        pairs = ((ENV_CA, self.ca_file), (ENV_CERT, self.cert_file), (ENV_KEY, self.key_file))
        return [name for name, value in pairs if value is not None]

    def load_tls(self) -> TlsMaterial:
        """Read the PEM files (again: a renewed file is picked up at the next connect)."""
        return TlsMaterial(
            root=_read_pem(ENV_CA, self.ca_file, b"CERTIFICATE"),
            key=_read_pem(ENV_KEY, self.key_file, b"PRIVATE KEY"),
            chain=_read_pem(ENV_CERT, self.cert_file, b"CERTIFICATE"),
        )


def _read_pem(setting: str, path: Path | None, label: bytes) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as handle:
            if not os.path.isfile(path):
                raise EtcdSecurityError(f"{setting} {path}: not a regular file")
            data = handle.read(MAX_PEM_BYTES + 1)
    except OSError as exc:
        raise EtcdSecurityError(f"{setting} {path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_PEM_BYTES:
        raise EtcdSecurityError(f"{setting} {path}: larger than {MAX_PEM_BYTES} bytes, not a PEM file")
    # "-----BEGIN CERTIFICATE-----", "-----BEGIN EC PRIVATE KEY-----", "-----BEGIN PRIVATE KEY-----", ...
    if b"-----BEGIN " not in data or label + b"-----" not in data:
        kind = "private key" if label == b"PRIVATE KEY" else "certificate"
        raise EtcdSecurityError(f"{setting} {path}: no PEM {kind} in the file")
    return data
