"""The confgen loop with the in-memory datastore, a fake writer and virtual time."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging

import pytest
from prometheus_client import CollectorRegistry

from confgen.apply import ConfigRejected
from confgen.datastore.memory import MemoryDatastore
from confgen.intent import PeerIntent
from confgen.loop import Confgen
from confgen.render import render, render_config
from confgen.secrets import SecretStore

# The shape of the line the daemon renders (bgp.daemon.api_run_line), with the node image's paths.
API_RUN = (
    "/usr/bin/python3 -I -S /opt/calico-bgp/lib/python3.11/site-packages/bgp/exabgp/bridge.py"
    " /var/run/calico-bgp/api.sock"
)


def node(name, ip, asn=None):
    bgp = {"ipv4Address": f"{ip}/24"}
    if asn is not None:
        bgp["asNumber"] = asn
    return {
        "kind": "Node",
        "apiVersion": "projectcalico.org/v3",
        "metadata": {"name": name},
        "spec": {"bgp": bgp},
    }


class FakeWriter:
    def __init__(self) -> None:
        self.text: str | None = None
        self.calls: list[str] = []
        self.failures: list[Exception] = []

    async def write(self, text: str) -> bool:
        self.calls.append(text)
        if self.failures:
            raise self.failures.pop(0)
        if text == self.text:
            return False
        self.text = text
        return True


class Harness:
    def __init__(self, fake_time, *, api_run=API_RUN, secrets=None, renderer=render_config) -> None:
        self.time = fake_time
        self.store = MemoryDatastore("node1")
        for i in (1, 2, 3):
            self.store.put_resource(node(f"node{i}", f"10.0.0.1{i}"))
        self.writer = FakeWriter()
        self.intents = []
        self.reloads = 0
        self.reload_failures: list[Exception] = []
        self.intent_failures: list[Exception] = []
        self.registry = CollectorRegistry()
        self.confgen = Confgen(
            self.store,
            "node1",
            self.writer,
            api_run=api_run,
            on_intent=self._on_intent,
            reload=self._reload,
            clock=fake_time.clock,
            sleep=fake_time.sleep,
            registry=self.registry,
            secrets=secrets,
            renderer=renderer,
        )

    async def _on_intent(self, intent) -> None:
        if self.intent_failures:
            raise self.intent_failures.pop(0)
        self.intents.append(intent)

    def _reload(self) -> None:
        if self.reload_failures:
            raise self.reload_failures.pop(0)
        self.reloads += 1

    def renders(self, result: str) -> float:
        return self.registry.get_sample_value("calico_bgp_config_renders_total", {"result": result})


@pytest.fixture
async def harness(fake_time):
    h = Harness(fake_time)
    task = asyncio.create_task(h.confgen.run())
    await fake_time.settle()
    try:
        yield h
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_first_render_waits_for_the_debounce_then_writes_and_reloads(harness, fake_time):
    first = asyncio.create_task(harness.confgen.first_render())
    await fake_time.settle()
    assert not first.done() and harness.writer.calls == []
    await fake_time.advance(0.1)
    assert first.done()
    assert len(harness.writer.calls) == 1 and "neighbor 10.0.0.12 {" in harness.writer.text
    assert harness.reloads == 1
    assert [p.address for p in harness.intents[0].peers] == ["10.0.0.12", "10.0.0.13"]
    assert harness.confgen.intent == harness.intents[0]
    assert harness.confgen.config == harness.writer.text
    assert (harness.renders("ok"), harness.renders("unchanged"), harness.renders("error")) == (1, 0, 0)


async def test_a_burst_of_100_writes_in_a_second_renders_once(harness, fake_time):
    await fake_time.advance(0.2)
    assert len(harness.writer.calls) == 1
    for i in range(100):
        harness.store.put_resource(node("node2", "10.0.0.12", asn=65000 + i))
        await fake_time.advance(0.01)
    assert len(harness.writer.calls) == 1  # still inside the quiet-period debounce
    await fake_time.advance(0.2)
    assert len(harness.writer.calls) == 2
    assert len(harness.intents) == 2 and harness.reloads == 2
    assert "peer-as 65099;" in harness.writer.text
    assert harness.intents[-1].peers[0].peer_as == 65099


async def test_a_steady_trickle_cannot_starve_the_config(harness, fake_time):
    await fake_time.advance(0.2)
    for i in range(100):  # one change every 50 ms for 5 s: never quiet for the 100 ms debounce
        harness.store.put_resource(node("node2", "10.0.0.12", asn=65000 + i))
        await fake_time.advance(0.05)
    during = len(harness.writer.calls) - 1
    assert 2 <= during <= 3  # bounded by max_delay (2 s), not by the trickle
    await fake_time.advance(0.2)
    assert "peer-as 65099;" in harness.writer.text


async def test_identical_config_neither_reloads_nor_republishes(harness, fake_time):
    await fake_time.advance(0.2)
    harness.store.put_resource(node("node2", "10.0.0.12"))  # same content, new revision
    harness.store.put_resource(
        {"kind": "BGPFilter", "metadata": {"name": "unused"}, "spec": {}}
    )  # used by nobody
    await fake_time.advance(0.2)
    assert len(harness.writer.calls) == 2
    assert harness.reloads == 1 and len(harness.intents) == 1
    assert (harness.renders("ok"), harness.renders("unchanged")) == (1, 1)


async def test_rejected_config_keeps_the_last_good_one(harness, fake_time):
    await fake_time.advance(0.2)
    good = harness.writer.text
    harness.writer.failures.append(ConfigRejected("exabgp validate: line 3: nope"))
    harness.store.put_resource(node("node4", "10.0.0.14"))
    await fake_time.advance(0.2)
    assert harness.writer.text == good and harness.reloads == 1
    assert harness.renders("error") == 1
    assert len(harness.intents) == 2  # the intent itself was fine and went downstream
    await fake_time.advance(10)
    assert len(harness.writer.calls) == 2  # a rejection is not retried until the data changes
    harness.store.put_resource(node("node5", "10.0.0.15"))
    await fake_time.advance(0.2)
    assert "neighbor 10.0.0.15 {" in harness.writer.text and harness.reloads == 2


async def test_io_errors_are_retried_with_backoff(harness, fake_time):
    harness.writer.failures += [OSError("disk full"), OSError("disk full")]
    await fake_time.advance(0.1)
    assert harness.renders("error") == 1 and harness.reloads == 0
    await fake_time.advance(0.25)
    assert harness.renders("error") == 2
    await fake_time.advance(0.5)
    assert harness.renders("ok") == 1 and harness.reloads == 1
    assert 0.25 in fake_time.sleeps and 0.5 in fake_time.sleeps


async def test_failed_reload_is_retried_although_the_file_is_current(harness, fake_time):
    harness.reload_failures.append(RuntimeError("exabgp not running"))
    await fake_time.advance(0.1)
    assert harness.reloads == 0
    first = asyncio.create_task(harness.confgen.first_render())
    await fake_time.settle()
    assert first.done()  # the file is valid and in place: ExaBGP may start
    await fake_time.advance(0.25)
    assert harness.reloads == 1
    assert harness.renders("unchanged") == 1


async def test_failed_intent_handoff_is_retried(harness, fake_time):
    harness.intent_failures.append(RuntimeError("speaker busy"))
    await fake_time.advance(0.1)
    assert harness.intents == [] and harness.writer.calls == []
    await fake_time.advance(0.25)
    assert len(harness.intents) == 1 and len(harness.writer.calls) == 1


async def test_render_errors_never_produce_a_first_render(fake_time):
    h = Harness(fake_time, api_run="/bin/true; rm -rf /")
    task = asyncio.create_task(h.confgen.run())
    try:
        await fake_time.advance(5)
        assert h.writer.calls == [] and h.renders("error") == 1
        first = asyncio.create_task(h.confgen.first_render())
        await fake_time.settle()
        assert not first.done()
        first.cancel()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_warnings_are_counted(harness, fake_time):
    harness.store.put_resource(
        {"kind": "IPPool", "metadata": {"name": "bad"}, "spec": {"cidr": "10.0.0.300/24"}}
    )
    await fake_time.advance(0.2)
    assert harness.registry.get_sample_value("calico_bgp_config_warnings") == 1
    assert harness.intents[-1].warnings == ("IPPool bad: spec.cidr '10.0.0.300/24' is not an IP network",)


async def test_a_failing_datastore_ends_the_loop(fake_time):
    class Broken:
        async def run(self, on_snapshot):
            raise RuntimeError("boom")

    confgen = Confgen(
        Broken(),
        "node1",
        FakeWriter(),
        api_run=API_RUN,
        on_intent=lambda i: None,
        reload=lambda: None,
        clock=fake_time.clock,
        sleep=fake_time.sleep,
    )
    with pytest.raises(RuntimeError, match="boom"):
        await confgen.run()


# ------------------------------------------------------------------ secrets, last valid version, metrics

TOR = {
    "kind": "BGPPeer",
    "metadata": {"name": "tor"},
    "spec": {
        "peerIP": "10.0.0.254",
        "asNumber": 65000,
        "password": {"secretKeyRef": {"name": "bgp", "key": "tor"}},
    },
}


@pytest.fixture
async def secret_harness(fake_time, tmp_path):
    (tmp_path / "bgp").mkdir()
    h = Harness(fake_time, secrets=SecretStore(tmp_path))
    h.secret_file = tmp_path / "bgp" / "tor"
    task = asyncio.create_task(h.confgen.run())
    await fake_time.settle()
    try:
        yield h
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _password(harness):
    return {p.address: p.password for p in harness.intents[-1].peers}.get("10.0.0.254")


async def test_a_rotated_password_is_picked_up_by_the_poll(secret_harness, fake_time):
    h = secret_harness
    h.secret_file.write_text("first")
    h.store.put_resource(TOR)
    await fake_time.advance(0.2)
    assert _password(h) == "first" and h.reloads == 1
    h.secret_file.write_text("second-and-longer")  # size differs: no reliance on mtime granularity
    await fake_time.advance(1.0)
    assert _password(h) == "first"  # not polled yet
    await fake_time.advance(1.2)  # poll at 2 s, then the debounce
    assert _password(h) == "second-and-longer" and h.reloads == 2
    await fake_time.advance(10)
    assert h.reloads == 2  # an unchanged file triggers nothing


async def test_a_secret_that_appears_later_brings_its_session_up(secret_harness, fake_time):
    h = secret_harness
    h.store.put_resource(TOR)
    await fake_time.advance(0.2)
    assert _password(h) is None
    assert h.intents[-1].warnings == (
        f"BGPPeer tor: password secret bgp/tor: {h.secret_file} does not exist; its sessions are skipped",
    )
    h.secret_file.write_text("s3cret")
    await fake_time.advance(2.2)
    assert _password(h) == "s3cret" and h.intents[-1].warnings == ()


async def test_trigger_recomputes_from_the_last_snapshot(harness, fake_time):
    await fake_time.advance(0.2)
    harness.confgen.trigger()
    await fake_time.advance(0.2)
    assert len(harness.writer.calls) == 2 and harness.reloads == 1  # same result: nothing downstream moved


async def test_trigger_before_any_snapshot_is_a_no_op(fake_time):
    h = Harness(fake_time)
    h.confgen.trigger()  # not running yet, nothing to recompute
    await fake_time.advance(1)
    assert h.writer.calls == []


async def test_an_invalid_edit_keeps_the_last_valid_version_in_force(harness, fake_time):
    harness.store.put_resource(
        {
            "kind": "BGPConfiguration",
            "metadata": {"name": "default"},
            "spec": {"nodeToNodeMeshEnabled": False},
        }
    )
    await fake_time.advance(0.2)
    good = harness.writer.text
    assert "neighbor" not in good.split("encoder json;", 1)[1]
    harness.store.put_resource(
        {
            "kind": "BGPConfiguration",
            "metadata": {"name": "default"},
            "spec": {"nodeToNodeMeshEnabled": "off"},
        }
    )
    await fake_time.advance(0.2)
    assert harness.writer.text == good and harness.reloads == 1  # the mesh did not come back
    assert harness.intents[-1].warnings == (
        "BGPConfiguration default: spec.nodeToNodeMeshEnabled 'off' is not a boolean; "
        "keeping its last valid version",
    )
    assert (
        harness.registry.get_sample_value("calico_bgp_invalid_resources", {"kind": "BGPConfiguration"}) == 1
    )
    assert harness.registry.get_sample_value("calico_bgp_invalid_resources", {"kind": "BGPPeer"}) == 0
    harness.store.put_resource(
        {
            "kind": "BGPConfiguration",
            "metadata": {"name": "default"},
            "spec": {"nodeToNodeMeshEnabled": False},
        }
    )
    await fake_time.advance(0.2)
    assert (
        harness.registry.get_sample_value("calico_bgp_invalid_resources", {"kind": "BGPConfiguration"}) == 0
    )


async def test_editing_one_bgppeer_rewrites_only_its_neighbour_block(harness, fake_time):
    for name, ip in (("tor-a", "10.0.0.251"), ("tor-b", "10.0.0.252"), ("tor-c", "10.0.0.253")):
        harness.store.put_resource(
            {"kind": "BGPPeer", "metadata": {"name": name}, "spec": {"peerIP": ip, "asNumber": 65000}}
        )
    await fake_time.advance(0.2)
    before = harness.writer.text
    harness.store.put_resource(
        {
            "kind": "BGPPeer",
            "metadata": {"name": "tor-b"},
            "spec": {"peerIP": "10.0.0.252", "asNumber": 65000, "keepaliveTime": "10s"},
        }
    )
    await fake_time.advance(0.2)
    changed = [
        (old, new)
        for old, new in zip(before.splitlines(), harness.writer.text.splitlines(), strict=True)
        if old != new
    ]
    assert changed == [("    hold-time 90;", "    hold-time 30;")]
    assert harness.writer.text.index("hold-time 30") > harness.writer.text.index("neighbor 10.0.0.252 {")


async def test_a_new_warning_reaches_downstream_even_when_the_sessions_did_not_change(harness, fake_time):
    await fake_time.advance(0.2)
    harness.store.put_resource({"kind": "IPPool", "metadata": {"name": "bad"}, "spec": {"cidr": "nope"}})
    await fake_time.advance(0.2)
    assert len(harness.intents) == 2 and harness.intents[0] == harness.intents[1]
    assert harness.intents[1].warnings == ("IPPool bad: spec.cidr 'nope' is not an IP network",)
    assert harness.reloads == 1 and harness.confgen.intent.warnings == harness.intents[1].warnings


# A session whose values got past validation but not past the renderer (the sink does not trust its input).
SMUGGLED = PeerIntent(
    "Global_fd00__99", "fd00::99%x\nshutdown\n", "ipv6", 65000, 64512, "fd00::11", resource="evil"
)


def smuggling(intent, **kwargs):
    return render_config(dataclasses.replace(intent, peers=(*intent.peers, SMUGGLED)), **kwargs)


async def test_a_session_the_renderer_refuses_costs_only_that_session(fake_time, caplog):
    h = Harness(fake_time, renderer=smuggling)
    task = asyncio.create_task(h.confgen.run())
    try:
        with caplog.at_level(logging.WARNING, logger="confgen.loop"):
            await fake_time.advance(0.2)
            h.store.put_resource(node("node4", "10.0.0.14"))  # an unrelated change: renders again
            await fake_time.advance(0.2)
        # The rest of the cluster renders exactly as it would without the session, and keeps moving.
        assert h.writer.text == render(h.confgen.intent, api_run=API_RUN)
        assert "neighbor 10.0.0.14 {" in h.writer.text and "shutdown" not in h.writer.text
        assert h.reloads == 2 and h.renders("error") == 0
        # The refusal names the resource, the session and the field; it is a warning like an invalid resource.
        (warning,) = h.confgen.intent.warnings
        assert warning.startswith("BGPPeer 'evil' session 'Global_fd00__99': left out of the ExaBGP config")
        assert "peer address" in warning and "scope id" in warning
        assert h.intents[-1].warnings == (warning,)
        assert h.registry.get_sample_value("calico_bgp_config_warnings") == 1
        refused = {"sink": "exabgp_config"}
        assert h.registry.get_sample_value("calico_bgp_refused_sink_values_total", refused) == 2  # per render
        assert [r.getMessage() for r in caplog.records].count(warning) == 1  # logged once
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
