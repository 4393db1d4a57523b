"""Charts of a benchmark run: calico-bgp next to BIRD 1.6 per workload, with the spread of the repeats.

Stage: the end of a benchmark run, after ``bench.report.save`` (``make bench``), or on its own on any saved
run: ``python -m bench.plots [--results bench/results]`` reads ``latest.json`` and writes PNGs next to it.

Owns: which rows are drawn (those with samples from both daemons), their grouping (one panel per workload
section and unit) and the files ``bench-*.png``; ``bench-overview.png`` has every panel and is the one the
README shows.

Complicating factors:
- Figures span orders of magnitude within a panel (1k and 100k routes; 2 MiB and 230 MiB): such panels
  use a log axis, which cannot show zero (an idle CPU of 0 %), so panels with a zero stay linear.
- The spread is drawn from the raw samples kept in the JSON: the bar is the median, the whisker min to
  max, and every repeat is a dot (a single sample, e.g. one p95 per run, has no whisker).
- matplotlib is imported only when drawing, with the Agg backend (no display on a benchmark machine), so
  the benchmark itself does not depend on it.
"""

from __future__ import annotations

import argparse
import json
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SECTIONS = {
    "a": "bulk propagation A→B",
    "b": "single-route latency A→B",
    "c": "B's kernel fill rate",
    "d": "resources per node",
}
LOG_ABOVE = 20.0  # a panel whose largest bar is this many times its smallest gets a log axis
COLOURS = {"bird": "#7f7f7f", "ours": "#1f77b4"}
NAMES = {"bird": "BIRD 1.6", "ours": "calico-bgp"}


@dataclass(frozen=True)
class Bar:
    label: str
    samples: dict[str, list[float]]  # "bird" / "ours" -> the repeats


@dataclass(frozen=True)
class Panel:
    section: str
    unit: str
    bars: tuple[Bar, ...]

    @property
    def title(self) -> str:
        better = "higher" if self.unit.endswith("/s") else "lower"
        return f"({self.section}) {SECTIONS.get(self.section, '')} [{self.unit}], {better} is better"

    @property
    def slug(self) -> str:
        return f"{self.section}-" + re.sub(r"[^a-z0-9]+", "-", self.unit.lower()).strip("-")

    @property
    def log_scale(self) -> bool:
        values = [v for bar in self.bars for s in bar.samples.values() for v in s]
        return bool(values) and min(values) > 0 and max(values) / min(values) >= LOG_ABOVE


def _label(row: dict) -> str:
    """A short name for the row: the metric without its parentheses and the workload's common words."""
    text = re.sub(r"\s*\([^)]*\)", "", row["metric"])
    text = re.sub(r"^(single route A→B, |B's kernel fill rate during |RSS, |idle CPU, )", "", text)
    text = re.sub(r":? A's ip -batch start → .*|: ip -batch start → .*|, holding | /32s", " ", text)
    text = re.sub(r"^bulk |^node | routes$", "", re.sub(r"(, idle)?, no routes", ", idle", text.strip()))
    return textwrap.fill(" ".join(text.replace(":", "").split()), 14)


def _samples(side: dict | None) -> list[float]:
    if not side:
        return []
    samples = side.get("samples") or ([side["median"]] if side.get("median") is not None else [])
    return [float(v) for v in samples]


def panels(data: dict) -> list[Panel]:
    """The rows with figures from both daemons, one panel per (section, unit), in the table's order."""
    grouped: dict[tuple[str, str], list[Bar]] = {}
    for row in data.get("rows", []):
        bird, ours = _samples(row.get("bird")), _samples(row.get("ours"))
        if not bird or not ours:
            continue
        grouped.setdefault((row["section"], row["unit"]), []).append(
            Bar(_label(row), {"bird": bird, "ours": ours})
        )
    return [Panel(section, unit, tuple(bars)) for (section, unit), bars in grouped.items()]


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _draw(ax, panel: Panel) -> None:
    width = 0.38
    for offset, side in ((-width / 2, "bird"), (width / 2, "ours")):
        xs = [i + offset for i in range(len(panel.bars))]
        medians = [_median(bar.samples[side]) for bar in panel.bars]
        low = [m - min(bar.samples[side]) for m, bar in zip(medians, panel.bars, strict=True)]
        high = [max(bar.samples[side]) - m for m, bar in zip(medians, panel.bars, strict=True)]
        ax.bar(xs, medians, width, color=COLOURS[side], label=NAMES[side], yerr=[low, high], capsize=3,
               error_kw={"elinewidth": 1, "ecolor": "black"})  # fmt: skip
        for x, bar in zip(xs, panel.bars, strict=True):
            dots = bar.samples[side]
            spread = [x + width * 0.3 * ((i / max(len(dots) - 1, 1)) - 0.5) for i in range(len(dots))]
            ax.scatter(spread, dots, s=6, color="black", zorder=3, linewidths=0)
    ax.set_xticks(range(len(panel.bars)), [bar.label for bar in panel.bars], fontsize=7)
    ax.set_title(panel.title, fontsize=9)
    ax.set_ylabel(panel.unit, fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    if panel.log_scale:
        ax.set_yscale("log")
    ax.grid(axis="y", alpha=0.3)


def write(results: Path = RESULTS) -> list[Path]:
    """Draw ``results/latest.json`` into ``results/bench-*.png``; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    data = json.loads((results / "latest.json").read_text())
    found = panels(data)
    if not found:
        return []
    machine = data.get("machine", {})
    caption = (
        f"median, min–max over the repeats, each repeat a dot; {machine.get('date', '')}, "
        f"{machine.get('cores', '?')} cores {machine.get('cpu', '')}, commit {machine.get('git_commit', '?')}"
    )
    written = []
    for panel in found:
        fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(panel.bars) + 1.5), 3.6))
        _draw(ax, panel)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = results / f"bench-{panel.slug}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    columns = 2
    rows = -(-len(found) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(12, 3.6 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, found, strict=False):
        _draw(ax, panel)
    for ax in list(axes.flat)[len(found) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("calico-bgp vs BIRD 1.6 (make bench)", fontsize=11)
    fig.text(0.5, 0.005, caption, ha="center", fontsize=7)
    fig.tight_layout(rect=(0, 0.02, 1, 0.98))
    path = results / "bench-overview.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path, *written]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.plots", description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="the directory with latest.json")
    args = parser.parse_args(argv)
    for path in write(args.results):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
