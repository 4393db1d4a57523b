"""Workloads (a), (b) and (d) of docs/performance.md against one speaker pair: bulk propagation,
single-route latency, memory and idle CPU.

Stage: the benchmark's workloads. ``bench.__main__`` runs ``run_pair`` once with the BIRD pair and once
with the calico-bgp pair, in the same invocation, with the same plan.

Owns: the order of the measurements on a pair and the raw samples they produce (``PairResults``).

Order on a pair (each step starts from a quiet pair, see ``_settle``):
1. idle, no routes: RSS of each node's processes, CPU over ``idle_seconds`` in ``idle_windows`` windows;
2. bulk (a): for each N, ``repeats`` times: ``ip -batch`` N adds on A, time until B holds all N; then the
   deletes, time until B holds none. On the last repeat of the largest N, before deleting: RSS and idle CPU
   while holding N routes (d), and single-route latency next to them;
3. single-route latency (b) on the empty table: ``latency_trials`` times add one /32 on A, time until B
   has it, delete it, wait until B dropped it.

Complicating factors:
- A pair that is still busy with the previous step would distort the next one (a daemon still working
  through a burst, BIRD's 2 s scan), so every step waits until both nodes' processes are quiet, with a
  ceiling: BIRD holding 100k routes is never fully quiet.
- A bulk run that times out is recorded as missing (not as the timeout), the routes are deleted, and the
  remaining repeats of larger N are skipped: one slow pair must not run for an hour.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import felix, procs
from bench.kernelwatch import RouteWatch

log = logging.getLogger(__name__)

LATENCY_OFFSET = 500_000  # address offsets inside the pool, away from the bulk range
LATENCY_LOADED_OFFSET = 700_000
GIVE_UP = 3


@dataclass(frozen=True)
class Plan:
    sizes: tuple[int, ...] = (1_000, 10_000, 100_000)
    repeats: int = 3
    latency_trials: int = 50
    loaded_latency_trials: int = 50
    idle_seconds: float = 30.0
    idle_windows: int = 3
    settle_below: float = 8.0  # % of a core, both nodes together
    settle_timeout: float = 30.0

    def bulk_timeout(self, n: int) -> float:
        return 60.0 + n * 0.003


@dataclass
class PairResults:
    name: str
    # seconds from the start of A's ip -batch until B holds all N (bulk_del: holds none)
    bulk_add: dict[int, list[float]] = field(default_factory=dict)
    bulk_del: dict[int, list[float]] = field(default_factory=dict)
    batch_add: dict[int, list[float]] = field(default_factory=dict)  # seconds of ip -batch itself on A
    fill_rate: dict[int, list[float]] = field(default_factory=dict)  # routes/s into B, first to last route
    latency_ms: list[float] = field(default_factory=list)
    latency_loaded_ms: list[float] = field(default_factory=list)
    latency_failures: int = 0
    rss_idle: dict[str, float] = field(default_factory=dict)  # node -> MiB
    rss_held: dict[str, float] = field(default_factory=dict)  # "A 10000" -> MiB while holding 10k routes
    rss_split: dict[str, dict[str, float]] = field(default_factory=dict)  # "idle A" -> role -> MiB
    cpu_idle: dict[str, list[float]] = field(default_factory=dict)  # node -> % of a core per window
    cpu_loaded: dict[str, list[float]] = field(default_factory=dict)
    loaded_routes: int = 0
    watcher_cpu_seconds: float = 0.0
    watcher_overflows: int = 0
    errors: list[str] = field(default_factory=list)


NODES = ("A", "B")
_BY_SIZE = ("bulk_add", "bulk_del", "batch_add", "fill_rate")


def results_from_json(data: dict) -> PairResults:
    """A ``PairResults`` saved with ``dataclasses.asdict`` and JSON (whose object keys are strings)."""
    fields = dict(data)
    for name in _BY_SIZE:
        fields[name] = {int(n): v for n, v in fields.get(name, {}).items()}
    return PairResults(**fields)


def _roots(pair) -> list[int]:
    return pair.roots(0) + pair.roots(1)


def _settle(pair, plan: Plan) -> None:
    procs.settle(_roots(pair), below=plan.settle_below, timeout=plan.settle_timeout)


def _memory(pair, results: PairResults, routes: int) -> None:
    for i, node in enumerate(NODES):
        total, split = procs.rss_mib(pair.roots(i))
        if routes:
            results.rss_held[f"{node} {routes}"] = total
        else:
            results.rss_idle[node] = total
        results.rss_split[f"{node} {routes} routes"] = split


def _resources(pair, plan: Plan, results: PairResults, loaded: bool) -> None:
    target = results.cpu_loaded if loaded else results.cpu_idle
    window = plan.idle_seconds / plan.idle_windows
    for _ in range(plan.idle_windows):
        # Both nodes in the same window: their trees are sampled back to back at each end.
        before = {n: procs.samples(pair.roots(i)) for i, n in enumerate(NODES)}
        start = time.monotonic()
        time.sleep(window)
        elapsed = time.monotonic() - start
        for i, node in enumerate(NODES):
            used = procs.cpu_window(before[node], procs.samples(pair.roots(i)))
            target.setdefault(node, []).append(100.0 * used / elapsed)


def _latency(pair, watch: RouteWatch, trials: int, offset: int, pool: str, out: list[float]) -> int:
    """Single-route trials; gives up after ``GIVE_UP`` timeouts in a row (a pair that cannot keep up
    would otherwise spend 10 s per trial). Returns the number of timeouts."""
    failures = streak = 0
    with felix.RouteWriter(pair.ns_a) as writer:
        for address in felix.addresses(pool, trials, offset=offset):
            if streak >= GIVE_UP:
                log.warning("%s: %d single-route timeouts in a row; giving up", pair.name, streak)
                break
            start = writer.add(address)
            seen = watch.wait_route(address, True, timeout=10.0)
            if seen is None:
                failures += 1
                streak += 1
            else:
                streak = 0
                out.append((seen - start) * 1000.0)
            writer.delete(address)
            if watch.wait_route(address, False, timeout=10.0) is None:
                failures += 1
            time.sleep(0.02)
    return failures


def run_pair(pair, plan: Plan, pool: str) -> PairResults:
    results = PairResults(pair.name)
    felix.add_workload_device(pair.ns_a)
    with RouteWatch(pair.ns_b, pool) as watch, tempfile.TemporaryDirectory() as tmp:
        _settle(pair, plan)
        log.info("%s: idle resources", pair.name)
        _memory(pair, results, 0)
        _resources(pair, plan, results, loaded=False)
        largest = max(plan.sizes) if plan.sizes else 0
        for n in sorted(plan.sizes):
            addrs = felix.addresses(pool, n)
            add = felix.write_batch(Path(tmp) / f"add-{n}", addrs, "add")
            delete = felix.write_batch(Path(tmp) / f"del-{n}", addrs, "del")
            for repeat in range(plan.repeats):
                log.info("%s: bulk %d, repeat %d", pair.name, n, repeat + 1)
                last = repeat == plan.repeats - 1
                if not _bulk_once(
                    pair, plan, watch, results, n, add, delete, pool, last=last, hold=(n == largest and last)
                ):
                    break
        if plan.latency_trials:
            log.info("%s: single-route latency, %d trials", pair.name, plan.latency_trials)
            _settle(pair, plan)
            results.latency_failures += _latency(
                pair, watch, plan.latency_trials, LATENCY_OFFSET, pool, results.latency_ms
            )
    results.watcher_cpu_seconds = watch.cpu_seconds
    results.watcher_overflows = watch.overflows
    return results


def _bulk_once(pair, plan, watch, results, n, add, delete, pool, last, hold) -> bool:
    timeout = plan.bulk_timeout(n)
    _settle(pair, plan)
    watch.mark()
    start = time.perf_counter()
    results.batch_add.setdefault(n, []).append(felix.run_batch(pair.ns_a, add))
    done = watch.wait_count(n, timeout)
    if done is None:
        results.errors.append(f"bulk add {n}: B held {watch.count}/{n} after {timeout:.0f} s")
    else:
        results.bulk_add.setdefault(n, []).append(done - start)
        log.info("%s: %d routes in B after %.3f s", pair.name, n, done - start)
        first = watch.first_change
        if first is not None and done > first:
            results.fill_rate.setdefault(n, []).append(n / (done - first))
        if last:
            _settle(pair, plan)
            _memory(pair, results, n)
        if hold:
            log.info("%s: resources while holding %d routes", pair.name, n)
            results.loaded_routes = n
            _resources(pair, plan, results, loaded=True)
            if plan.loaded_latency_trials:
                results.latency_failures += _latency(
                    pair,
                    watch,
                    plan.loaded_latency_trials,
                    LATENCY_LOADED_OFFSET,
                    pool,
                    results.latency_loaded_ms,
                )
    _settle(pair, plan)
    start = time.perf_counter()
    felix.run_batch(pair.ns_a, delete)
    gone = watch.wait_count(0, timeout)
    if gone is None:
        results.errors.append(f"bulk delete {n}: B still held {watch.count}/{n} after {timeout:.0f} s")
        return False
    if done is not None:
        results.bulk_del.setdefault(n, []).append(gone - start)
        log.info("%s: %d routes gone from B after %.3f s", pair.name, n, gone - start)
    return done is not None
