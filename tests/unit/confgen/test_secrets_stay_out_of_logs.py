"""A BGP password goes from its secret file into ExaBGP's config and nowhere else: not into any log record
(at DEBUG, every logger) over a whole render + apply cycle of the confgen loop, including a validator that
rejects the config by quoting its lines, a secret file with a loose mode, an intent handed downstream and
shown, and a password the model refuses."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import traceback

from confgen.apply import ConfigWriter
from confgen.datastore.memory import MemoryDatastore
from confgen.loop import Confgen
from confgen.secrets import SecretStore

PASSWORD = "Tr0ub4dor-and-3"
ENCODED = base64.b64encode(PASSWORD.encode()).decode()
PEER = {
    "kind": "BGPPeer",
    "metadata": {"name": "tor"},
    "spec": {
        "peerIP": "10.0.0.254",
        "asNumber": 65000,
        "password": {"secretKeyRef": {"name": "bgp", "key": "tor"}},
    },
}
NODE = {"kind": "Node", "metadata": {"name": "node1"}, "spec": {"bgp": {"ipv4Address": "10.0.0.11/24"}}}


def leaked(records: list[logging.LogRecord], secrets: tuple[str, ...]) -> list[str]:
    texts = []
    for record in records:
        texts.append(record.getMessage())
        if record.exc_info:
            texts.append("".join(traceback.format_exception(*record.exc_info)))
    return [text for text in texts if any(secret in text for secret in secrets)]


async def test_no_log_record_carries_the_password_over_a_render_and_apply_cycle(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)  # every logger, every level
    secrets_dir = tmp_path / "secrets"
    (secrets_dir / "bgp").mkdir(parents=True)
    (secrets_dir / "bgp" / "tor").write_text(PASSWORD)
    (secrets_dir / "bgp" / "tor").chmod(0o644)  # warned about, by name and mode only
    # A validator that refuses the config and quotes every line of it, as a parser error might.
    quoting = tmp_path / "quoting-validator.sh"
    quoting.write_text(
        "#!/bin/sh\n"
        'echo "error in $1:"; cat "$1"\n'
        "echo \"token: $(sed -n 's/.*md5-password \\\"\\(.*\\)\\\";/\\1/p' \"$1\")\"\n"
        "exit 1\n"
    )
    quoting.chmod(0o755)
    # Checked from the first file on: the rejection's text is what must not carry the key.
    writer = ConfigWriter(tmp_path / "run" / "exabgp.conf", validate_cmd=(str(quoting),), check_first=True)
    store = MemoryDatastore("node1")
    store.put_resource(NODE)
    store.put_resource(PEER)
    intents = []

    async def on_intent(intent):
        intents.append(intent)
        logging.getLogger("test.downstream").debug("new intent: %s / %r", intent, intent.peers)

    reloads = []
    confgen = Confgen(
        store,
        "node1",
        writer,
        api_run="/usr/bin/env true",
        on_intent=on_intent,
        reload=lambda: reloads.append(1),
        secrets=SecretStore(secrets_dir),
    )
    task = asyncio.create_task(confgen.run())
    try:
        for _ in range(100):  # the rejection: logged with the validator's output
            await asyncio.sleep(0.05)
            if any("keeping the last good ExaBGP config" in r.getMessage() for r in caplog.records):
                break
        rejection = next(r.getMessage() for r in caplog.records if "keeping the last good" in r.getMessage())
        assert 'md5-password "<redacted>"' in rejection and "token:" in rejection

        writer.validate_cmd = ("/bin/true",)  # now it is accepted and installed
        confgen.trigger()
        await asyncio.wait_for(confgen.first_render(), 10)
        assert ENCODED in writer.dest.read_text() and reloads == [1]
        assert intents and intents[-1].peers[-1].password == PASSWORD

        # A password the model refuses (a trailing newline from `echo`) is named without being shown.
        (secrets_dir / "bgp" / "tor").write_text(PASSWORD + "\n")
        confgen.trigger()
        for _ in range(100):
            await asyncio.sleep(0.05)
            if any("trailing newline" in w for w in intents[-1].warnings):
                break
        assert any("trailing newline" in w for w in intents[-1].warnings)
        assert all(PASSWORD not in w for w in intents[-1].warnings)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert any("is readable by its group and others (mode 0644)" in r.getMessage() for r in caplog.records)
    assert any(r.levelno == logging.DEBUG and r.name == "test.downstream" for r in caplog.records)
    assert leaked(caplog.records, (PASSWORD, ENCODED)) == []
