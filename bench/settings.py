"""``python -m bench settings``: ExaBGP settings compared on calico-bgp's own workloads.

Stage: a diagnostic next to the benchmark. Each variant builds a fresh calico-bgp pair with one ExaBGP
setting changed and runs a reduced plan of the propagation workloads (``bench.propagation``): bulk
propagation of N routes (default 10k), single-route latency, RSS and idle CPU. The results go to
``bench/results/settings.md`` (and ``settings.json``).

Variants (docs/exabgp-notes.md):
- our ExaBGP tuning (``bgp.exabgp.tuning``) on, the default, or off (``CALICO_BGP_EXABGP_TUNING=off``:
  ExaBGP as shipped);
- ``exabgp.reactor.speed`` 10 (our default: with the tuning it paces only idle timer checks), 1.0
  (ExaBGP's default), 0.1, through ``CALICO_BGP_EXABGP_SPEED``, which
  ``bgp.exabgp.environment.exabgp_environment`` reads;
- ``exabgp.cache.attributes=false`` through ``CALICO_BGP_EXABGP_ENV``;
- ``adj-rib-out false`` on the neighbours: it is neighbour configuration, which confgen renders, so the
  variant rewrites the rendered ``exabgp.conf`` of both nodes after start and reloads ExaBGP (SIGUSR1,
  which resets the sessions because the setting changed). Confgen only re-renders on a datastore change,
  and the benchmark makes none; the variant checks the edit is still in place at the end.

Owns: the variants and the settings report. The daemons inherit this process's environment
(``labs.ops.node_env``), so each variant sets the variables before its lab starts and restores them after.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path

from bench import procs, stats
from bench.calico import BENCH_POOL, CalicoPair
from bench.propagation import Plan, run_pair
from bgp.exabgp.environment import EXTRA_ENV, SPEED_ENV
from bgp.exabgp.tuning import TUNING_ENV
from labs import ops

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
VARIANTS: dict[str, dict[str, str]] = {
    "tuned, reactor.speed 10 (default)": {},
    "untuned, reactor.speed 1.0 (ExaBGP as shipped)": {TUNING_ENV: "off", SPEED_ENV: "1.0"},
    "untuned, reactor.speed 0.1": {TUNING_ENV: "off", SPEED_ENV: "0.1"},
    "tuned, reactor.speed 1.0": {SPEED_ENV: "1.0"},
    "tuned, cache.attributes false": {EXTRA_ENV: "exabgp.cache.attributes=false"},
    "tuned, adj-rib-out false": {},
}
ADJ_RIB_OUT_OFF = "tuned, adj-rib-out false"


def _exabgp_pids(pair: CalicoPair) -> list[int]:
    found = []
    for i in (0, 1):
        found += [s.pid for s in procs.samples(pair.roots(i)) if s.name == "exabgp"]
    return found


def _configs(pair: CalicoPair) -> list[Path]:
    return [Path(n.run_dir) / "exabgp.conf" for n in ops.load(pair.lab).nodes]


def disable_adj_rib_out(pair: CalicoPair, timeout: float = 60.0) -> None:
    """Add ``adj-rib-out false;`` to every neighbour of both nodes, reload, wait for the sessions."""
    for path in _configs(pair):
        text = path.read_text()
        path.write_text(text.replace("    hold-time ", "    adj-rib-out false;\n    hold-time "))
    for pid in _exabgp_pids(pair):
        os.kill(pid, signal.SIGUSR1)
    time.sleep(2.0)  # the reload resets the sessions (a changed neighbour); wait for them to come back
    lab = ops.load(pair.lab)
    expected = {n.name: [m.ipv4.split("/")[0] for m in lab.nodes if m is not n] for n in lab.nodes}
    ready, reasons = ops.wait_sessions(lab, expected, timeout)
    if not ready:
        raise RuntimeError(f"sessions did not come back after adj-rib-out false: {reasons}")


def run_variant(name: str, env: dict[str, str], plan: Plan) -> dict[str, object]:
    saved = {k: os.environ.get(k) for k in (SPEED_ENV, EXTRA_ENV, TUNING_ENV)}
    os.environ.update(env)
    try:
        with CalicoPair() as pair:
            if name == ADJ_RIB_OUT_OFF:
                disable_adj_rib_out(pair)
            results = run_pair(pair, plan, BENCH_POOL)
            kept = None
            if name == ADJ_RIB_OUT_OFF:
                kept = all("adj-rib-out false;" in p.read_text() for p in _configs(pair))
        return {"name": name, "env": env, "results": asdict(results), "edit_kept": kept}
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def render(variants: list[dict[str, object]], plan: Plan) -> str:
    n = max(plan.sizes)
    head = (
        "| setting | bulk add {k} s | bulk delete {k} s | single route p50 ms | p95 ms | "
        "idle CPU A / B % core | RSS idle A / B MiB | RSS {k} A / B MiB |"
    ).format(k=f"{n // 1000}k")
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for v in variants:
        r = v["results"]
        lat = r["latency_ms"]
        p95 = stats.percentile(lat, 95)

        def both(d, key=lambda node: node):
            return " / ".join(stats.fmt_summary(_list(d.get(key(node)))) for node in ("A", "B"))

        lines.append(
            f"| {v['name']} | {stats.fmt_summary(r['bulk_add'].get(n, []))} | "
            f"{stats.fmt_summary(r['bulk_del'].get(n, []))} | {stats.fmt_summary(lat)} | "
            f"{stats.fmt_value(p95)} | {both(r['cpu_idle'])} | {both(r['rss_idle'])} | "
            f"{both(r['rss_held'], lambda node: f'{node} {n}')} |"
        )
    return "\n".join(lines)


def _list(value) -> list[float]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench settings", description=__doc__.splitlines()[0])
    parser.add_argument("--routes", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), help="names from VARIANTS")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)
    plan = Plan(
        sizes=(args.routes,),
        repeats=args.repeats,
        latency_trials=30,
        loaded_latency_trials=0,
        idle_seconds=20.0,
        idle_windows=2,
    )
    done = []
    for name in args.variants:
        log.info("settings variant: %s", name)
        try:
            done.append(run_variant(name, VARIANTS[name], plan))
        except Exception as exc:  # one broken variant must not lose the others
            log.exception("variant %s failed", name)
            done.append({"name": name, "env": VARIANTS[name], "error": str(exc)})
    ok = [v for v in done if "results" in v]
    table = render(ok, plan)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "settings.json").write_text(json.dumps({"plan": asdict(plan), "variants": done}, indent=1))
    failed = "".join(f"\n- {v['name']}: failed: {v['error']}" for v in done if "error" in v)
    (args.out / "settings.md").write_text(
        f"# ExaBGP settings, measured on calico-bgp's pair\n\nProduced by `python -m bench settings` "
        f"({args.routes} routes, {args.repeats} repeats, median (min–max)).\n\n{table}\n{failed}\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
