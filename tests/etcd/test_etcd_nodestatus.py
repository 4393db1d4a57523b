"""CalicoNodeStatus against a real etcd: the syncer feeds the reporter through the splitter, the writer
fills the status in Calico's shape, its own writes never reach confgen, a spec change restarts it, and a
delete stops it without the object coming back."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import yaml
from click.testing import CliRunner
from prometheus_client import CollectorRegistry

from bgp.nodestatus import AgentState, StatusInputs
from bgp.nodestatus_writer import NodeStatusReporter
from bgp.resources_cli import apply, get
from confgen.datastore import keys
from confgen.datastore.etcd import EtcdSyncer
from confgen.datastore.etcd_client import EtcdClient
from confgen.intent import NodeIntent
from confgen.nodestatus import StatusSplitter

pytestmark = pytest.mark.etcd

REQUEST = """
apiVersion: projectcalico.org/v3
kind: CalicoNodeStatus
metadata: {name: node1-status}
spec: {node: node1, classes: [Agent, BGP], updatePeriodSeconds: 1}
"""


async def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_writer_fills_status_and_stops_after_delete(etcd_server):
    endpoint = etcd_server.endpoint
    key = keys.resource_key("CalicoNodeStatus", "node1-status")
    intent = NodeIntent("node1", "10.0.0.11", 64512, ipv4_address="10.0.0.11")
    agent = {"state": AgentState(True, "calico-bgp test+exabgp5.0.15", boot_time=time.time())}

    def source(classes):
        return StatusInputs(agent["state"], intent)

    runner = CliRunner()
    result = runner.invoke(apply, ["-f", "-", "--etcd-endpoints", endpoint], input=REQUEST)
    assert result.exit_code == 0, result.output

    async def main():
        client = EtcdClient([endpoint])
        await client.connect()
        registry = CollectorRegistry()
        syncer = EtcdSyncer(lambda: EtcdClient([endpoint]), "node1", registry=registry)
        reporter = NodeStatusReporter(syncer.client_factory, "node1", source, registry=registry)
        delivered = []
        splitter = StatusSplitter(syncer, "node1", reporter.update)
        tasks = [asyncio.create_task(splitter.run(delivered.append)), asyncio.create_task(reporter.run())]

        async def stored():
            _, found = await client.get_with_revisions(keys=[key])
            return json.loads(found[key][0]) if key in found else None

        try:
            document = await wait_for(lambda: _with_status(stored()))
            status = document["status"]
            assert set(status) == {"lastUpdated", "agent", "bgp"}
            assert status["agent"]["birdV4"]["state"] == "Ready"
            assert status["agent"]["birdV4"]["routerID"] == "10.0.0.11"
            assert status["bgp"]["numberEstablishedV4"] == 0
            assert document["spec"]["updatePeriodSeconds"] == 1

            # A change in what the daemon reports is written within one period.
            agent["state"] = AgentState(False, "calico-bgp test+exabgp5.0.15")
            await wait_for(lambda: _agent_state(stored(), "NotReady"), timeout=5)
            assert len(delivered) == 1, "our own status writes reached confgen"

            # `calico-bgp get` shows it, in Calico's shape.
            args = ["caliconodestatus", "node1-status", "-o", "yaml", "--etcd-endpoints", endpoint]
            shown = await asyncio.to_thread(runner.invoke, get, args)  # the CLI runs its own event loop
            assert shown.exit_code == 0, shown.output
            assert yaml.safe_load(shown.output)["status"]["agent"]["birdV4"]["state"] == "NotReady"

            await client.delete(key)
            await wait_for(lambda: _true(not reporter.writers), timeout=5)
            await asyncio.sleep(1.5)  # longer than the period: nothing brings the object back
            assert await stored() is None
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await client.close()

    asyncio.run(main())


async def _with_status(pending):
    document = await pending
    return document if document and "status" in document else None


async def _agent_state(pending, state):
    document = await pending
    return document and document.get("status", {}).get("agent", {}).get("birdV4", {}).get("state") == state


async def _true(value):
    return value
