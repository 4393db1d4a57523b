"""Throwaway X.509 material for labs and tests that run etcd over TLS: one CA, a server certificate for the
etcd members, and client certificates, made with the ``openssl`` command (the venv has no ``cryptography``).

Stage: lab and test setup only; nothing here runs inside the daemon.

Owns: the files it writes under the directory it is given (``ca.crt``/``ca.key``, ``server.crt``/``.key``,
``client-<name>.crt``/``.key``); private keys are created mode 0600.

Complicating factors:
- etcd (Go) checks the server certificate's subjectAltName, never its CN, so every address a client dials
  must be an IP SAN; ``localhost`` and 127.0.0.1 are always included.
- Go also enforces extendedKeyUsage: etcd started with ``--client-cert-auth`` refuses a client certificate
  without ``clientAuth``. The server certificate carries ``clientAuth`` as well as ``serverAuth``: etcd's
  own gRPC gateway dials the member with it, and a cluster's members present it to each other as peers.
- Failure cases for the tests are ordinary certificates with one thing wrong: ``expired=True`` issues one
  whose validity ended a day before it began (``openssl x509 -days -1``), and a certificate from a different
  CA is simply another ``generate`` call in another directory.
- EC P-256 keys: generating them costs milliseconds, where RSA would slow every TLS test's setup.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path

OPENSSL = "openssl"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class CertError(RuntimeError):
    """openssl failed; the message carries the command's stderr."""


@dataclass(frozen=True)
class CertSet:
    """Paths of one generated set; ``client(name)`` gives the (cert, key) of a client issued with it."""

    directory: Path
    ca: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_names: tuple[str, ...] = ()

    def client(self, name: str = "client") -> tuple[Path, Path]:
        if name not in self.client_names:
            have = list(self.client_names)
            raise KeyError(f"no client certificate {name!r} in {self.directory} (have {have})")
        return self.directory / f"client-{name}.crt", self.directory / f"client-{name}.key"


def _run(argv: Sequence[str]) -> None:
    result = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise CertError(f"{' '.join(argv[:3])} failed: {result.stderr.strip()[-500:]}")


def _new_key(path: Path) -> None:
    # The key file is created 0600 before openssl writes into it, so it is never readable by others.
    path.unlink(missing_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    _run([OPENSSL, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path)])
    os.chmod(path, 0o600)


def _check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"certificate name {name!r}: use letters, digits, '.', '_' or '-' (max 63)")
    return name


def issue(
    certs: CertSet,
    name: str,
    *,
    server_ips: Sequence[str] = (),
    days: int = 30,
    expired: bool = False,
) -> tuple[Path, Path]:
    """Issue a leaf signed by ``certs``' CA: a server certificate when ``server_ips`` is given (written as
    ``server-<name>``), else a client certificate ``client-<name>`` with CN=name. Returns (cert, key).

    ``expired=True`` makes a certificate that is already out of date, for the error-path tests."""
    _check_name(name)
    server = bool(server_ips)
    stem = f"{'server' if server else 'client'}-{name}"
    cert, key = certs.directory / f"{stem}.crt", certs.directory / f"{stem}.key"
    _new_key(key)
    if server:
        addresses = sorted({str(ip_address(ip)) for ip in [*server_ips, "127.0.0.1"]})
        san = ",".join(["DNS:localhost", *(f"IP:{ip}" for ip in addresses)])
        extensions = f"subjectAltName={san}\nextendedKeyUsage=serverAuth,clientAuth\n"
    else:
        extensions = "extendedKeyUsage=clientAuth\n"
    extensions += "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
    with tempfile.TemporaryDirectory(dir=certs.directory) as scratch:
        csr, ext = Path(scratch) / "req.csr", Path(scratch) / "ext.cnf"
        ext.write_text(extensions)
        _run([OPENSSL, "req", "-new", "-key", str(key), "-subj", f"/CN={name}", "-out", str(csr)])
        _run([
            OPENSSL, "x509", "-req", "-in", str(csr), "-CA", str(certs.ca), "-CAkey", str(certs.ca_key),
            "-set_serial", str(int.from_bytes(os.urandom(8), "big")),
            "-days", "-1" if expired else str(days), "-extfile", str(ext), "-out", str(cert),
        ])  # fmt: skip
    return cert, key


def generate(
    directory: Path,
    server_ips: Sequence[str],
    *,
    client_names: Sequence[str] = ("client",),
    days: int = 30,
) -> CertSet:
    """A fresh CA in ``directory`` (created if missing), a server certificate valid for ``server_ips`` (plus
    127.0.0.1 and localhost) and one client certificate per name."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    names = tuple(_check_name(n) for n in client_names)
    ca, ca_key = directory / "ca.crt", directory / "ca.key"
    _new_key(ca_key)
    _run([
        OPENSSL, "req", "-x509", "-new", "-key", str(ca_key),
        "-subj", f"/CN=calico-bgp test CA {directory.name}",
        "-days", str(days), "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", str(ca),
    ])  # fmt: skip
    certs = CertSet(directory, ca, ca_key, directory / "server.crt", directory / "server.key", names)
    cert, key = issue(certs, "etcd", server_ips=server_ips, days=days)
    cert.replace(certs.server_cert)
    key.replace(certs.server_key)
    for name in names:
        issue(certs, name, days=days)
    return certs
