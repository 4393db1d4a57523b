"""The etcd TLS/auth flags shared by `node run` and the resource commands: flags and calico-node's
variables give the same EtcdSecurity, a password on the command line warns (without echoing it), and
settings that can never work are usage errors naming the setting."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from bgp.cli import cli
from bgp.etcd_options import etcd_security_options, security_in_context
from bgp.resources_cli import get
from confgen.datastore.etcd_security import EtcdSecurity

SECRET = "pw-do-not-print"


def _command(pass_as):
    seen = []

    @click.command()
    @etcd_security_options(pass_as=pass_as)
    def command(**kwargs):
        seen.append(kwargs["etcd_security"] if pass_as else security_in_context())

    return command, seen


FULL = EtcdSecurity(Path("/c/ca"), Path("/c/crt"), Path("/c/key"), "calico", SECRET)


@pytest.mark.parametrize("pass_as", ["etcd_security", None])
@pytest.mark.parametrize(
    ("args", "env", "expected", "warns"),
    [
        ([], {}, EtcdSecurity(), False),
        (["--etcd-ca-cert-file", "/c/ca", "--etcd-cert-file", "/c/crt", "--etcd-key-file", "/c/key",
          "--etcd-username", "calico", "--etcd-password", SECRET], {}, FULL, True),
        ([], {"ETCD_CA_CERT_FILE": "/c/ca", "ETCD_CERT_FILE": "/c/crt", "ETCD_KEY_FILE": "/c/key",
              "ETCD_USERNAME": "calico", "ETCD_PASSWORD": SECRET}, FULL, False),
        (["--etcd-username", "other"], {"ETCD_USERNAME": "calico"}, EtcdSecurity(username="other"), False),
    ],
    ids=["none", "flags", "env", "flag-over-env"],
)  # fmt: skip
def test_flags_and_env_give_one_value(pass_as, args, env, expected, warns):
    command, seen = _command(pass_as)
    result = CliRunner().invoke(command, args, env=env)
    assert result.exit_code == 0, result.output
    assert seen == [expected]
    warning = "--etcd-password is visible to other local users (ps); prefer ETCD_PASSWORD"
    assert (warning in result.output) == warns
    assert SECRET not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--etcd-endpoints", "https://10.0.0.1:2379", "--etcd-cert-file", "/c/crt"],
         "ETCD_CERT_FILE is set but ETCD_KEY_FILE is not"),
        (["--etcd-endpoints", "http://10.0.0.1:2379", "--etcd-ca-cert-file", "/c/ca"],
         "etcd endpoint http://10.0.0.1:2379 is plain http but TLS files are set (ETCD_CA_CERT_FILE)"),
    ],
)  # fmt: skip
def test_node_run_refuses_settings_that_cannot_work(args, message):
    result = CliRunner().invoke(cli, ["node", "run", "--node", "n1", *args])
    assert result.exit_code == 2
    assert message in result.output


def test_resource_command_refuses_an_unreadable_file_before_connecting(tmp_path):
    result = CliRunner().invoke(
        get,
        ["bgppeer", "--etcd-endpoints", "https://192.0.2.1:2379", "--etcd-ca-cert-file", str(tmp_path / "x")],
    )
    assert result.exit_code == 2
    assert f"ETCD_CA_CERT_FILE {tmp_path / 'x'}: cannot read: No such file or directory" in result.output


def test_node_run_hands_calico_node_variables_to_the_daemon(monkeypatch, tmp_path):
    import bgp.daemon

    configs = []
    monkeypatch.setattr(bgp.daemon, "run_node", lambda config: configs.append(config) or 0)
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n")
    env = {"ETCD_ENDPOINTS": "https://10.0.0.1:2379,https://10.0.0.2:2379", "ETCD_CA_CERT_FILE": str(ca),
           "ETCD_USERNAME": "calico", "ETCD_PASSWORD": SECRET, "CALICO_BGP_EXABGP_USER": "root"}  # fmt: skip
    result = CliRunner().invoke(cli, ["node", "run", "--node", "n1", "--run-dir", str(tmp_path)], env=env)
    assert result.exit_code == 0, result.output
    [config] = configs
    assert config.etcd_endpoints == ("https://10.0.0.1:2379", "https://10.0.0.2:2379")
    assert config.etcd_security == EtcdSecurity(ca_file=ca, username="calico", password=SECRET)
    assert SECRET not in result.output
