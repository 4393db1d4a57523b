"""The fault campaign's result rows: one per fault test, written as RESULTS.md and results.json.

Stage: test support for tests/fault, pure (no pytest, no lab). ``conftest`` hands each fault test a
``RowBuilder``; the test fills in what it measured as it goes, the pytest hook records the outcome, and at
the end of the session ``write`` merges the rows of the tests that ran into the files.

Owns: the row model (``FaultRow``), merging a run's rows into earlier ones, and rendering both files.

Complicating factors:
- A test that fails still owes its figures: values are recorded as soon as they are measured, before the
  assertions that judge them, so a failing row says how far off it was ("not detected within 30 s").
- Runs are partial (one test, a ``-k`` selection, the quick subset): rows of faults that did not run are
  kept from the earlier file unless the run asks for a fresh file, and every row carries its own commit,
  date and counts, so a table mixing runs never hides which run produced which figure.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

Value = int | float | str | bool

RESULT_WORDS = {"passed": "pass", "failed": "FAIL", "error": "ERROR"}


@dataclass(frozen=True)
class FaultRow:
    fault: str  # unique and stable: the key rows are merged by
    injected: str  # what was done to which component
    times: int  # how many times it was done
    must_hold: str  # the claim the run checks
    measured: Mapping[str, Value]  # name (with its unit: _s, _mib, _pct) -> value
    outcome: str  # "passed" | "failed" | "error"
    failure: str  # the first line of the failure, "" when passed
    test: str  # pytest node id
    commit: str
    date: str  # UTC, ISO 8601
    duration_s: float

    @classmethod
    def from_json(cls, raw: Mapping) -> FaultRow:
        return cls(**{**raw, "measured": dict(raw.get("measured", {}))})


@dataclass
class RowBuilder:
    """What a test fills in while it runs; ``conftest`` makes it a ``FaultRow`` once the outcome is known."""

    fault: str
    injected: str
    times: int
    must_hold: str
    measured: dict[str, Value] = field(default_factory=dict)

    def measure(self, **values: Value) -> None:
        for name, value in values.items():
            self.measured[name] = round(value, 3) if isinstance(value, float) else value

    def worst(self, name: str, value: float) -> None:
        """Keep the largest value seen for name (a per-repetition figure reported as its maximum)."""
        current = self.measured.get(name)
        if current is None or (isinstance(current, int | float) and value > current):
            self.measure(**{name: value})

    def row(
        self, outcome: str, failure: str, *, test: str, commit: str, date: str, duration_s: float
    ) -> FaultRow:
        return FaultRow(
            fault=self.fault,
            injected=self.injected,
            times=self.times,
            must_hold=self.must_hold,
            measured=dict(self.measured),
            outcome=outcome,
            failure=first_line(failure),
            test=test,
            commit=commit,
            date=date,
            duration_s=round(duration_s, 1),
        )


def first_line(text: str, limit: int = 240) -> str:
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def merge(earlier: Iterable[FaultRow], now: Iterable[FaultRow], fresh: bool = False) -> list[FaultRow]:
    """This run's rows replace earlier rows of the same fault; other earlier rows stay unless ``fresh``.
    Order: the earlier file's order, then new faults in the order they ran."""
    latest = {row.fault: row for row in now}
    merged = [] if fresh else [latest.pop(row.fault, row) for row in earlier]
    return merged + list(latest.values())


def load(path: Path) -> list[FaultRow]:
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    return [FaultRow.from_json(row) for row in raw.get("rows", [])]


def render_json(rows: list[FaultRow], counts: Mapping[str, Value]) -> str:
    return json.dumps({"counts": dict(counts), "rows": [asdict(r) for r in rows]}, indent=2) + "\n"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _measured(values: Mapping[str, Value]) -> str:
    return ", ".join(f"{name} {value}" for name, value in values.items()) or "-"


def render_markdown(rows: list[FaultRow], counts: Mapping[str, Value]) -> str:
    commits = sorted({r.commit for r in rows})
    lines = [
        "# Fault campaign results",
        "",
        "Written by `make fault` (tests/fault). One row per fault: what was injected, how many times, what",
        "had to hold, what was measured, and the outcome. Units are in the names (`_s` seconds, `_mib` MiB,",
        "`_pct` percent of one core or of the value before).",
        "",
        f"- counts of this run: {', '.join(f'{k}={v}' for k, v in counts.items()) or 'defaults'}",
        f"- commit{'s' if len(commits) > 1 else ''}: {', '.join(commits) or '-'}"
        + (" (rows come from different runs: see each row)" if len(commits) > 1 else ""),
        f"- rows: {len(rows)}, passed {sum(r.outcome == 'passed' for r in rows)}, "
        f"failed {sum(r.outcome != 'passed' for r in rows)}",
        "",
        "| fault | injected | times | must hold | measured | result | commit, date |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        result = RESULT_WORDS.get(r.outcome, r.outcome) + (f": {r.failure}" if r.failure else "")
        lines.append(
            "| "
            + " | ".join(
                _cell(c)
                for c in (r.fault, r.injected, r.times, r.must_hold, _measured(r.measured), result,
                          f"{r.commit} {r.date} ({r.duration_s:.0f} s)")
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def write(
    directory: Path, rows: list[FaultRow], counts: Mapping[str, Value], fresh: bool = False
) -> list[FaultRow]:
    """Merge rows into directory/results.json and rewrite RESULTS.md from the merged set; returns it."""
    directory.mkdir(parents=True, exist_ok=True)
    merged = merge(load(directory / "results.json"), rows, fresh)
    files = {"results.json": render_json(merged, counts), "RESULTS.md": render_markdown(merged, counts)}
    for name, text in files.items():
        tmp = directory / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(directory / name)
    return merged
