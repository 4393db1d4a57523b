"""`calico-bgp apply | get | delete` (calicoctl for the BGP resources) and `calico-bgp confgen render`.

Stage: user interface over the datastore and the confgen pipeline. ``bgp.cli`` mounts the click objects
``apply``, ``get``, ``delete`` and ``confgen`` on the main ``cli`` group.

Owns: the commands' flags, their output formats and exit codes. Validation and the stored shape come from
``confgen.resources`` (the daemon's own parsers), etcd access from
``confgen.datastore.etcd_client.EtcdClient``.

Complicating factors:
- ``apply`` is all or nothing: every document is validated before anything is written, and all of them
  are written in one etcd transaction that only succeeds if none of the keys changed since they were read
  (so a concurrent writer cannot lose an update or a uid); it retries a few times on such a race.
- Kind names are calicoctl's: case-insensitive, singular, plural or short (``bgppeers``, ``bgpp``, ``ipp``).
- ``confgen render`` is a dry run of one node's config: the same snapshot decoding, calculation, secrets
  and API process line as the daemon, printed instead of installed; ``--diff`` compares it with the file
  the daemon runs (exit status 1 when they differ, like diff(1)); nothing is reloaded.
- Tests inject a fake client through the click context (``obj={"etcd_client_factory": ...}``); the
  commands build a real ``EtcdClient`` otherwise.
"""

from __future__ import annotations

import asyncio
import difflib
import functools
import json
import socket
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import click
import yaml

from bgp.cli_options import DEFAULT_RUN_DIR
from bgp.etcd_options import check_or_usage_error, etcd_security_options, security_in_context
from confgen.calc import intent_for, router_id_setting
from confgen.datastore import keys
from confgen.datastore.base import DatastoreError, build_snapshot, decode_all, watched_prefixes
from confgen.datastore.etcd_client import EtcdClient
from confgen.intent import intent_document
from confgen.model import parse_snapshot
from confgen.redact import redact_config
from confgen.render import RenderError, render_config
from confgen.resources import (
    SUMMARY_COLUMNS,
    DocumentError,
    as_list,
    identify,
    kind_of,
    load_documents,
    prepare,
    present,
    summary_row,
)
from confgen.secrets import Secrets, SecretStore
from confgen.validate import ValidationError

DEFAULT_ENDPOINTS = "http://127.0.0.1:2379"
APPLY_ATTEMPTS = 5


def _etcd_option(f: Callable[..., Any]) -> Callable[..., Any]:
    # The TLS and auth flags (bgp.etcd_options) leave their value in the click context for _client.
    return click.option(
        "--etcd-endpoints",
        envvar="ETCD_ENDPOINTS",
        default=DEFAULT_ENDPOINTS,
        show_default=True,
        help="Comma-separated etcd v3 endpoints (env ETCD_ENDPOINTS).",
    )(etcd_security_options()(f))


def _client(endpoints: str) -> Any:
    parsed = [e.strip() for e in endpoints.split(",") if e.strip()]
    if not parsed:
        raise click.UsageError("--etcd-endpoints is empty")
    obj = click.get_current_context().find_object(dict) or {}
    factory = obj.get("etcd_client_factory")
    if factory is None:
        security = security_in_context()
        check_or_usage_error(security, parsed, read_files=True)  # one shot: an unreadable file is final
        factory = functools.partial(EtcdClient, security=security)
    try:
        return factory(parsed)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc


def _run(client: Any, work: Callable[[Any], Coroutine[Any, Any, Any]]) -> Any:
    async def main() -> Any:
        await client.connect()
        try:
            return await work(client)
        finally:
            await client.close()

    try:
        return asyncio.run(main())
    except DatastoreError as exc:
        text = str(exc)  # the client's connect failures already name etcd and the endpoint
        raise click.ClickException(text if "etcd" in text.split(":")[0] else f"etcd: {text}") from exc


def _decode(value: bytes) -> dict[str, Any] | None:
    try:
        document = json.loads(value)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


