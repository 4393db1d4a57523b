"""``python -m bench``: calico-bgp and BIRD 1.6 side by side, in one invocation, on this machine.

Stage: the benchmark's entry point (``make bench``). Workloads (docs/performance.md#targets):
  (a) bulk propagation of 1k/10k/100k borrowed /32s from A's kernel to B's, and their withdrawal;
  (b) single-route latency A→B, p50/p95;
  (c) learned-route kernel install rate next to ``ip -batch`` (routes.bench), and B's fill rate;
  (d) RSS of a node's processes idle and holding routes, idle CPU;
  (e) N-node mesh labs: time to convergence, CPU and RSS per node (calico-bgp only).
(a), (b), (d) run first on the BIRD pair, then on the calico-bgp pair, with the same plan; then (c) and
(e). The table is printed and saved to bench/results/latest.{json,md}; the headline table of
``bench.targets`` (each headline metric against its target: the regression guard) is printed last.

Other commands: ``python -m bench profile`` (py-spy on both daemons during bulk propagation) and
``python -m bench settings`` (ExaBGP settings compared on the bulk workload); see their modules.

Complicating factors: everything here needs root (namespaces) and must leave nothing behind; each pair
and lab is a context manager that removes itself in every outcome, including Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from bench import install, plots, report, targets
from bench.propagation import Plan
from bench.stats import Row

log = logging.getLogger("bench")

RESULTS = Path(__file__).resolve().parent / "results"
WORKLOADS = "abcde"
MESH_SECONDS_PER_NODE = 4.0

FULL = dict(
    mesh_timeout=300.0,
    plan=Plan(),
    mesh=(10, 25, 50, 100),
    mesh_repeats=3,
    mesh_once_from=100,  # meshes this large run once: a 100-node run takes minutes and most of the machine
    install=(10_000, 100_000),
    install_repeats=3,
)
QUICK = dict(
    plan=Plan(
        sizes=(1_000, 10_000),
        repeats=1,
        latency_trials=20,
        loaded_latency_trials=10,
        idle_seconds=6.0,
        idle_windows=2,
    ),
    mesh=(5, 10),
    mesh_timeout=120.0,
    mesh_repeats=1,
    mesh_once_from=100,
    install=(10_000,),
    install_repeats=1,
)


def bird_nodes():
    from bench.bird16 import BirdNode

    return (
        BirdNode("node1", "10.0.0.11", 24, "192.168.1.0/26"),
        BirdNode("node2", "10.0.0.12", 24, "192.168.2.0/26"),
    )


def run_propagation(plan: Plan, which: str) -> tuple[dict[str, object], str]:
    """(a)/(b)/(d) on both pairs; returns their results by name and BIRD's version."""
    from bench import bird16
    from bench.calico import BENCH_POOL, DEFAULT_POOL, CalicoPair
    from bench.propagation import run_pair

    results: dict[str, object] = {}
    binaries = bird16.ensure_binaries()
    bird_version = bird16.version(binaries)
    if "bird" in which:
        log.info("BIRD %s pair", bird_version)
        with bird16.BirdPair(bird_nodes(), (DEFAULT_POOL, BENCH_POOL), binaries) as pair:
            results["bird"] = run_pair(pair, plan, BENCH_POOL)
    if "ours" in which:
        log.info("calico-bgp pair")
        with CalicoPair() as pair:
            results["calico-bgp"] = run_pair(pair, plan, BENCH_POOL)
    return results, bird_version


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", default="run", choices=("run", "profile", "settings"))
    parser.add_argument("--quick", action="store_true", help="1 repeat, smaller N: for development")
    parser.add_argument("--only", default=WORKLOADS, help="workloads to run, e.g. 'ab' (default: abcde)")
    parser.add_argument("--speakers", default="bird,ours", help="bird, ours or both (default)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where latest.json/.md go")
    parser.add_argument("--no-save", action="store_true", help="print the table only")
    parser.add_argument("--sizes", type=int, nargs="+", help="override N of (a), e.g. 1000 10000")
    parser.add_argument("--mesh", type=int, nargs="+", help="override the mesh sizes of (e)")
    parser.add_argument("--repeats", type=int, help="override the repeats of (a), (c) and (e)")
    parser.add_argument("--note", action="append", default=[], help="a line for the notes of the results")
    parser.add_argument(
        "--resume",
        type=Path,
        help="a latest.json of a run that stopped early: keep its figures, run the rest",
    )
    args, rest = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    if os.geteuid() != 0:
        print("python -m bench needs root (network namespaces)", file=sys.stderr)
        return 2
    # Labs and namespaces are removed by `finally` blocks: make SIGTERM and SIGINT reach them, also when
    # started in the background (a non-interactive shell starts background jobs with SIGINT ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    if args.command == "profile":
        from bench import profile

        return profile.main(rest)
    if args.command == "settings":
        from bench import settings

        return settings.main(rest)
    if rest:
        parser.error(f"unrecognised arguments: {' '.join(rest)}")
    config = dict(QUICK if args.quick else FULL)
    if args.sizes:
        config["plan"] = replace(config["plan"], sizes=tuple(args.sizes))
    if args.mesh:
        config["mesh"] = tuple(args.mesh)
    if args.repeats:
        config["plan"] = replace(config["plan"], repeats=args.repeats)
        config["mesh_repeats"] = config["install_repeats"] = args.repeats
    return run(
        config,
        set(args.only),
        args.speakers,
        None if args.no_save else args.out,
        quick=args.quick,
        resume=json.loads(args.resume.read_text()) if args.resume else None,
        extra_notes=args.note,
    )


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run(
    config: dict,
    only: set[str],
    speakers: str,
    out: Path | None,
    *,
    quick: bool,
    resume: dict | None = None,
    extra_notes: list[str] | None = None,
) -> int:
    started = time.monotonic()
    plan: Plan = config["plan"]
    rows: list[Row] = []
    raw: dict[str, object] = {"plan": asdict(plan), "quick": quick}
    notes: list[str] = list(extra_notes or [])
    bird_version = ""
    interrupted = None
    mesh: dict[int, list] = {}
    prior = (resume or {}).get("raw", {})
    if resume:
        from bench.mesh import run_from_json
        from bench.propagation import results_from_json

        notes.append(f"resumed a run stopped early ({resume['machine'].get('date')}); its figures are kept")
        notes += [n for n in resume.get("notes", []) if not n.startswith(("run stopped early", "resumed"))]
        mesh = {int(n): [run_from_json(r) for r in runs] for n, runs in prior.get("mesh", {}).items()}
    try:
        if "propagation" in prior:
            results = {name: results_from_json(r) for name, r in prior["propagation"].items()}
            bird_version = resume["machine"].get("bird", "")
            raw["propagation"] = prior["propagation"]
            rows += report.propagation_rows(results.get("bird"), results.get("calico-bgp"))
        elif only & set("abd"):
            if "a" not in only:
                plan = replace(plan, sizes=())
            if "b" not in only:
                plan = replace(plan, latency_trials=0, loaded_latency_trials=0)
            results, bird_version = run_propagation(plan, speakers)
            raw["propagation"] = {name: asdict(r) for name, r in results.items()}
            rows += report.propagation_rows(results.get("bird"), results.get("calico-bgp"))
            for name, r in results.items():
                notes.append(
                    f"{name}: stopwatch thread used {r.watcher_cpu_seconds:.2f} s CPU in total, "
                    f"{r.watcher_overflows} notification overflows; latency timeouts: {r.latency_failures}"
                )
                notes += [f"{name}: {e}" for e in r.errors]
        if "install" in prior:
            raw["install"] = runs = {int(n): r for n, r in prior["install"].items()}
            rows += install.rows(list(config["install"]), runs)
        elif "c" in only:
            runs = {}
            for n in config["install"]:
                log.info("(c) routes.bench --routes %d, %d runs", n, config["install_repeats"])
                try:
                    runs[n] = install.run(n, config["install_repeats"])
                except RuntimeError as exc:
                    notes.append(f"(c) {exc}")
            raw["install"] = runs
            rows += install.rows(list(config["install"]), runs)
        if "e" in only:
            from bench.mesh import run_mesh

            for n in config["mesh"]:
                if any(r.error for r in mesh.get(n, [])):
                    continue  # resumed: this size already failed once
                repeats = 1 if n >= config["mesh_once_from"] else config["mesh_repeats"]
                # Start-up is CPU-bound (every node starts at once on 2 cores): allow time in proportion.
                timeout = max(config["mesh_timeout"], MESH_SECONDS_PER_NODE * n)
                for repeat in range(len(mesh.get(n, [])), repeats):
                    log.info("(e) %d-node mesh, run %d", n, repeat + 1)
                    result = run_mesh(n, timeout=timeout)
                    log.info("(e) %d nodes: converged after %s s", n, result.converged_s)
                    mesh.setdefault(n, []).append(result)
                    if result.error:
                        notes.append(f"(e) {n}-node mesh run {repeat + 1}: {result.error}")
                        break  # a size that did not converge once is not repeated: it would only wait again
    except (KeyboardInterrupt, Exception) as exc:  # keep what was measured before the failure
        interrupted = exc
        log.exception("benchmark stopped early")
        notes.append(f"run stopped early: {type(exc).__name__}: {exc}")
    if mesh:
        raw["mesh"] = {n: [asdict(r) for r in runs] for n, runs in mesh.items()}
        rows += report.mesh_rows(mesh)
        notes += report.mesh_notes(mesh)
    rows.sort(key=lambda r: r.section)
    info = report.machine(bird_version)
    info["duration_s"] = round(time.monotonic() - started)
    if resume:  # the figures kept are the earlier run's: say when they were taken and how long it ran
        info["resumed_from"] = {
            k: resume["machine"].get(k) for k in ("date", "duration_s", "git_commit", "load_average_at_start")
        }
        info["duration_s"] += int(resume["machine"].get("duration_s") or 0)
    info["mode"] = "quick" if quick else "full"
    print(report.render(rows))
    print(f"\n{info}")
    for note in notes:
        print(f"- {note}")
    if out is not None:
        # A run that stopped early must not overwrite the last complete results.
        out = out / "partial" if interrupted is not None else out
        report.save(out, rows, info, raw, notes)
        print(f"\nsaved {out / 'latest.json'} and {out / 'latest.md'}")
        try:  # the charts next to them (bench/plots.py; `python -m bench.plots` redraws a saved run)
            print(f"charts: {', '.join(str(p.name) for p in plots.write(out))}")
        except ImportError as exc:
            print(f"charts: not drawn ({exc}; matplotlib comes with `make venv`)")
    print(f"\n{targets.render_text(rows)}")  # last: the regression guard, where a terminal leaves off
    return 1 if interrupted is not None else 0


if __name__ == "__main__":
    sys.exit(main())
