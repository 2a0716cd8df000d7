#!/usr/bin/env python3
"""make test's unit-test stage, `make pytest` beside `make loader-test`, with the loader's tests in
one pytest process or shared by two, and torch on one thread or its default, in the same run,
alternated: wall, CPU and their ratios.

    make bench-unit-stage
    .venvs/controller/bin/python bench/unit_stage.py --reps 2

scripts/run-tests.sh runs the two suites side by side and the rehearsals only after both. make
pytest's two processes share its files (scripts/pytest-shared.sh). The loader's suite ran in one
process: it outlasted make pytest by about 100 s in a fresh clone, with a core idle, while the
rehearsals waited. The configurations, as loader-test's PYTEST_PROCESSES and LOADER_TEST_THREADS:
- one: the loader's suite in one pytest process, torch on its default threads, one a core (before);
- shared: two processes that share its files, as make pytest's do, torch on its default threads;
- shared-1-thread: two processes, torch on one thread (OMP_NUM_THREADS=1): make loader-test now.
  With four pytest processes on two cores, torch's threads wait for each other at every step.

Reported per configuration: the stage's wall seconds (until both suites end), each suite's own,
and the machine's busy CPU-seconds (/proc/stat, every process). Both suites must pass; a failure
stops the bench with the failing suite's tail. Python 3.11 standard library only.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# bench/ is sys.path[0] when this file runs as a script.
from molecule_exec import busy_ticks  # the machine's busy CPU ticks (/proc/stat)

ROOT = Path(__file__).resolve().parents[1]
# loader-test's PYTEST_PROCESSES and LOADER_TEST_THREADS (mk/loader.mk; empty: torch's default).
CONFIGURATIONS = {"one": ("1", ""), "shared": ("2", ""), "shared-1-thread": ("2", "1")}


def timed_stage(name: str, logs: Path) -> tuple[float, float, float, float]:
    """Both suites side by side as run-tests.sh runs them: (stage wall, pytest's, loader-test's, CPU-s)."""
    processes, threads = CONFIGURATIONS[name]
    loader = dict(os.environ, PYTEST_PROCESSES=processes, LOADER_TEST_THREADS=threads)
    envs = {"pytest": dict(os.environ), "loader-test": loader}
    ticks, start = busy_ticks(), time.monotonic()
    running: dict[str, subprocess.Popen] = {}
    for suite, env in envs.items():
        with (logs / f"{name}-{suite}.log").open("w") as log:  # the child keeps its own descriptor
            make = ["make", "--no-print-directory", suite]
            # A session of its own: a failure stops make's pytest processes with it.
            running[suite] = subprocess.Popen(
                make, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
    ended: dict[str, float] = {}
    while len(ended) < len(running):
        for suite, process in running.items():
            if suite in ended or process.poll() is None:
                continue
            ended[suite] = time.monotonic() - start
            if process.returncode != 0:
                for other in running.values():
                    if other.poll() is None:
                        os.killpg(other.pid, signal.SIGTERM)
                tail = (logs / f"{name}-{suite}.log").read_text()[-3000:]
                sys.exit(f"make {suite} failed ({name}):\n{tail}")
        time.sleep(0.5)
    cpu = (busy_ticks() - ticks) / os.sysconf("SC_CLK_TCK")
    return max(ended.values()), ended["pytest"], ended["loader-test"], cpu


def row(name: str, wall: float, pytest: float, loader: float, cpu: float) -> str:
    return f"{name:>15}: stage {wall:6.1f} s (pytest {pytest:6.1f} s, loader-test {loader:6.1f} s), {cpu:6.1f} CPU-s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=2, help="runs of each configuration, alternated")
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in CONFIGURATIONS}
    with tempfile.TemporaryDirectory() as folder:
        for rep in range(args.reps):
            # Alternated, the order turned each repetition: neither configuration always runs first.
            for name in list(CONFIGURATIONS)[:: 1 if rep % 2 == 0 else -1]:
                results[name].append(timed_stage(name, Path(folder)))
                print("  " + row(name, *results[name][-1]), flush=True)
    medians = {name: [statistics.median(run[i] for run in runs) for i in range(4)] for name, runs in results.items()}
    print("medians:")
    for name, values in medians.items():
        print(row(name, *values))
    now = medians["shared-1-thread"]
    for name in ("one", "shared"):
        wall, cpu = medians[name][0] / now[0], medians[name][3] / now[3]
        print(f"{name}/shared-1-thread: stage wall {wall:.2f}x, CPU {cpu:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
