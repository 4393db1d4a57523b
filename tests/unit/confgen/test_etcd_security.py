"""EtcdSecurity (calico-node's ETCD_* settings), endpoint parsing, the failure descriptions of
confgen.datastore.etcd_channel and its DER notAfter reader."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from confgen.datastore.etcd_channel import _parse_time, certificate_not_after, describe_failure
from confgen.datastore.etcd_security import EtcdSecurity, EtcdSecurityError, TlsMaterial, parse_endpoint
from labs import certs as certs_mod


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    good = certs_mod.generate(tmp_path_factory.mktemp("pki"), ["10.0.0.1"], days=30)
    return good, certs_mod.issue(good, "old", expired=True)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, EtcdSecurity()),
        ({"ETCD_CA_CERT_FILE": "", "ETCD_USERNAME": "", "ETCD_PASSWORD": ""}, EtcdSecurity()),
        (
            {"ETCD_CA_CERT_FILE": "/c/ca.pem", "ETCD_CERT_FILE": "/c/c.pem", "ETCD_KEY_FILE": "/c/k.pem",
             "ETCD_USERNAME": "calico", "ETCD_PASSWORD": "pw", "ETCD_ENDPOINTS": "https://a:2379"},
            EtcdSecurity(Path("/c/ca.pem"), Path("/c/c.pem"), Path("/c/k.pem"), "calico", "pw"),
        ),
        ({"ETCD_USERNAME": "calico"}, EtcdSecurity(username="calico")),
    ],
    ids=["nothing", "empty-values", "everything", "user-only"],
)  # fmt: skip
def test_from_env(environ, expected):
    assert EtcdSecurity.from_env(environ) == expected


@pytest.mark.parametrize(
    ("security", "credentials"),
    [
        (EtcdSecurity(), None),
        (EtcdSecurity(username="u"), None),
        (EtcdSecurity(password="p"), None),
        (EtcdSecurity(username="u", password="p"), ("u", "p")),
    ],
)
def test_credentials_only_when_both_are_set(security, credentials):
    assert security.credentials == credentials


@pytest.mark.parametrize(
    ("endpoint", "scheme", "host", "port", "target"),
    [
        ("http://10.0.0.1:2379", "http", "10.0.0.1", 2379, "10.0.0.1:2379"),
        ("10.0.0.1:4001", "http", "10.0.0.1", 4001, "10.0.0.1:4001"),
        ("https://etcd-1", "https", "etcd-1", 2379, "etcd-1:2379"),
        ("https://[fd00::1]:2379", "https", "fd00::1", 2379, "[fd00::1]:2379"),
    ],
)
def test_parse_endpoint(endpoint, scheme, host, port, target):
    parsed = parse_endpoint(endpoint)
    assert (parsed.scheme, parsed.host, parsed.port, parsed.target) == (scheme, host, port, target)
    assert parsed.tls == (scheme == "https")


def _files(pki, tmp_path):
    good, _ = pki
    cert, key = good.client()
    (tmp_path / "notpem").write_text("hello\n")
    return {"ca": good.ca, "cert": cert, "key": key, "missing": tmp_path / "absent.pem",
            "dir": tmp_path, "notpem": tmp_path / "notpem", "zero": Path("/dev/zero")}  # fmt: skip


# (endpoints, security fields as names from _files, the error's text or None for valid)
VALIDATE_CASES = [
    ([], {}, "no etcd endpoints (set ETCD_ENDPOINTS)"),
    (["ftp://a:1"], {}, "etcd endpoint 'ftp://a:1': scheme must be http:// or https://"),
    (["https://"], {}, "etcd endpoint 'https://': no host"),
    (["http://a:99999"], {}, "etcd endpoint 'http://a:99999': bad port"),
    (["https://a"], {"cert_file": "cert"}, "ETCD_CERT_FILE is set but ETCD_KEY_FILE is not"),
    (["https://a"], {"key_file": "key"}, "ETCD_KEY_FILE is set but ETCD_CERT_FILE is not"),
    (["https://a", "http://b"], {"ca_file": "ca"},
     "etcd endpoint http://b is plain http but TLS files are set (ETCD_CA_CERT_FILE): use https://"),
    (["https://a"], {"ca_file": "missing"}, "ETCD_CA_CERT_FILE {missing}: cannot read: No such file"),
    (["https://a"], {"ca_file": "dir"}, "ETCD_CA_CERT_FILE {dir}: cannot read: Is a directory"),
    (["https://a"], {"ca_file": "zero"}, "ETCD_CA_CERT_FILE /dev/zero: not a regular file"),
    (["https://a"], {"ca_file": "notpem"}, "ETCD_CA_CERT_FILE {notpem}: no PEM certificate in the file"),
    (["https://a"], {"cert_file": "cert", "key_file": "ca"}, "ETCD_KEY_FILE {ca}: no PEM private key"),
    (["https://a"], {}, None),  # no CA: the system trust store
    (["http://a", "http://b"], {}, None),
    (["https://a"], {"ca_file": "ca", "cert_file": "cert", "key_file": "key"}, None),
]  # fmt: skip


@pytest.mark.parametrize(("endpoints", "fields", "error"), VALIDATE_CASES)
def test_validate(pki, tmp_path, endpoints, fields, error):
    files = _files(pki, tmp_path)
    security = EtcdSecurity(**{field: files[name] for field, name in fields.items()})
    if error is None:
        assert [e.url for e in security.validate(endpoints)] == endpoints
        return
    with pytest.raises(EtcdSecurityError) as caught:
        security.validate(endpoints)
    assert error.format(**files) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_check_leaves_the_files_alone(tmp_path):
    # The daemon checks the settings at start and retries files that cannot be read yet.
    security = EtcdSecurity(ca_file=tmp_path / "not-yet-mounted.pem")
    assert [e.host for e in security.check(["https://a"])] == ["a"]
    with pytest.raises(EtcdSecurityError, match="cannot read"):
        security.validate(["https://a"])


@pytest.mark.parametrize(
    ("security", "endpoints", "expected"),
    [
        (EtcdSecurity(username="u"), ["https://a"],
         ["ETCD_USERNAME is set without ETCD_PASSWORD: etcd authentication is not used (it needs both)"]),
        (EtcdSecurity(password="p"), ["https://a"],
         ["ETCD_PASSWORD is set without ETCD_USERNAME: etcd authentication is not used (it needs both)"]),
        (EtcdSecurity(username="u", password="p"), ["https://a", "http://b"],
         ["etcd endpoint http://b is plain http: the etcd password is sent unencrypted"]),
        (EtcdSecurity(username="u", password="p"), ["https://a"], []),
        (EtcdSecurity(), ["http://a"], []),
    ],
)  # fmt: skip
def test_warnings(security, endpoints, expected):
    assert security.warnings(endpoints) == expected


def test_repr_never_shows_the_password_or_key(pki):
    secret = "hunter2-very-secret"
    security = EtcdSecurity(username="calico", password=secret)
    assert secret not in repr(security) and secret not in str(security)
    assert "password=<set>" in repr(security)
    good, _ = pki
    cert, key = good.client()
    material = EtcdSecurity(ca_file=good.ca, cert_file=cert, key_file=key).load_tls()
    assert material.key is not None and material.key.decode() not in repr(material)
    assert repr(material) == "TlsMaterial(root=True, key=True, chain=True)"
    assert repr(TlsMaterial(None, None, None)) == "TlsMaterial(root=False, key=False, chain=False)"


ENDPOINT = parse_endpoint("https://10.0.0.1:2379")
CA = Path("/etc/calico/ca.pem")

# (gRPC's text, security, reason, the message after "etcd https://10.0.0.1:2379: ")
FAILURES = [
    ("failed to connect to all addresses; last error: UNKNOWN: ipv4:10.0.0.1:2379: Tls handshake failed "
     "(TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL routines:OPENSSL_internal:"
     "CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate", EtcdSecurity(ca_file=CA), "tls",
     "TLS handshake failed: certificate verify failed (is ETCD_CA_CERT_FILE /etc/calico/ca.pem the CA that "
     "signed the server's certificate?)"),
    ("Ssl handshake failed: CERTIFICATE_VERIFY_FAILED", EtcdSecurity(), "tls",
     "TLS handshake failed: certificate verify failed (no ETCD_CA_CERT_FILE is set, so the system trust "
     "store was used: set it to the CA that signed the server's certificate)"),
    ("Peer name 10.0.0.1 is not in peer certificate", EtcdSecurity(ca_file=CA), "tls",
     "TLS handshake failed: the server's certificate does not name 10.0.0.1 in its subjectAltName"),
    ("Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: WRONG_VERSION_NUMBER", EtcdSecurity(),
     "tls",
     "TLS handshake failed: the server does not speak TLS on this port (use http://, or enable TLS on etcd)"),
    ("failed to connect to all addresses; last error: UNAVAILABLE: ipv4:10.0.0.1:2379: Handshake read failed "
     "(Socket closed)", EtcdSecurity(), "tls",
     "TLS handshake failed: the server closed the connection (is it serving TLS on this port?)"),
    ("failed to connect to all addresses; last error: UNAVAILABLE: ipv4:10.0.0.1:2379: Unwrap failed "
     "(TSI_DATA_CORRUPTED)", EtcdSecurity(ca_file=CA), "tls",
     "TLS: the server refused our client certificate: none was sent (set ETCD_CERT_FILE and ETCD_KEY_FILE; "
     "etcd runs with --client-cert-auth)"),
    ("Tls handshake failed: SSL_ERROR_SYSCALL", EtcdSecurity(), "tls",
     "TLS handshake failed: Tls handshake failed: SSL_ERROR_SYSCALL"),
    ("etcdserver: authentication failed, invalid user ID or password", EtcdSecurity(username="u",
     password="p"), "auth", "authentication failed: wrong ETCD_USERNAME or ETCD_PASSWORD"),
    ("etcdserver: user name is empty", EtcdSecurity(), "auth",
     "the server requires authentication: set ETCD_USERNAME and ETCD_PASSWORD"),
    ("etcdserver: authentication is not enabled", EtcdSecurity(username="u", password="p"), "auth",
     "authentication is not enabled on the server: unset ETCD_USERNAME/ETCD_PASSWORD or enable auth on etcd"),
    ("etcdserver: invalid auth token", EtcdSecurity(username="u", password="p"), "auth",
     "the server refused our auth token (expired or revoked)"),
    ("etcdserver: permission denied", EtcdSecurity(username="u", password="p"), "auth",
     "permission denied: the etcd user lacks a role granting /calico/"),
    ("failed to connect to all addresses; last error: UNKNOWN: ipv6:[fd00::1]:2379: Failed to connect to "
     "remote host: Connection refused", EtcdSecurity(), "error",
     "RuntimeError: Failed to connect to remote host: Connection refused"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "security", "reason", "message"), FAILURES)
def test_describe_failure(text, security, reason, message):
    assert describe_failure(ENDPOINT, security, RuntimeError(text)) == (
        reason,
        f"etcd https://10.0.0.1:2379: {message}",
    )


def test_describe_failure_names_an_expired_client_certificate(pki):
    good, (old_cert, old_key) = pki
    security = EtcdSecurity(ca_file=good.ca, cert_file=old_cert, key_file=old_key)
    reason, message = describe_failure(ENDPOINT, security, RuntimeError("Unwrap failed (TSI_DATA_CORRUPTED)"))
    assert reason == "tls"
    assert f"ETCD_CERT_FILE {old_cert} expired on " in message
    cert, key = good.client()
    current = EtcdSecurity(ca_file=good.ca, cert_file=cert, key_file=key)
    _, message = describe_failure(ENDPOINT, current, RuntimeError("Unwrap failed (TSI_DATA_CORRUPTED)"))
    assert message.endswith(f"(ETCD_CERT_FILE {cert}: expired, revoked, or not signed by a CA in etcd's "
                            "--trusted-ca-file?)")  # fmt: skip


def test_describe_failure_of_a_setting():
    error = EtcdSecurityError("ETCD_CA_CERT_FILE /x: cannot read: No such file or directory")
    assert describe_failure(ENDPOINT, EtcdSecurity(), error) == (
        "tls_config",
        "etcd https://10.0.0.1:2379: ETCD_CA_CERT_FILE /x: cannot read: No such file or directory",
    )


def test_certificate_not_after(pki):
    good, (old_cert, _) = pki
    now = dt.datetime.now(dt.UTC)
    valid = certificate_not_after(good.client()[0].read_bytes())
    assert valid is not None and dt.timedelta(days=29) < valid - now <= dt.timedelta(days=30, minutes=1)
    expired = certificate_not_after(old_cert.read_bytes())
    assert expired is not None and expired < now


@pytest.mark.parametrize(
    "pem",
    [b"", b"not a certificate", b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
     b"-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n"],
)  # fmt: skip
def test_certificate_not_after_of_garbage_is_none(pem):
    assert certificate_not_after(pem) is None


@given(st.binary(max_size=400))
def test_certificate_not_after_never_raises(body):
    import base64

    pem = b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(body) + b"-----END CERTIFICATE-----\n"
    result = certificate_not_after(pem)
    assert result is None or result.tzinfo is not None


def test_certificate_not_after_of_a_truncated_certificate(pki):
    good, _ = pki
    text = good.ca.read_text().splitlines()
    truncated = "\n".join([*text[:3], text[-1]]) + "\n"
    assert certificate_not_after(truncated.encode()) is None


@pytest.mark.parametrize(
    ("tag", "text", "expected"),
    [
        (0x17, "491231235959Z", dt.datetime(2049, 12, 31, 23, 59, 59, tzinfo=dt.UTC)),
        (0x17, "500101000000Z", dt.datetime(1950, 1, 1, tzinfo=dt.UTC)),
        (0x18, "20510101000000Z", dt.datetime(2051, 1, 1, tzinfo=dt.UTC)),
    ],
)
def test_parse_time(tag, text, expected):
    assert _parse_time(tag, text) == expected
