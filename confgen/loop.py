"""The confgen loop: snapshots in, debounced intent + validated ExaBGP config out.

Stage: drives the whole confgen pipeline (datastore -> calc -> render -> apply) and hands each new
intent to the other dataplanes through ``on_intent``. ``bgp.daemon`` builds it, awaits
``first_render()`` before starting ExaBGP, and supplies ``reload`` (SIGUSR1 to ExaBGP).

Owns: the debounce window, the last intent handed out, the last valid model (whose resources stand in
for ones that turn invalid), the secrets poll, the retry policy and the
``calico_bgp_config_renders_total{result}`` / ``calico_bgp_invalid_resources{kind}`` metrics; it reports
the sessions the renderer leaves out to ``calico_bgp_refused_sink_values_total{sink="exabgp_config"}``.

Complicating factors:
- Datastores deliver bursts (a calicoctl apply of many resources, a relist after reconnect). Snapshots
  are coalesced: processing waits until no snapshot arrived for ``debounce`` seconds, but never longer
  than ``max_delay`` after the first one, so a steady trickle cannot starve the config.
- ``on_intent`` runs only when the intent or its warnings changed (``NodeIntent`` equality ignores
  warnings, so consumers comparing intents see no change when only a warning came or went; status still
  gets the new warnings), and ``reload`` only when the file's bytes changed, so a no-op datastore write
  costs one render and nothing downstream.
- A session the renderer refuses (a value outside the config grammar that got past validation) is left
  out of the file, not the whole config: its message joins the intent's warnings before the intent goes
  downstream, so it is logged once, counted and shown by ``calico-bgp status`` like an invalid resource.
  The render therefore runs before ``on_intent``; the file is still written only after it.
- Failures keep the last good state. A bad intent or a config the validator rejects will not improve by
  retrying the same snapshot, so those wait for the next change; I/O errors (disk, validator timeout, a
  failing callback) are retried with backoff (``calico_bgp.backoff``, without jitter: the retries reach only
  this node's disk, validator and ExaBGP). A reload that failed is remembered and retried even though
  the file on disk is already current.
- Nothing may start ExaBGP before a config exists: ``first_render()`` completes after the first
  successful write (or a byte-identical file from the previous run).
- Passwords live in files, not in the datastore: the loop reads the secrets the model references just
  before each calculation (the calculation itself stays pure) and polls those files every
  ``secrets_poll`` seconds; a change re-runs the calculation on the last snapshot (``trigger``), through
  the same debounce as a datastore change.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from calico_bgp.backoff import Backoff, Retries
from confgen.apply import ConfigRejected, ConfigWriter
from confgen.calc import intent_from_model
from confgen.datastore.base import Datastore, Snapshot
from confgen.datastore.keys import PLURALS
from confgen.intent import NodeIntent
from confgen.model import Model, parse_snapshot
from confgen.refusals import EXABGP_CONFIG, SinkRefusals
from confgen.render import Rendered, RenderError, render_config
from confgen.secrets import Fingerprint, Secrets, SecretStore
from confgen.validate import SecretRef

log = logging.getLogger(__name__)

OK, ERROR, UNCHANGED = "ok", "error", "unchanged"


async def _call(callback: Callable[..., Awaitable[None] | None], *args: object) -> None:
    result = callback(*args)
    if inspect.isawaitable(result):
        await result


class _Retry(Exception):
    """A transient failure: process the same snapshot again after a backoff."""


class Confgen:
    def __init__(
        self,
        datastore: Datastore,
        node: str,
        writer: ConfigWriter,
        *,
        api_run: str,
        on_intent: Callable[[NodeIntent], Awaitable[None] | None],
        reload: Callable[[], Awaitable[None] | None],
        api_process: str = "calico-bgp-api",
        router_id: str | None = None,
        debounce: float = 0.1,
        max_delay: float = 2.0,
        retry_initial: float = 0.25,
        retry_max: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        registry: CollectorRegistry | None = None,
        secrets: SecretStore | None = None,
        secrets_poll: float = 2.0,
        refusals: SinkRefusals | None = None,  # shared with the other sinks: one counter per registry
        renderer: Callable[..., Rendered] = render_config,
    ) -> None:
        self._datastore = datastore
        self.node = node
        self._writer = writer
        self._api_run = api_run
        self._api_process = api_process
        self._renderer = renderer
        self._router_id = router_id
        self._on_intent = on_intent
        self._reload = reload
        self._debounce = debounce
        self._max_delay = max_delay
        self._retries = Retries(Backoff(first=retry_initial, cap=retry_max))
        self._clock = clock
        self._sleep = sleep
        self._secrets = secrets
        self._secrets_poll = secrets_poll

        self._latest: Snapshot | None = None
        self._model: Model | None = None  # the last model, for the "last valid version" rule
        self._secret_refs: frozenset[SecretRef] = frozenset()
        self._secret_fingerprint: Fingerprint = ()
        self._pending = asyncio.Event()
        self._window_start = 0.0
        self._last_arrival = 0.0
        self._first_render = asyncio.Event()
        self._reload_pending = False
        self._logged_warnings: tuple[str, ...] = ()
        self.intent: NodeIntent | None = None  # the last intent handed to on_intent
        self.config: str | None = None  # the last config text installed (or found identical)

        registry = registry if registry is not None else CollectorRegistry()
        self._renders = Counter(
            "calico_bgp_config_renders",
            "Config render attempts by outcome (ok = file replaced, unchanged = identical bytes).",
            ["result"],
            registry=registry,
        )
        for result in (OK, ERROR, UNCHANGED):
            self._renders.labels(result)  # export zeroes, so rate() works from the start
        self._warnings = Gauge(
            "calico_bgp_config_warnings",
            "Problems found in the last snapshot (invalid resources skipped).",
            registry=registry,
        )
        self._invalid = Gauge(
            "calico_bgp_invalid_resources",
            "Resources that failed validation in the last snapshot (skipped, or their last valid "
            "version kept in force).",
            ["kind"],
            registry=registry,
        )
        for kind in PLURALS:
            self._invalid.labels(kind)
        self._refusals = refusals if refusals is not None else SinkRefusals(registry)

    async def first_render(self) -> None:
        """Wait until a valid config file exists (the daemon starts ExaBGP only after this)."""
        await self._first_render.wait()

    def trigger(self) -> None:
        """Recompute from the last snapshot (something outside the datastore changed: a secret file).
        Goes through the debounce like a datastore change; a no-op before the first snapshot."""
        if self._latest is not None:
            self._on_snapshot(self._latest)

    def _on_snapshot(self, snapshot: Snapshot) -> None:
        now = self._clock()
        if not self._pending.is_set():
            self._window_start = now
        self._last_arrival = now
        self._latest = snapshot
        self._pending.set()

    async def run(self) -> None:
        """Run until cancelled; a datastore that stops or fails ends the loop with its exception."""
        feeder = asyncio.create_task(self._datastore.run(self._on_snapshot), name="confgen-datastore")
        poller = None
        if self._secrets is not None:
            poller = asyncio.create_task(self._poll_secrets(), name="confgen-secrets")
        self._retries.reset()
        retry_in: float | None = None
        try:
            while True:
                await self._wait_for_work(feeder, retry_in)
                if self._pending.is_set():
                    await self._debounced()
                    self._pending.clear()
                assert self._latest is not None
                try:
                    await self._process(self._latest)
                except _Retry:
                    retry_in = self._retries.next_delay()
                else:
                    retry_in = None
                    self._retries.reset()
        finally:
            for task in (feeder, poller):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    async def _poll_secrets(self) -> None:
        assert self._secrets is not None
        while True:
            await self._sleep(self._secrets_poll)
            if not self._secret_refs:
                continue
            try:
                current = self._secrets.fingerprint(self._secret_refs)
            except Exception:  # a bug; polling must survive it
                log.exception("checking the secret files failed")
                continue
            if current != self._secret_fingerprint:
                log.info("a BGP password secret changed; recomputing the configuration")
                self._secret_fingerprint = current
                self.trigger()

    async def _wait_for_work(self, feeder: asyncio.Task[None], retry_in: float | None) -> None:
        waiters: set[asyncio.Future[Any]] = {asyncio.ensure_future(self._pending.wait()), feeder}
        if retry_in is not None:
            waiters.add(asyncio.ensure_future(self._sleep(retry_in)))
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters - {feeder}:
                waiter.cancel()
        if feeder.done():
            feeder.result()  # re-raise the datastore's failure
            raise RuntimeError("the datastore stopped delivering snapshots")

    async def _debounced(self) -> None:
        while True:
            deadline = min(self._last_arrival + self._debounce, self._window_start + self._max_delay)
            remaining = deadline - self._clock()
            if remaining <= 0:
                return
            await self._sleep(remaining)

    async def _process(self, snapshot: Snapshot) -> None:
        try:
            model, warnings = parse_snapshot(snapshot, self._model)
            secrets: Secrets = {}
            refs = model.secret_refs()
            if self._secrets is not None:
                secrets, self._secret_fingerprint = self._secrets.read_all(refs)
            self._secret_refs = refs
            intent = intent_from_model(
                model, self.node, warnings=warnings, router_id=self._router_id, secrets=secrets
            )
            self._model = model
            for kind in PLURALS:
                self._invalid.labels(kind).set(len(model.invalid.get(kind, ())))
        except Exception:
            # A bug in the calculation, not bad data (bad data becomes warnings): keep the last config.
            log.exception("computing the intent for revision %s failed", snapshot.revision)
            self._renders.labels(ERROR).inc()
            return
        try:
            rendered: Rendered | Exception = self._renderer(
                intent, api_run=self._api_run, api_process=self._api_process
            )
        except Exception as exc:  # RenderError (the whole file is unusable) or a bug: handled below
            rendered = exc
        if isinstance(rendered, Rendered) and rendered.refused:
            intent = dataclasses.replace(intent, warnings=intent.warnings + rendered.refused)
            self._refusals.count(EXABGP_CONFIG, len(rendered.refused))
        self._log_warnings(intent)

        if self.intent is None or intent != self.intent or intent.warnings != self.intent.warnings:
            try:
                await _call(self._on_intent, intent)
            except Exception as exc:
                log.exception("handing the new intent downstream failed")
                raise _Retry from exc
            self.intent = intent

        try:
            if isinstance(rendered, Exception):
                raise rendered
            text = rendered.text
            changed = await self._writer.write(text)
        except (RenderError, ConfigRejected) as exc:
            log.error("keeping the last good ExaBGP config: %s", exc)
            self._renders.labels(ERROR).inc()
            return
        except Exception as exc:
            log.exception("writing the ExaBGP config failed; will retry")
            self._renders.labels(ERROR).inc()
            raise _Retry from exc
        self.config = text
        self._renders.labels(OK if changed else UNCHANGED).inc()
        self._first_render.set()

        if changed or self._reload_pending:
            self._reload_pending = True
            try:
                await _call(self._reload)
            except Exception as exc:
                log.exception("reloading ExaBGP failed; will retry")
                raise _Retry from exc
            self._reload_pending = False

    def _log_warnings(self, intent: NodeIntent) -> None:
        self._warnings.set(len(intent.warnings))
        if intent.warnings != self._logged_warnings:
            for warning in intent.warnings:
                if warning not in self._logged_warnings:
                    log.warning("%s", warning)
            self._logged_warnings = intent.warnings
