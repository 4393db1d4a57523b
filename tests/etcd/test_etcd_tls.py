"""etcd as calico-node reaches it, against a real etcd: https with server verification and client
certificates (``--client-cert-auth --trusted-ca-file``), and username/password (``auth enable``).

What must hold: list and watch work through TLS; a wrong CA, an expired, missing or foreign client
certificate, a wrong password each give one line naming the endpoint and the cause; the syncer keeps its
last snapshot through such a failure and recovers once the file is fixed; the etcd token is renewed when it
lapses; the resource CLI works over TLS; no password, token or key text reaches a message or a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import subprocess
import time

import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry

from bgp.resources_cli import apply, get
from confgen.datastore import keys
from confgen.datastore.etcd import EtcdSyncer
from confgen.datastore.etcd_client import EtcdClient, EtcdConnectError
from confgen.datastore.etcd_security import EtcdSecurity
from labs import certs as certs_mod

pytestmark = pytest.mark.etcd

PASSWORD = "s3cret-Pa55word"
TOKEN_TTL = 2  # seconds; short so that the token lapses inside a test
CLIENT_TIMEOUT = 2.0  # each gRPC call's deadline in the syncer under test
BACKOFF_MAX = 1.0
# The longest one failed resync can take: a connect that runs into its deadline, the watch tasks' stop bound
# and the close (each CLIENT_TIMEOUT at most), then the backoff with its 20 % jitter.
ATTEMPT_BOUND = 3 * CLIENT_TIMEOUT + BACKOFF_MAX * 1.2


@pytest.fixture
def pki(tmp_path):
    good = certs_mod.generate(tmp_path / "pki", ["127.0.0.1"], client_names=("client",))
    other = certs_mod.generate(tmp_path / "other", ["127.0.0.1"], client_names=("client",))
    expired = certs_mod.issue(good, "old", expired=True)
    return good, other, expired


@pytest.fixture
def tls_server(pki, etcd_server_factory):
    return etcd_server_factory(certs=pki[0])


@pytest.fixture
def auth_server(etcd_server_factory):
    etcd = etcd_server_factory(extra_args=("--auth-token", "simple", "--auth-token-ttl", str(TOKEN_TTL)))
    ctl = ["etcdctl", "--endpoints", etcd.endpoint]
    env = {"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}
    for argv in (["user", "add", f"root:{PASSWORD}"], ["auth", "enable"]):
        subprocess.run(ctl + argv, env=env, check=True, capture_output=True, timeout=20)
    return etcd


def good_security(pki) -> EtcdSecurity:
    ca = pki[0]
    cert, key = ca.client()
    return EtcdSecurity(ca_file=ca.ca, cert_file=cert, key_file=key)


def node(name, ip):
    return {"kind": "Node", "apiVersion": "projectcalico.org/v3", "metadata": {"name": name},
            "spec": {"bgp": {"ipv4Address": ip}}}  # fmt: skip


async def put(endpoint, security, key, value):
    client = EtcdClient([endpoint], security=security)
    await client.connect()
    try:
        return await client.put(key, value)
    finally:
        await client.close()


async def put_node(endpoint, security, name, ip):
    await put(endpoint, security, keys.resource_key("Node", name), json.dumps(node(name, ip)))


async def connect_error(endpoint, security) -> EtcdConnectError:
    client = EtcdClient([endpoint], timeout=3.0, security=security)
    try:
        await client.connect()
        await client.get_prefixes(["/calico/"])
    except EtcdConnectError as exc:
        return exc
    finally:
        await client.close()
    raise AssertionError("the client connected and read")


async def wait_until(predicate, timeout=20.0, what="condition", state=None):
    """``state``: what to show if the wait times out (the syncer's counters and last error, say)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}" + (f"; {state()}" if state else ""))


class Running:
    def __init__(self, endpoint, security):
        self.registry = CollectorRegistry()
        self.syncer = EtcdSyncer(
            lambda: EtcdClient([endpoint], timeout=CLIENT_TIMEOUT, security=security), "node1",
            registry=self.registry, backoff_max=BACKOFF_MAX, stop_timeout=CLIENT_TIMEOUT,
        )  # fmt: skip
        self.snapshots = []
        self.task = None

    async def __aenter__(self):
        self.task = asyncio.create_task(self.syncer.run(self.snapshots.append))
        return self

    async def __aexit__(self, *exc):
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    def errors(self, reason):
        return self.registry.get_sample_value("calico_bgp_datastore_errors_total", {"reason": reason}) or 0

    def state(self) -> str:
        counts = {
            sample.labels["reason"]: sample.value
            for metric in self.registry.collect() if metric.name == "calico_bgp_datastore_errors"
            for sample in metric.samples if sample.name.endswith("_total")
        }  # fmt: skip
        return f"in_sync={self.syncer.in_sync} errors={counts} last_error={self.syncer.last_error!r}"

    def nodes(self):
        return set(self.snapshots[-1].resources.get("Node", {})) if self.snapshots else set()


async def test_list_and_watch_over_tls_with_client_certificate(pki, tls_server):
    security = good_security(pki)
    await put_node(tls_server.endpoint, security, "node1", "10.0.0.11/24")
    async with Running(tls_server.endpoint, security) as run:
        await wait_until(lambda: "node1" in run.nodes(), what="the first snapshot over TLS")
        await put_node(tls_server.endpoint, security, "node2", "10.0.0.12/24")
        await wait_until(lambda: run.nodes() == {"node1", "node2"}, what="a watch event over TLS")
        assert run.syncer.in_sync


def _wrong_ca(pki):
    return EtcdSecurity(ca_file=pki[1].ca, cert_file=pki[0].client()[0], key_file=pki[0].client()[1])


def _no_client_cert(pki):
    return EtcdSecurity(ca_file=pki[0].ca)


def _expired_client_cert(pki):
    return EtcdSecurity(ca_file=pki[0].ca, cert_file=pki[2][0], key_file=pki[2][1])


def _foreign_client_cert(pki):
    cert, key = pki[1].client()
    return EtcdSecurity(ca_file=pki[0].ca, cert_file=cert, key_file=key)


def _missing_cert_file(pki):
    absent = pki[0].directory / "absent.crt"
    return EtcdSecurity(ca_file=pki[0].ca, cert_file=absent, key_file=pki[0].client()[1])


@pytest.mark.parametrize(
    ("make", "reason", "cause"),
    [
        (_wrong_ca, "tls", "TLS handshake failed: certificate verify failed (is ETCD_CA_CERT_FILE"),
        (_no_client_cert, "tls", "refused our client certificate: none was sent (set ETCD_CERT_FILE"),
        (_expired_client_cert, "tls", "client-old.crt expired on "),
        (_foreign_client_cert, "tls", "not signed by a CA in etcd's --trusted-ca-file?"),
        (_missing_cert_file, "tls_config", "ETCD_CERT_FILE"),
    ],
    ids=["wrong-ca", "no-client-cert", "expired-client-cert", "foreign-client-cert", "missing-cert-file"],
)
async def test_tls_failures_name_the_endpoint_and_the_cause(pki, tls_server, make, reason, cause):
    security = make(pki)
    error = await connect_error(tls_server.endpoint, security)
    message = str(error)
    assert error.reason == reason
    assert message.startswith(f"no etcd endpoint answered: etcd {tls_server.endpoint}: "), message
    assert cause in message, message
    assert "\n" not in message
    if security.key_file is not None and security.key_file.exists():
        assert security.key_file.read_text().splitlines()[1] not in message


async def test_syncer_keeps_its_snapshot_through_a_tls_failure_and_recovers(pki, tls_server, tmp_path):
    good = good_security(pki)
    ca_copy = tmp_path / "ca.crt"  # the file the operator points ETCD_CA_CERT_FILE at
    shutil.copy(pki[0].ca, ca_copy)
    security = EtcdSecurity(ca_file=ca_copy, cert_file=good.cert_file, key_file=good.key_file)
    await put_node(tls_server.endpoint, good, "node1", "10.0.0.11/24")
    async with Running(tls_server.endpoint, security) as run:
        await wait_until(lambda: run.syncer.in_sync and "node1" in run.nodes(), what="the first snapshot")
        # The CA file now holds the wrong CA and the connection drops: every reconnect fails verification.
        shutil.copy(pki[1].ca, ca_copy)
        # In a thread: the syncer's loop keeps running through the restart, as a daemon's would.
        await asyncio.to_thread(tls_server.kill)
        await asyncio.to_thread(tls_server.start)
        # The drop, then two failed handshakes: three resyncs, each within ATTEMPT_BOUND.
        await wait_until(
            lambda: run.errors("tls") >= 2,
            timeout=3 * ATTEMPT_BOUND + 10,
            what="TLS failures counted",
            state=run.state,
        )
        assert not run.syncer.in_sync
        assert run.nodes() == {"node1"}  # the last good view, never an empty one
        assert f"etcd {tls_server.endpoint}: TLS handshake failed: certificate verify failed" in (
            run.syncer.last_error or ""
        )
        await put_node(tls_server.endpoint, good, "node2", "10.0.0.12/24")
        # Fixed in place: the next reconnect reads the file again.
        shutil.copy(pki[0].ca, ca_copy)
        await wait_until(
            lambda: run.syncer.in_sync and run.nodes() == {"node1", "node2"}, what="recovery", state=run.state
        )
        assert run.syncer.last_error is None


async def test_password_auth_renews_a_lapsed_token(auth_server):
    security = EtcdSecurity(username="root", password=PASSWORD)
    client = EtcdClient([auth_server.endpoint], security=security)
    await client.connect()
    try:
        await client.put("/calico/test/a", "1")
        first_token = client._c.metadata
        await asyncio.sleep(TOKEN_TTL + 1.5)  # etcd drops a simple token unused for its TTL
        _, values = await client.get_prefix("/calico/test/")
        assert values == {"/calico/test/a": b"1"}
        assert client._c.metadata != first_token
    finally:
        await client.close()


async def test_syncer_stays_in_sync_with_auth_across_token_lapses(auth_server):
    security = EtcdSecurity(username="root", password=PASSWORD)
    await put_node(auth_server.endpoint, security, "node1", "10.0.0.11/24")
    async with Running(auth_server.endpoint, security) as run:
        await wait_until(lambda: "node1" in run.nodes(), what="the first snapshot with auth")
        # The liveness probe runs every 5 s, past the token's 2 s TTL: each probe needs a renewed token.
        await asyncio.sleep(7.0)
        await put_node(auth_server.endpoint, security, "node2", "10.0.0.12/24")
        await wait_until(lambda: run.nodes() == {"node1", "node2"}, what="a watch event with auth")
        assert run.syncer.in_sync
        assert sum(run.errors(r) for r in ("auth", "error", "unresponsive", "unexpected")) == 0


@pytest.mark.parametrize(
    ("security", "cause"),
    [
        (EtcdSecurity(username="root", password="x" + PASSWORD), "authentication failed: wrong ETCD_USER"),
        (EtcdSecurity(), "the server requires authentication: set ETCD_USERNAME and ETCD_PASSWORD"),
    ],
    ids=["wrong-password", "no-credentials"],
)
async def test_auth_failures_are_clear_and_never_show_the_password(auth_server, caplog, security, cause):
    error = await connect_error(auth_server.endpoint, security)
    assert error.reason == "auth"
    assert f"etcd {auth_server.endpoint}: " in str(error) and cause in str(error), str(error)
    assert PASSWORD not in str(error) and PASSWORD not in repr(security)
    with caplog.at_level(logging.DEBUG):
        async with Running(auth_server.endpoint, security) as run:
            await wait_until(lambda: run.errors("auth") >= 1, what="the auth failure counted")
    assert cause in caplog.text
    assert PASSWORD not in caplog.text


def test_resource_cli_over_tls(pki, tls_server):
    ca = pki[0]
    cert, key = ca.client()
    flags = ["--etcd-endpoints", tls_server.endpoint, "--etcd-ca-cert-file", str(ca.ca),
             "--etcd-cert-file", str(cert), "--etcd-key-file", str(key)]  # fmt: skip
    document = "apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {name: tor}\n"
    document += "spec: {peerIP: 10.0.0.1, asNumber: 64512}\n"
    result = CliRunner().invoke(apply, ["-f", "-", *flags], input=document)
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(get, ["bgppeer", "tor", "-o", "json", *flags])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["spec"]["peerIP"] == "10.0.0.1"
    # The same through calico-node's variables, and a wrong CA as one clear line.
    env = {"ETCD_ENDPOINTS": tls_server.endpoint, "ETCD_CA_CERT_FILE": str(pki[1].ca),
           "ETCD_CERT_FILE": str(cert), "ETCD_KEY_FILE": str(key)}  # fmt: skip
    result = CliRunner().invoke(get, ["bgppeer", "tor"], env=env)
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: no etcd endpoint answered: etcd {tls_server.endpoint}: TLS handshake failed: certificate "
        f"verify failed (is ETCD_CA_CERT_FILE {pki[1].ca} the CA that signed the server's certificate?)"
    ]


def test_resource_cli_password_flag_warns_and_works(auth_server):
    flags = ["--etcd-endpoints", auth_server.endpoint, "--etcd-username", "root", "--etcd-password", PASSWORD]
    result = CliRunner().invoke(get, ["bgppeer", *flags])
    assert result.exit_code == 0, result.output
    assert "--etcd-password is visible to other local users" in result.output
    result = CliRunner().invoke(get, ["bgppeer", "--etcd-endpoints", auth_server.endpoint],
                                env={"ETCD_USERNAME": "root", "ETCD_PASSWORD": PASSWORD})  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "visible" not in result.output