@click.command()
@click.option(
    "-f", "--filename", required=True, type=click.File("r"), help="YAML or JSON file, or - for stdin."
)
@_etcd_option
def apply(filename: Any, etcd_endpoints: str) -> None:
    """Create or update resources (BGPConfiguration, BGPPeer, BGPFilter, Node, IPPool, CalicoNodeStatus),
    like calicoctl."""
    try:
        documents = load_documents(filename.read())
        named = [identify(document) for document in documents]
    except (DocumentError, ValidationError) as exc:
        raise click.ClickException(f"nothing applied: {exc}") from exc
    if not documents:
        raise click.ClickException("nothing applied: the input holds no resources")
    resource_keys = [keys.resource_key(kind, name) for kind, name in named]

    async def work(client: Any) -> list[Any]:
        for _ in range(APPLY_ATTEMPTS):
            _, existing = await client.get_with_revisions(keys=resource_keys)
            prepared = []
            for document, key in zip(documents, resource_keys, strict=True):
                stored = existing.get(key)
                prepared.append(prepare(document, _decode(stored[0]) if stored else None))
            items = {p.key: p.value for p in prepared}  # a name given twice: the last document wins
            revisions = {key: existing[key][1] if key in existing else 0 for key in items}
            if await client.put_if_unchanged(items, revisions):
                return prepared
        raise click.ClickException(
            "nothing applied: the resources kept changing while being applied; try again"
        )

    try:
        prepared = _run(_client(etcd_endpoints), work)
    except (DocumentError, ValidationError) as exc:
        raise click.ClickException(f"nothing applied: {exc}") from exc
    for item in prepared:
        for warning in item.warnings:
            click.echo(f"warning: {warning}", err=True)
    kinds = sorted({item.kind for item in prepared})
    click.echo(f"Successfully applied {len(prepared)} resource(s): {', '.join(kinds)}")


