"""A lab's etcd cluster, the pure parts: member command lines, node-side endpoints and env, proxy routes,
the state round trip (tmp_path only)."""

from __future__ import annotations

import click
import pytest

from labs import etcd, etcd_cluster, proxy, state
from labs import lab as labs_lab
from labs.ops import LabError
from labs.state import EtcdMemberState, LabState

CLUSTER = {
    "etcd1": "http://127.0.0.1:2380",
    "etcd2": "http://127.0.0.1:2381",
    "etcd3": "http://127.0.0.1:2382",
}
TLS = etcd.ServerTls("/t/ca.crt", "/t/server.crt", "/t/server.key")


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


@pytest.mark.parametrize("name", sorted(CLUSTER))
def test_every_member_starts_with_the_whole_cluster(name):
    argv = etcd.member_argv(name, "/d", "http://127.0.0.1:2379", CLUSTER[name], CLUSTER, None)
    assert _flag(argv, "--name") == name
    listed = dict(item.split("=", 1) for item in _flag(argv, "--initial-cluster").split(","))
    assert listed == CLUSTER
    assert _flag(argv, "--initial-advertise-peer-urls") == _flag(argv, "--listen-peer-urls") == CLUSTER[name]
    assert not [a for a in argv if "cert" in a or "key" in a]


def test_tls_members_require_certificates_from_clients_and_peers():
    argv = etcd.member_argv("etcd1", "/d", "https://127.0.0.1:2379", CLUSTER["etcd1"], CLUSTER, TLS)
    for side in ("", "peer-"):
        assert _flag(argv, f"--{side}cert-file") == TLS.cert_file
        assert _flag(argv, f"--{side}key-file") == TLS.key_file
        assert _flag(argv, f"--{side}trusted-ca-file") == TLS.ca_file
        assert f"--{side}client-cert-auth" in argv


@pytest.mark.parametrize(
    ("index", "scheme", "url"),
    [
        (0, "http", "http://127.0.0.1:2379"),
        (1, "http", "http://127.0.0.1:12379"),
        (2, "https", "https://127.0.0.1:22379"),
        (6, "http", "http://127.0.0.1:62379"),
    ],
)
def test_node_side_member_urls(index, scheme, url):
    assert etcd_cluster.node_url(index, scheme) == url


@pytest.mark.parametrize("index", [-1, etcd_cluster.MAX_MEMBERS])
def test_node_side_member_url_out_of_range(index):
    with pytest.raises(ValueError, match="member index"):
        etcd_cluster.node_url(index)


def _member(i: int, scheme: str = "http") -> EtcdMemberState:
    return EtcdMemberState(
        f"etcd{i + 1}", 100 + i, f"{scheme}://127.0.0.1:{40000 + i}", etcd_cluster.node_url(i, scheme),
        f"/d{i}", f"/l{i}", ["/usr/bin/etcd"],
    )  # fmt: skip


def test_single_etcd_lab_gives_nodes_the_one_proxied_endpoint():
    lab = LabState(name="t", etcd_endpoints=["http://127.0.0.1:40000"], etcd_pid=9)
    assert etcd_cluster.node_env(lab) == {"ETCD_ENDPOINTS": "http://127.0.0.1:2379"}
    assert etcd_cluster.security(lab) is None


def test_cluster_lab_gives_nodes_every_member_and_the_tls_files():
    lab = LabState(name="t", etcd_members=[_member(i, "https") for i in range(3)])
    lab.etcd_ca_file, lab.etcd_cert_file, lab.etcd_key_file = "/c/ca.crt", "/c/client.crt", "/c/client.key"
    env = etcd_cluster.node_env(lab)
    assert env == {
        "ETCD_ENDPOINTS": "https://127.0.0.1:2379,https://127.0.0.1:12379,https://127.0.0.1:22379",
        "ETCD_CA_CERT_FILE": "/c/ca.crt",
        "ETCD_CERT_FILE": "/c/client.crt",
        "ETCD_KEY_FILE": "/c/client.key",
    }
    security = etcd_cluster.security(lab)
    assert security is not None
    assert (str(security.ca_file), str(security.cert_file), str(security.key_file)) == (
        lab.etcd_ca_file, lab.etcd_cert_file, lab.etcd_key_file,
    )  # fmt: skip


def test_unknown_member_is_named_in_the_error():
    lab = LabState(name="t", etcd_members=[_member(0)])
    with pytest.raises(etcd_cluster.EtcdClusterError, match="etcd9.*etcd1"):
        etcd_cluster.member(lab, "etcd9")


def test_state_round_trip_with_members(tmp_path, monkeypatch):
    monkeypatch.setattr(state, "STATE_ROOT", tmp_path)
    lab = LabState(name="t", etcd_members=[_member(i) for i in range(3)], etcd_ca_file="/c/ca.crt")
    lab.save()
    loaded = LabState.load("t")
    assert loaded == lab
    assert isinstance(loaded.etcd_members[0], EtcdMemberState)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:2379", ("127.0.0.1", 2379)),
        ("http://127.0.0.1:12379", ("127.0.0.1", 12379)),
        ("https://127.0.0.1:40001", ("127.0.0.1", 40001)),  # TLS is copied through untouched
        ("https://[::1]:2379", ("::1", 2379)),
        ("http://10.0.0.1", ("10.0.0.1", 2379)),
    ],
)
def test_proxy_addresses(text, expected):
    assert proxy.address(text) == expected


def test_proxy_address_without_host_is_refused():
    with pytest.raises(click.BadParameter, match="no host"):
        proxy.address("http://:2379")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"etcd_members": 3, "etcd_endpoints": ["http://127.0.0.1:1"]}, "drop --etcd-endpoints"),
        ({"etcd_tls": True, "etcd_endpoints": ["http://127.0.0.1:1"]}, "drop --etcd-endpoints"),
        ({"etcd_members": 0}, "1 to 7"),
        ({"etcd_members": 8}, "1 to 7"),
    ],
)
def test_lab_up_refuses_impossible_etcd_settings_before_building(tmp_path, monkeypatch, kwargs, message):
    monkeypatch.setattr(state, "STATE_ROOT", tmp_path)
    with pytest.raises(LabError, match=message):
        labs_lab.up("mesh", 2, name="t", **kwargs)
    assert not list(tmp_path.iterdir())
