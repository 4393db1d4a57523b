"""Turning raw results into the side-by-side table, and saving them (JSON + markdown) with the machine.

Stage: the end of a benchmark run (``bench.__main__``).

Owns: which rows the table has and which headline metric (``bench.targets``) each counts towards, the
markdown layout, the machine description (CPU, cores, kernel, Python, ExaBGP, pyroute2, BIRD, git commit)
and the files in ``bench/results``.

Complicating factors:
- Every row keeps its raw samples in the JSON, so a later reader can recompute any figure; the markdown
  shows median (min–max) only.
- Anything missing (a workload skipped with ``--only``, a run that failed) shows as "n/a" or "—", never
  as zero.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

import psutil

from bench import targets
from bench.stats import Row, fmt_summary, fmt_value, percentile, summarize

REPO = Path(__file__).resolve().parent.parent


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine(bird_version: str = "") -> dict[str, object]:
    def git(*args: str) -> str:
        proc = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
        return proc.stdout.strip()

    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "exabgp": _version("exabgp"),
        "pyroute2": _version("pyroute2"),
        "bird": bird_version or "not run",
        "git_commit": git("rev-parse", "--short", "HEAD")
        + (" (dirty)" if git("status", "--porcelain") else ""),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "load_average_at_start": os.getloadavg()[0],
    }


# ------------------------------------------------------------------------------------------ rows


def _k(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 else str(n)


def _tagged(key: str) -> dict[str, object]:
    """The key and target of a headline metric, as Row keyword arguments."""
    return {"key": key, "target": targets.target(key)}


def propagation_rows(bird, ours) -> list[Row]:
    """Rows for (a), (b), (d) from two ``PairResults`` (either may be None when skipped)."""

    def get(res, attr, key=None):
        if res is None:
            return None
        value = getattr(res, attr)
        return value.get(key, []) if key is not None else value

    sizes = sorted(
        {
            *(bird.bulk_add if bird else {}),
            *(ours.bulk_add if ours else {}),
            *(bird.batch_add if bird else {}),
            *(ours.batch_add if ours else {}),
        }
    )
    rows = []
    for n in sizes:
        rows.append(
            Row(
                "a",
                f"bulk add {_k(n)} /32s: A's ip -batch start → all in B's kernel",
                "s",
                ours=get(ours, "bulk_add", n) or [],
                bird=get(bird, "bulk_add", n),
                **_tagged(f"add {_k(n)}"),
            )
        )
    for n in sizes:
        rows.append(
            Row(
                "a",
                f"bulk delete {_k(n)}: ip -batch start → none left in B",
                "s",
                ours=get(ours, "bulk_del", n) or [],
                bird=get(bird, "bulk_del", n),
                **_tagged(f"delete {_k(n)}"),
            )
        )
    for label, attr in (
        ("single route A→B, empty table", "latency_ms"),
        ("single route A→B, largest table present", "latency_loaded_ms"),
    ):
        o, b = get(ours, attr) or [], get(bird, attr)
        rows.append(
            Row(
                "b",
                f"{label}: p50 (min–max)",
                "ms",
                ours=o,
                bird=b,
                note=f"trials: ours {len(o)}, BIRD {len(b or [])}",
                **_tagged("latency p50"),
            )
        )
        rows.append(
            Row(
                "b",
                f"{label}: p95",
                "ms",
                ours=[v] if (v := percentile(o, 95)) is not None else [],
                bird=[v] if (v := percentile(b or [], 95)) is not None else ([] if b is not None else None),
                **_tagged("latency p95"),
            )
        )
    for n in sizes:
        rows.append(
            Row(
                "c",
                f"B's kernel fill rate during bulk add {_k(n)} (first to last route)",
                "routes/s",
                ours=get(ours, "fill_rate", n) or [],
                bird=get(bird, "fill_rate", n),
                note="higher is better; ratio > 1 means faster than BIRD",
            )
        )
    for node in ("A", "B"):
        rows.append(
            Row(
                "d",
                f"RSS, node {node}, idle, no routes",
                "MiB",
                ours=_one(get(ours, "rss_idle"), node),
                bird=_one(get(bird, "rss_idle"), node),
                **_tagged("rss idle"),
            )
        )
        for n in sizes:
            rows.append(
                Row(
                    "d",
                    f"RSS, node {node}, holding {_k(n)} routes",
                    "MiB",
                    ours=_one(get(ours, "rss_held"), f"{node} {n}"),
                    bird=_one(get(bird, "rss_held"), f"{node} {n}"),
                    **_tagged(f"rss {_k(n)}"),
                )
            )
    for node in ("A", "B"):
        rows.append(
            Row(
                "d",
                f"idle CPU, node {node}, no routes (per window)",
                "% core",
                ours=get(ours, "cpu_idle", node) or [],
                bird=get(bird, "cpu_idle", node),
                **_tagged("cpu idle"),
            )
        )
        loaded = _k(ours.loaded_routes if ours else bird.loaded_routes if bird else 0)
        rows.append(
            Row(
                "d",
                f"idle CPU, node {node}, holding {loaded} routes (per window)",
                "% core",
                ours=get(ours, "cpu_loaded", node) or [],
                bird=get(bird, "cpu_loaded", node),
                **_tagged("cpu loaded"),
            )
        )
    return rows


def _one(mapping, key) -> list[float] | None:
    if mapping is None:
        return None
    return [mapping[key]] if key in mapping else []


def mesh_rows(runs: dict[int, list]) -> list[Row]:
    rows = []
    for n in sorted(runs):
        done = runs[n]
        conv = [r.converged_s for r in done if r.converged_s is not None]
        rows.append(
            Row(
                "e",
                f"{n}-node mesh: lab up start → every block in every kernel",
                "s",
                ours=conv,
                target=targets.mesh_target(n, max(runs)),
                failures=len(done) - len(conv),
                note=f"{len(conv)}/{len(done)} runs converged",
                key=targets.mesh_key(n),
            )
        )
        for label, values in (
            ("lab up start → last daemon started", [r.phases.get("daemons") for r in done]),
            ("lab up start → first node converged", [min(r.node_converged_s or [None]) for r in done]),
            ("lab up start → lab up returned", [r.up_s for r in done]),
        ):
            rows.append(Row("e", f"{n}-node mesh: {label}", "s", ours=[v for v in values if v is not None]))
        for label, attr, unit in (
            ("CPU per node, start → converged (median node)", "cpu_s_per_node", "s"),
            ("RSS per node after convergence (median node)", "rss_mib_per_node", "MiB"),
            ("idle CPU per node after convergence (median node)", "idle_cpu_per_node", "% core"),
        ):
            per_run = [summarize(getattr(r, attr)) for r in done]
            rows.append(
                Row(
                    "e",
                    f"{n}-node mesh: {label}",
                    unit,
                    ours=[s.median for s in per_run if s is not None],
                    note="max node: " + ", ".join(fmt_value(s.high) for s in per_run if s),
                )
            )
        for label, attr, unit in (
            ("machine CPU busy, start → converged (all cores)", "machine_busy_pct", "%"),
            ("machine memory in use at the peak", "memory_peak_gib", "GiB"),
        ):
            values = [getattr(r, attr) for r in done]
            rows.append(Row("e", f"{n}-node mesh: {label}", unit, ours=[v for v in values if v is not None]))
    return rows


def mesh_notes(runs: dict[int, list]) -> list[str]:
    """Per mesh size: where lab up's time went (median phase ends) and the monitor's own CPU."""
    notes = []
    for n in sorted(runs):
        done = runs[n]
        phases: dict[str, list[float]] = {}
        for r in done:
            for phase, at in r.phases.items():
                phases.setdefault(phase, []).append(at)
        ends = ", ".join(f"{p} {fmt_value(summarize(v).median)} s" for p, v in phases.items() if summarize(v))
        monitor = max((r.monitor_cpu_s for r in done), default=0.0)
        if ends:  # runs saved before phases were recorded have none
            notes.append(
                f"(e) {n}-node mesh, end of each lab up phase after its start (median): {ends}; "
                f"convergence monitor used at most {monitor:.2f} s CPU per run"
            )
        for i, r in enumerate(done):
            if r.cpu_split_s:
                split = ", ".join(f"{role} {seconds:.2f} s" for role, seconds in r.cpu_split_s.items())
                notes.append(
                    f"(e) {n}-node mesh run {i + 1}, CPU start → converged by process, median node: {split}"
                )
            if r.idle_split_pct:
                split = ", ".join(
                    f"{role} {pct:.2f} %" for role, pct in r.idle_split_pct.items() if pct >= 0.005
                )
                notes.append(f"(e) {n}-node mesh run {i + 1}, idle CPU after convergence by process: {split}")
            if r.limit:
                notes.append(f"(e) {n}-node mesh run {i + 1} stopped by the machine: {r.limit}")
    return notes


# ------------------------------------------------------------------------------------------ output

HEADER = (
    "| | metric | unit | BIRD 1.6 | calico-bgp | calico-bgp / BIRD | target | met |",
    "|---|---|---|---|---|---|---|---|",
)


def render(rows: list[Row]) -> str:
    lines = list(HEADER)
    for row in rows:
        if row.reference is not None:
            share = row.share()
            ratio = "n/a" if share is None else f"{share:.2f}× ip -batch ({fmt_summary(row.reference)})"
        else:
            r = row.ratio()
            ratio = "—" if row.bird is None else ("n/a" if r is None else f"{r:.2f}×")
        met = {True: "yes", False: "**no**", None: ""}[row.met()]
        target = row.target.text if row.target else ""
        lines.append(
            f"| {row.section} | {row.metric} | {row.unit} | {fmt_summary(row.bird)} | "
            f"{fmt_summary(row.ours)} | {ratio} | {target} | {met} |"
        )
    return "\n".join(lines)


def row_json(row: Row) -> dict[str, object]:
    def side(samples):
        if samples is None:
            return None
        s = summarize(samples)
        return {"samples": samples, **(asdict(s) if s else {})}

    return {
        "section": row.section,
        "metric": row.metric,
        "headline": row.key or None,
        "unit": row.unit,
        "bird": side(row.bird),
        "ours": side(row.ours),
        "reference": side(row.reference),
        "ratio": row.ratio(),
        "share": row.share(),
        "target": row.target.text if row.target else None,
        "met": row.met(),
        "note": row.note,
    }


def markdown(rows: list[Row], info: dict[str, object], notes: list[str]) -> str:
    machine_lines = "\n".join(f"- {k}: {v}" for k, v in info.items())
    note_lines = "\n".join(f"- {n}" for n in notes)
    return f"""# calico-bgp vs BIRD 1.6: benchmark results

Produced by `make bench` (`python -m bench`). Medians with (min–max) over the repeats; ratios are
calico-bgp / BIRD medians (lower is better except for rates). Raw samples: `latest.json`.

## Machine
{machine_lines}

## Headline (targets: docs/performance.md#targets)
{targets.render_markdown(rows)}

## Results
{render(rows)}

## Notes
{note_lines}
"""


def save(
    out: Path, rows: list[Row], info: dict[str, object], raw: dict[str, object], notes: list[str]
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    data = {"machine": info, "rows": [row_json(r) for r in rows], "raw": raw, "notes": notes}
    (out / "latest.json").write_text(json.dumps(data, indent=1, default=_default) + "\n")
    (out / "latest.md").write_text(markdown(rows, info, notes))


def _default(value: object) -> object:
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    return str(value)