@click.command()
@click.argument("kind")
@click.argument("name", required=False)
@click.option(
    "-o", "--output", type=click.Choice(["table", "yaml", "json"]), default="table", show_default=True
)
@_etcd_option
def get(kind: str, name: str | None, output: str, etcd_endpoints: str) -> None:
    """Show resources of KIND (bgppeer, bgpconfig, bgpfilter, node, ippool, ...), or the one named NAME."""
    try:
        kind = kind_of(kind)
        key = keys.resource_key(kind, name) if name else None
    except (DocumentError, ValueError) as exc:
        raise click.UsageError(str(exc)) from exc

    async def work(client: Any) -> tuple[int, dict[str, tuple[bytes, int]]]:
        if key is not None:
            return await client.get_with_revisions(keys=[key])
        return await client.get_with_revisions(prefixes=[keys.resource_prefix(kind)])

    revision, found = _run(_client(etcd_endpoints), work)
    items = []
    for item_key in sorted(found):
        parsed = keys.parse_resource_key(item_key)
        if parsed is None or parsed[0] != kind:
            continue
        value, mod_revision = found[item_key]
        try:
            items.append(present(value, mod_revision))
        except ValueError:
            click.echo(f"warning: {item_key} does not hold valid JSON; skipped", err=True)
    if name and not items:
        raise click.ClickException(f"resource does not exist: {kind}({name})")
    document: Any = items[0] if name else as_list(kind, items, revision)
    if output == "json":
        click.echo(json.dumps(document, indent=2))
    elif output == "yaml":
        click.echo(yaml.safe_dump(document, sort_keys=False, default_flow_style=False), nl=False)
    else:
        rows = [SUMMARY_COLUMNS[kind]] + [summary_row(item) for item in items]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            click.echo(
                "   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            )


@click.command()
@click.argument("kind")
@click.argument("name")
@_etcd_option
def delete(kind: str, name: str, etcd_endpoints: str) -> None:
    """Delete the resource KIND NAME."""
    try:
        kind = kind_of(kind)
        key = keys.resource_key(kind, name)
    except (DocumentError, ValueError) as exc:
        raise click.UsageError(str(exc)) from exc

    async def work(client: Any) -> bool:
        return await client.delete(key)

    if not _run(_client(etcd_endpoints), work):
        raise click.ClickException(f"resource does not exist: {kind}({name})")
    click.echo(f"Successfully deleted 1 '{kind}' resource(s)")


@click.group()
def confgen() -> None:
    """Inspect what confgen derives from the datastore."""


@confgen.command("render")
@click.option(
    "--node",
    "node_name",
    envvar="NODENAME",
    default=socket.gethostname,
    show_default="hostname",
    help="Whose configuration to render (env NODENAME).",
)
@_etcd_option
@click.option(
    "--run-dir",
    envvar="CALICO_BGP_RUN_DIR",
    default=DEFAULT_RUN_DIR,
    show_default=True,
    type=click.Path(path_type=Path),
    help="The daemon's run directory: the API socket path and the live exabgp.conf (env CALICO_BGP_RUN_DIR).",
)
@click.option(
    "--secrets-dir",
    envvar="CALICO_BGP_SECRETS_DIR",
    type=click.Path(path_type=Path),
    help="Directory of <secret>/<key> files for BGP passwords (env CALICO_BGP_SECRETS_DIR).",
)
@click.option(
    "--router-id", envvar="CALICO_ROUTER_ID", help="IPv4 router id override (env CALICO_ROUTER_ID)."
)
@click.option(
    "--diff", is_flag=True, help="Show a unified diff against <run-dir>/exabgp.conf; exit 1 if they differ."
)
@click.option(
    "--intent", "show_intent", is_flag=True, help="Print the computed intent (JSON, passwords redacted)."
)
@click.option(
    "--show-secrets",
    is_flag=True,
    help="Print MD5 keys as the file holds them; by default they are shown as \"<redacted>\".",
)
def render_command(
    node_name: str,
    etcd_endpoints: str,
    run_dir: Path,
    secrets_dir: Path | None,
    router_id: str | None,
    diff: bool,
    show_intent: bool,
    show_secrets: bool,
) -> None:
    """Print the ExaBGP config NODE would run (a dry run: nothing is written or reloaded). MD5 keys are
    masked unless --show-secrets; --diff still exits 1 when only a key differs."""
    from bgp.daemon import api_run_line  # the daemon's own API process line, never a copy of it

    async def work(client: Any) -> tuple[int, dict[str, bytes]]:
        return await client.get_prefixes(watched_prefixes(node_name))

    revision, values = _run(_client(etcd_endpoints), work)
    snapshot = build_snapshot(revision, decode_all(values.items()), node_name)
    secrets: Secrets = {}
    if secrets_dir is not None:
        model, _ = parse_snapshot(snapshot)
        secrets, _ = SecretStore(secrets_dir).read_all(model.secret_refs())
    try:
        rid = router_id_setting(router_id, node_name)
        intent = intent_for(snapshot, node_name, router_id=rid, secrets=secrets)
        rendered = render_config(intent, api_run=api_run_line(run_dir / "api.sock"))
    except (RenderError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    text = rendered.text
    for warning in intent.warnings + rendered.refused:
        click.echo(f"warning: {warning}", err=True)
    if show_intent:
        click.echo(json.dumps(intent_document(intent), indent=2, sort_keys=True))
        return
    shown = (lambda config: config) if show_secrets else redact_config
    if not diff:
        click.echo(shown(text), nl=False)
        return
    live_path = run_dir / "exabgp.conf"
    try:
        live = live_path.read_text()
    except FileNotFoundError:
        live = ""
        click.echo(f"note: {live_path} does not exist", err=True)
    except OSError as exc:
        raise click.ClickException(f"cannot read {live_path}: {exc}") from exc
    lines = list(
        difflib.unified_diff(
            shown(live).splitlines(keepends=True),
            shown(text).splitlines(keepends=True),
            fromfile=str(live_path),
            tofile=f"rendered for {node_name}",
        )
    )
    click.echo("".join(lines), nl=False)
    if live != text and not lines:
        click.echo("note: only MD5 keys differ (--show-secrets shows them)", err=True)
    if live != text:
        click.get_current_context().exit(1)


__all__ = ["apply", "confgen", "delete", "get"]
