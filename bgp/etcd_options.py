"""The etcd connection flags shared by ``calico-bgp node run`` and the resource commands
(``apply``/``get``/``delete``/``confgen render``): ``--etcd-ca-cert-file``, ``--etcd-cert-file``,
``--etcd-key-file``, ``--etcd-username``, ``--etcd-password``, each also read from calico-node's variable
of the same name (``ETCD_CA_CERT_FILE``, ...).

Stage: user interface; turns flags into one ``EtcdSecurity`` value (confgen/datastore/etcd_security.py).

Owns: the five options and where their result goes. ``etcd_security_options`` consumes the five
parameters and hands the command a single ``etcd_security`` argument (``pass_as``) or leaves the value in
the click context for ``security_in_context`` (commands whose signatures stay as they are).

Complicating factors:
- A password given as a flag is visible to every local user in ps(1); it works, with a warning that says
  to use ``ETCD_PASSWORD`` instead. The warning never repeats the password.
- Settings that can never work (a certificate without its key, TLS files with an http:// endpoint) are
  usage errors at once. Whether the files can be read is left to the caller: a one-shot command checks
  now, the daemon retries, since a mounted secret may appear later.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from confgen.datastore.etcd_security import (
    ENV_CA,
    ENV_CERT,
    ENV_KEY,
    ENV_PASSWORD,
    ENV_USERNAME,
    EtcdSecurity,
    EtcdSecurityError,
)

_META_KEY = "calico_bgp.etcd_security"
_PARAMS = ("etcd_ca_cert_file", "etcd_cert_file", "etcd_key_file", "etcd_username", "etcd_password")


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def etcd_security_options(pass_as: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add the five flags to a command. With ``pass_as``, the command receives the ``EtcdSecurity`` as
    that keyword argument; without, it is stored in the click context (see ``security_in_context``)."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            ctx = click.get_current_context()
            values = {name: kwargs.pop(name, None) for name in _PARAMS}
            from_flag = ctx.get_parameter_source("etcd_password") == ParameterSource.COMMANDLINE
            if values["etcd_password"] and from_flag:
                click.echo(
                    f"warning: --etcd-password is visible to other local users (ps); prefer {ENV_PASSWORD}",
                    err=True,
                )
            security = EtcdSecurity(
                ca_file=_path(values["etcd_ca_cert_file"]),
                cert_file=_path(values["etcd_cert_file"]),
                key_file=_path(values["etcd_key_file"]),
                username=values["etcd_username"] or None,
                password=values["etcd_password"] or None,
            )
            if pass_as is None:
                ctx.meta[_META_KEY] = security
            else:
                kwargs[pass_as] = security
            return command(*args, **kwargs)

        options = (
            ("--etcd-ca-cert-file", ENV_CA, "CA certificate (PEM) that signed etcd's server certificate; "
             "default: the system trust store"),
            ("--etcd-cert-file", ENV_CERT, "client certificate (PEM) for etcd's --client-cert-auth"),
            ("--etcd-key-file", ENV_KEY, "private key (PEM) of the client certificate"),
            ("--etcd-username", ENV_USERNAME, f"etcd user; used only together with {ENV_PASSWORD}"),
            ("--etcd-password", ENV_PASSWORD, "etcd password; prefer the environment variable"),
        )  # fmt: skip
        for flag, env, text in reversed(options):
            text = f"{text[0].upper()}{text[1:]} (env {env})."
            wrapper = click.option(flag, envvar=env, default=None, help=text)(wrapper)
        return wrapper

    return decorate


def security_in_context() -> EtcdSecurity:
    """The value ``etcd_security_options()`` stored for the running command (plain, no auth if none)."""
    ctx = click.get_current_context()
    security = ctx.meta.get(_META_KEY)
    return security if isinstance(security, EtcdSecurity) else EtcdSecurity()


def check_or_usage_error(security: EtcdSecurity, endpoints: Sequence[str], *, read_files: bool) -> None:
    """``EtcdSecurityError`` as a click usage error naming the problem; warnings to stderr."""
    try:
        if read_files:
            security.validate(list(endpoints))
        else:
            security.check(list(endpoints))
    except EtcdSecurityError as exc:
        raise click.UsageError(str(exc)) from exc
    for warning in security.warnings(list(endpoints)):
        click.echo(f"warning: {warning}", err=True)
