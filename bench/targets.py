"""The targets of docs/performance.md#targets, and the headline table that guards them. Pure.

Stage: between ``bench.stats`` (rows, ``Target``) and ``bench.report``, which tags each row it builds with
a headline key and the target that key carries, and prints ``render_text`` at the end of every run.

Owns: one ``Target`` per headline metric (``TARGETS``; the mesh sizes in ``MESH_TARGETS``), the order and
labels of the headline lines, and how several rows of one metric fold into one line.

Complicating factors:
- One metric can have several rows: RSS and idle CPU are measured on node A and node B, single-route
  latency on an empty table and next to the largest. The line shows the worst of them (every headline
  metric is lower-is-better) and is met only when each of them is; a row without a figure makes it
  undecided, never met.
- A run measures a subset (``--quick`` has no 100k and no 50-node mesh, ``--speakers ours`` no BIRD):
  metrics without any figure are named on one "not measured" line instead of being shown as missed, and a
  ratio target without BIRD's figure is undecided ("n/a").
- This is a regression guard for a noisy, shared machine: it states the verdict of one run; the figures
  behind it are in the full table and the JSON.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bench.stats import Row, Target, fmt_value, summarize

CONVERGES = Target("converges", max_value=float("inf"))

# key -> (headline label, target). The order is the order of the headline table.
TARGETS: dict[str, tuple[str, Target]] = {
    "add 1k": ("bulk add 1k", Target("≤ 1.5× BIRD", max_ratio=1.5)),
    "add 10k": ("bulk add 10k", Target("≤ 0.5 s", max_value=0.5)),
    "add 100k": ("bulk add 100k", Target("≤ 1.0× BIRD", max_ratio=1.0)),
    "delete 100k": ("bulk delete 100k", Target("≤ 1.0× BIRD", max_ratio=1.0)),
    "latency p50": ("one route A→B p50", Target("≤ 1.5 ms", max_value=1.5)),
    "latency p95": ("one route A→B p95", Target("≤ 3 ms", max_value=3.0)),
    "rss idle": ("RSS per node, idle", Target("≤ 50 MiB", max_value=50.0)),
    "rss 10k": ("RSS per node, 10k routes", Target("≤ 60 MiB", max_value=60.0)),
    "rss 100k": ("RSS per node, 100k routes", Target("≤ 150 MiB", max_value=150.0)),
    "cpu idle": ("idle CPU per node", Target("≤ 0.5 % core", max_value=0.5)),
    "cpu loaded": ("idle CPU, largest table held", Target("≤ 0.5 % core", max_value=0.5)),
}
MESH_TARGETS: dict[int, Target] = {50: Target("≤ 20 s", max_value=20.0), 100: CONVERGES}
# Not a headline metric (no BIRD figure): learned routes into the kernel, next to ip -batch (workload c).
INSTALL = Target("≥ 50% of ip -batch", min_share=0.5)


def target(key: str) -> Target | None:
    entry = TARGETS.get(key)
    return entry[1] if entry else None


def mesh_key(nodes: int) -> str:
    return f"mesh {nodes}"


def mesh_target(nodes: int, largest: int) -> Target | None:
    """The target of an N-node mesh's convergence row: the issue's for 50 and 100 nodes, and "converges"
    for the largest mesh of a run that has neither (``--quick``)."""
    return MESH_TARGETS.get(nodes) or (CONVERGES if nodes == largest else None)


@dataclass(frozen=True)
class Line:
    label: str
    unit: str
    bird: float | None
    ours: float | None
    ratio: float | None
    target: str
    met: bool | None


def _worst(rows: Sequence[Row]) -> Row:
    def ours(row: Row) -> float:
        s = summarize(row.ours)
        return s.median if s is not None else float("-inf")

    return max(rows, key=ours)


def _verdict(rows: Sequence[Row]) -> bool | None:
    verdicts = [row.met() for row in rows]
    if any(v is False for v in verdicts):
        return False
    return None if any(v is None for v in verdicts) else True


def headline(rows: Sequence[Row]) -> tuple[list[Line], list[str]]:
    """The headline lines of a run's rows, and the labels of headline metrics it did not measure."""
    by_key: dict[str, list[Row]] = {}
    for row in rows:
        if row.key:
            by_key.setdefault(row.key, []).append(row)
    meshes = sorted(
        (int(key.split()[1]) for key, group in by_key.items() if key.startswith("mesh ")),
    )
    order = [(key, label) for key, (label, _) in TARGETS.items()]
    order += [(mesh_key(n), f"{n}-node mesh converged") for n in meshes]
    lines, missing = [], []
    for key, label in order:
        group = [row for row in by_key.get(key, []) if row.target is not None]
        if not any(row.ours or row.bird or row.failures for row in group):  # skipped, e.g. --only a
            if not key.startswith("mesh "):
                missing.append(label)
            continue
        row = _worst(group)
        bird, ours = summarize(row.bird or []), summarize(row.ours)
        lines.append(
            Line(
                label,
                row.unit,
                bird.median if bird else None,
                ours.median if ours else None,
                row.ratio(),
                row.target.text if row.target else "",
                _verdict(group),
            )
        )
    missing += [f"{n}-node mesh" for n in sorted(MESH_TARGETS) if n not in meshes]
    return lines, missing


def _verdict_text(met: bool | None) -> str:
    return {True: "yes", False: "NO", None: "n/a"}[met]


def _cells(line: Line) -> tuple[str, ...]:
    unit = " %" if line.unit.startswith("%") else f" {line.unit}"  # "% core" fits the target column only
    bird = "—" if line.bird is None else f"{fmt_value(line.bird)}{unit}"
    ours = "n/a" if line.ours is None else f"{fmt_value(line.ours)}{unit}"
    ratio = "—" if line.ratio is None else f"{line.ratio:.2f}×"
    return line.label, bird, ours, ratio, line.target, _verdict_text(line.met)


HEAD = ("headline metric", "BIRD 1.6", "calico-bgp", "ours/BIRD", "target", "met")


def render_text(rows: Sequence[Row]) -> str:
    """The regression guard: one line per headline metric, columns aligned, at most 15 lines."""
    lines, missing = headline(rows)
    table = [HEAD, *(_cells(line) for line in lines)]
    widths = [max(len(cells[i]) for cells in table) for i in range(len(HEAD))]
    out = ["  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip() for cells in table]
    verdicts = [line.met for line in lines]
    summary = f"{verdicts.count(True)} of {len(lines)} met, {verdicts.count(False)} missed"
    if undecided := verdicts.count(None):
        summary += f", {undecided} without a verdict"
    out.append(summary + (f"; not measured: {', '.join(missing)}" if missing else ""))
    return "\n".join(out)


def render_markdown(rows: Sequence[Row]) -> str:
    lines, missing = headline(rows)
    out = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    for line in lines:
        cells = list(_cells(line))
        cells[-1] = {"NO": "**no**"}.get(cells[-1], cells[-1])
        out.append("| " + " | ".join(cells) + " |")
    if missing:
        out.append(f"\nNot measured in this run: {', '.join(missing)}.")
    return "\n".join(out)
