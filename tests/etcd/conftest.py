"""A throwaway etcd for the datastore tests: Debian's /usr/bin/etcd on free loopback ports with a temp
data dir. ``EtcdServer`` can be killed and started again on the same port and data dir (an outage that
keeps the data), or stopped and continued (a silent one). The fixture kills only the process it started
and removes the data dir in all outcomes.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EtcdServer:
    """``certs`` (labs.certs.CertSet): serve https with its server certificate and require client
    certificates signed by its CA; ``extra_args`` go to etcd as they are."""

    def __init__(self, data_dir: Path, *, certs=None, extra_args: tuple[str, ...] = ()) -> None:
        self.data_dir = data_dir
        self.client_port = free_port()
        self.peer_port = free_port()
        self.certs = certs
        self.extra_args = extra_args
        self.endpoint = f"{'https' if certs else 'http'}://127.0.0.1:{self.client_port}"
        self.log = data_dir.parent / f"{data_dir.name}.log"
        self.proc: subprocess.Popen | None = None

    def _health_context(self) -> ssl.SSLContext | None:
        if self.certs is None:
            return None
        context = ssl.create_default_context(cafile=str(self.certs.ca))
        context.load_cert_chain(*(str(p) for p in self.certs.client()))
        return context

    def start(self, timeout: float = 20.0) -> None:
        peer = f"http://127.0.0.1:{self.peer_port}"
        args = [
            ETCD,
            "--name", "confgen-test",
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.endpoint,
            "--advertise-client-urls", self.endpoint,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"confgen-test={peer}",
            *self.extra_args,
        ]  # fmt: skip
        if self.certs is not None:
            args += [
                "--cert-file", str(self.certs.server_cert), "--key-file", str(self.certs.server_key),
                "--client-cert-auth", "--trusted-ca-file", str(self.certs.ca),
            ]  # fmt: skip
        log = open(self.log, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(
                    f"{self.endpoint}/health", timeout=1, context=self._health_context()
                ) as response,
            ):
                if b'"health":"true"' in response.read():
                    return
            time.sleep(0.05)
        raise RuntimeError(f"etcd did not become healthy: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL: connections drop the way they do when a datastore host dies."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def pause(self) -> None:
        """SIGSTOP: a silent etcd. Its TCP connections stay open (the kernel still ACKs), nothing answers."""
        assert self.proc is not None and self.proc.poll() is None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.resume()  # a stopped process would hold SIGTERM pending
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None


@pytest.fixture
def etcd_server():
    base = Path(tempfile.mkdtemp(prefix="confgen-etcd-"))
    server = EtcdServer(base / "data")
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def etcd_server_factory():
    """``start(**EtcdServer keywords)`` for servers with options (TLS, auth flags); every one started is
    stopped and its directory removed in all outcomes."""
    started: list[tuple[EtcdServer, Path]] = []

    def start(**kwargs) -> EtcdServer:
        base = Path(tempfile.mkdtemp(prefix="confgen-etcd-"))
        server = EtcdServer(base / "data", **kwargs)
        started.append((server, base))
        server.start()
        return server

    try:
        yield start
    finally:
        for server, base in started:
            server.stop()
            shutil.rmtree(base, ignore_errors=True)
