"""scripts/rehearsals.sh (`make molecule`, `make rehearsals`), run for real over stand-ins of
`molecule test` and of the labs' make targets that only record when they ran: every job runs
once, never more than the workers at a time, a worker takes the next job as soon as its own
ends (no lane waits on another's long job), the longest jobs start first, a failed job fails
the run and is named while the others go on, and a scenario the queue does not know is refused."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "rehearsals.sh"
ORDER = re.search(r'^ORDER="(.*)"', SCRIPT.read_text(), re.M)[1].split()
LABS = re.search(r'^LABS="(.*)"', SCRIPT.read_text(), re.M)[1].split()
SCENARIOS = [job for job in ORDER if job not in LABS]

RECORD = (
    'echo "start $JOB $(date +%s.%N)" >>"$RAN"; sleep "$(cat "seconds/$JOB")"; echo "end $JOB $(date +%s.%N)" >>"$RAN"'
)


def rehearse(tmp_path: Path, *args: str, seconds: dict[str, float] | None = None, failing=(), env=None, scenarios=None):
    (tmp_path / "scripts").mkdir(parents=True, exist_ok=True)
    shutil.copy(SCRIPT, tmp_path / "scripts" / "rehearsals.sh")
    for name in scenarios or SCENARIOS:
        (tmp_path / "molecule" / name).mkdir(parents=True, exist_ok=True)
        (tmp_path / "molecule" / name / "molecule.yml").write_text("---\n")
    (tmp_path / "seconds").mkdir(exist_ok=True)
    for job in ORDER:
        (tmp_path / "seconds" / job).write_text(str((seconds or {}).get(job, 0.2)))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fail = " ".join(failing)
    (bin_dir / "molecule").write_text(
        # molecule test -s NAME
        f'#!/bin/bash\nJOB=$3\n{RECORD}\n[[ " {fail} " != *" $JOB "* ]] || {{ echo "why $JOB failed"; exit 1; }}\n'
    )
    (bin_dir / "molecule").chmod(0o755)
    (tmp_path / "Makefile").write_text(
        "\n".join(
            f"{lab}:\n\t@JOB={lab}; {RECORD.replace('$', '$$')}\n"
            f"\t@{f'echo why {lab} failed; false' if lab in failing else 'true'}\n"
            for lab in LABS
        )
    )
    run_env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", RAN=str(tmp_path / "ran"), **(env or {}))
    done = subprocess.run(
        ["bash", "scripts/rehearsals.sh", *args], cwd=tmp_path, env=run_env, capture_output=True, text=True, timeout=120
    )
    return done, spans(tmp_path / "ran")


def spans(ran: Path) -> dict[str, tuple[float, float]]:
    times: dict[str, dict[str, float]] = {}
    for line in ran.read_text().splitlines() if ran.exists() else []:
        what, name, when = line.split()
        assert what not in times.setdefault(name, {}), f"{name} ran twice"
        times[name][what] = float(when)
    return {name: (t["start"], t["end"]) for name, t in times.items()}


def most_at_once(times: dict[str, tuple[float, float]]) -> int:
    return max(sum(1 for s, e in times.values() if s <= start < e) for start, _ in times.values())


def test_with_labs_every_job_runs_once_two_at_a_time_longest_first(tmp_path):
    done, times = rehearse(tmp_path, "--labs")
    assert done.returncode == 0, done.stdout + done.stderr
    assert set(times) == set(ORDER)
    assert most_at_once(times) == 2
    # The two workers take ORDER's first two; which of them records its start first is a race.
    assert {job for job, _ in sorted(times.items(), key=lambda item: item[1][0])[:2]} == set(ORDER[:2])
    assert re.search(r"\[rehearsals\] all jobs done in \d+s", done.stdout)
    for job in ORDER:
        assert f"[rehearsals] {job}: passed in" in done.stdout


def test_make_molecule_runs_the_scenarios_alone_two_at_a_time(tmp_path):
    done, times = rehearse(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert set(times) == set(SCENARIOS)
    assert most_at_once(times) == 2


def test_a_worker_takes_the_next_job_when_its_own_ends(tmp_path):
    # Fixed lanes (a,c / b,d) would end at 2.4 s: the long job's lane waits on it. From one queue
    # the worker whose first job was short runs c and d while the long job runs.
    a, b, c, d = SCENARIOS[:4]
    seconds = {a: 2.0, b: 0.2, c: 0.2, d: 0.2}
    done, times = rehearse(tmp_path, seconds=seconds, env={"REHEARSALS": f"{a} {b} {c} {d}"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert times[c][0] < times[a][1] and times[d][0] < times[a][1], times


def test_a_failed_job_fails_the_run_is_named_and_the_others_go_on(tmp_path):
    failing = (SCENARIOS[0], LABS[0])
    done, times = rehearse(tmp_path, "--labs", failing=failing)
    assert done.returncode == 1
    assert set(times) == set(ORDER)
    progress = done.stdout.split("[rehearsals] all jobs done")[0]
    for job in failing:
        # Its last lines right away, under the line that names it: a run stopped by CI's time limit has no end.
        assert re.search(rf"^\[rehearsals\] {job}: FAILED after .*\n    {job}\| why {job} failed$", progress, re.M)
        assert f"===== {job} failed: the last lines of" in done.stdout
    assert f"[rehearsals] {SCENARIOS[1]}: passed in" in done.stdout


def test_a_failed_jobs_last_lines_stay_under_its_name_when_every_job_fails_at_once(tmp_path):
    # Bash writes its stdout a line at a time, and the other workers' lines landed between a failed
    # job's name and its last lines: measured without the workers' lock, in about one run in ten
    # of nine workers failing together, so the test tries 30 times (about 7 s); it failed 4 runs in 5 then.
    for attempt in range(30):
        done, _ = rehearse(
            tmp_path / str(attempt),
            "--labs",
            failing=ORDER,
            seconds=dict.fromkeys(ORDER, 0),
            env={"REHEARSAL_WORKERS": "9"},
        )
        assert done.returncode == 1
        for job in ORDER:
            assert re.search(
                rf"^\[rehearsals\] {job}: FAILED after .*\n    {job}\| why {job} failed$", done.stdout, re.M
            ), f"attempt {attempt}:\n{done.stdout}"


@pytest.mark.parametrize(
    ("scenarios", "env", "message"),
    [
        ([*SCENARIOS, "new_role"], {}, "ORDER in"),
        (SCENARIOS, {"REHEARSALS": "defualt"}, "REHEARSALS names 'defualt'"),
    ],
    ids=["a scenario missing from ORDER", "a misspelt job"],
)
def test_an_unknown_job_or_scenario_is_refused_before_anything_runs(tmp_path, scenarios, env, message):
    done, times = rehearse(tmp_path, scenarios=scenarios, env=env)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert times == {}
