"""``python -m bench profile``: py-spy on calico-bgp's processes while bulk propagation runs through them.

Stage: a diagnostic next to the benchmark. For each N it builds the calico-bgp pair (``bench.calico``),
attaches ``py-spy record --subprocesses`` to node A's and node B's daemons (so ExaBGP and the API bridge
are sampled too), writes N Felix-style routes on A and waits until B holds them, then does the same for
the deletion with fresh recorders, and summarises each recording (``bench.flame``): per process, the
functions with the most self and inclusive time.

Owns: the py-spy subprocesses (stopped with SIGINT, which makes py-spy write its file) and the outputs:
``bench/results/profile.md`` (summaries) and the raw collapsed stacks under ``.cache/bench/profiles``
(too big to commit; feed them to flamegraph.pl for a picture).

Complicating factors: sampling costs a few percent of a core per recorder (``--nonblocking`` keeps py-spy
from pausing the target), so figures taken while profiling are not benchmark figures; the wall times
printed here are only there to relate samples to seconds.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import felix, flame
from bench.calico import BENCH_POOL, CalicoPair
from bench.kernelwatch import RouteWatch

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
RAW_DIR = REPO / ".cache" / "bench" / "profiles"


def py_spy() -> str:
    found = Path(sys.executable).parent / "py-spy"
    if found.exists():
        return str(found)
    which = shutil.which("py-spy")
    if not which:
        raise SystemExit("py-spy is not installed: .venv/bin/pip install -e '.[test]'")
    return which


class Recorder:
    def __init__(self, pid: int, out: Path, rate: int) -> None:
        self.out = out
        self.proc = subprocess.Popen(
            [
                py_spy(),
                "record",
                "--nonblocking",
                "--subprocesses",
                "-r",
                str(rate),
                "-f",
                "raw",
                "-o",
                str(out),
                "-p",
                str(pid),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        if not self.out.exists():
            raise RuntimeError(f"py-spy wrote nothing: {err.strip()[-500:]}")
        return self.out.read_text()


def profile_phase(
    pair: CalicoPair, watch: RouteWatch, batch: Path, target: int, label: str, rate: int, timeout: float
) -> tuple[str, float | None]:
    RAW_DIR.mkdir(parents=True, exist_ok=True)
    recorders = {
        node: Recorder(pair.roots(i)[0], RAW_DIR / f"{label}-{node}.txt", rate)
        for i, node in enumerate(("A", "B"))
    }
    time.sleep(1.0)  # py-spy attaches
    start = time.perf_counter()
    felix.run_batch(pair.ns_a, batch)
    done = watch.wait_count(target, timeout)
    elapsed = None if done is None else done - start
    time.sleep(2.0)  # let the tail of the burst land in the samples
    parts = [
        f"### {label}: {f'{elapsed:.1f} s' if elapsed else 'timed out'} until B "
        f"{'held all' if target else 'held none'} (while sampled at {rate} Hz)\n"
    ]
    for node, recorder in recorders.items():
        profiles = flame.parse(recorder.stop())
        parts.append(f"**node {node}** (raw: `{recorder.out.relative_to(REPO)}`)\n")
        parts.append(flame.render(profiles, rate, top=12))
    return "\n".join(parts), elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench profile", description=__doc__.splitlines()[0])
    parser.add_argument("--routes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--rate", type=int, default=50, help="py-spy samples per second")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "profile.md")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 2
    sections = [
        "# calico-bgp under bulk propagation: where the CPU goes (py-spy)\n",
        "Produced by `python -m bench profile`. Seconds are samples / rate: CPU time of that function "
        "(self) or of everything it called (inclusive), per process. Idle time is not sampled.\n",
    ]
    for n in args.routes:
        addrs = felix.addresses(BENCH_POOL, n)
        with CalicoPair() as pair, tempfile.TemporaryDirectory() as tmp:
            felix.add_workload_device(pair.ns_a)
            add = felix.write_batch(Path(tmp) / "add", addrs, "add")
            delete = felix.write_batch(Path(tmp) / "del", addrs, "del")
            with RouteWatch(pair.ns_b, BENCH_POOL) as watch:
                timeout = 120 + n * 0.005
                for batch, target, phase in ((add, n, "add"), (delete, 0, "delete")):
                    log.info("profiling %s of %d routes", phase, n)
                    text, elapsed = profile_phase(
                        pair, watch, batch, target, f"{phase}-{n // 1000}k", args.rate, timeout
                    )
                    log.info("%s of %d routes: %s s", phase, n, elapsed)
                    sections.append(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(sections) + "\n")
    print(f"wrote {args.out}")
    return 0
