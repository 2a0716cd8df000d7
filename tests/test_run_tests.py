"""scripts/run-tests.sh (`make test`), run for real over a Makefile whose stages only sleep, say
when they ran and exit as told: lanes joined by + run side by side, the stages of a lane (joined
by >) one after another, every stage gets its line in the summary with its own status, a failure
anywhere fails the run, a failed stage leaves the rest of its lane not run, and a failed venv or
test-deps stops the run before the stages that would each build the venvs at once."""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "run-tests.sh"
STAGES = re.search(r"declare -a STAGES=\((.*)\)", SCRIPT.read_text())[1].replace('"', "").split()
SLEEP = 1


def run_tests(tmp_path: Path, failing: set[str] = frozenset()) -> tuple[subprocess.CompletedProcess, Path]:
    (tmp_path / "scripts").mkdir()
    shutil.copy(SCRIPT, tmp_path / "scripts" / "run-tests.sh")
    names = [stage for group in STAGES for stage in re.split(r"[+>]", group)]
    recipes = [
        f"{name}:\n\t@echo start {name} $$(date +%s.%N) >> ran\n\t@sleep {SLEEP}\n\t@echo output of {name}\n"
        f"\t@echo end {name} $$(date +%s.%N) >> ran\n\t@{'false' if name in failing else 'true'}\n"
        for name in names
    ]
    (tmp_path / "Makefile").write_text("\n".join(recipes))
    done = subprocess.run(
        ["bash", "scripts/run-tests.sh"], cwd=tmp_path, capture_output=True, text=True, check=False, timeout=120
    )
    return done, tmp_path / "ran"


def spans(ran: Path) -> dict[str, tuple[float, float]]:
    times: dict[str, dict[str, float]] = {}
    for line in ran.read_text().splitlines():
        what, name, when = line.split()
        times.setdefault(name, {})[what] = float(when)
    return {name: (t["start"], t["end"]) for name, t in times.items()}


def summary(output: str) -> dict[str, str]:
    tail = output.split("===== summary =====", 1)[1]
    return {m[1]: m[2] for m in re.finditer(r"^(\S+)\s+(ok|FAILED)\s", tail, re.M)}


def stages_of(group: str) -> list[str]:
    return re.split(r"[+>]", group)


def test_lanes_joined_by_plus_run_side_by_side_their_stages_in_order_and_groups_one_after_another(tmp_path):
    done, ran = run_tests(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert any("+" in group for group in STAGES), "make test runs no stages side by side any more"
    assert any(">" in group for group in STAGES), "make test has no lane of stages in order any more"
    times = spans(ran)
    for before, after in itertools.pairwise(STAGES):
        last_end = max(times[s][1] for s in stages_of(before))
        assert all(times[s][0] >= last_end for s in stages_of(after)), (before, after, times)
    for group in (g.split("+") for g in STAGES if "+" in g):
        # Each lane's first stage starts before every other lane's first stage has ended.
        first_stages = [lane.split(">")[0] for lane in group]
        latest_start = max(times[s][0] for s in first_stages)
        assert all(times[s][1] > latest_start for s in first_stages), f"{group} did not overlap: {times}"
        for lane in group:
            for earlier, later in itertools.pairwise(lane.split(">")):
                assert times[later][0] >= times[earlier][1], f"{later} started before {earlier} ended: {times}"
    assert set(summary(done.stdout).values()) == {"ok"}
    assert list(summary(done.stdout)) == [s for g in STAGES for s in stages_of(g)]
    # A side-by-side stage's output is printed whole after its group.
    assert "output of loader-test" in done.stdout
    assert (tmp_path / ".cache" / "test-logs" / "loader-test.log").read_text().strip().endswith("output of loader-test")


def test_a_failed_stage_side_by_side_is_named_and_fails_the_run_and_the_others_go_on(tmp_path):
    done, ran = run_tests(tmp_path, failing={"loader-test"})
    assert done.returncode != 0
    result = summary(done.stdout)
    assert result["loader-test"] == "FAILED" and result["pytest"] == "ok" and result["rehearsals"] == "ok"
    assert "1 stage(s) failed" in done.stdout
    assert "===== why loader-test failed" in done.stdout
    assert "rehearsals" in spans(ran)


def test_a_failed_test_deps_stops_before_the_stages_that_need_it(tmp_path):
    done, ran = run_tests(tmp_path, failing={"test-deps"})
    assert done.returncode != 0
    assert summary(done.stdout) == {
        "engine": "ok",
        "venv": "ok",
        "lint": "ok",
        "loader-venv": "ok",
        "test-deps": "FAILED",
    }
    assert "pytest" not in spans(ran) and "rehearsals" not in spans(ran)


def test_a_failed_venv_leaves_lint_not_run_lets_the_other_lane_finish_and_stops_the_run(tmp_path):
    done, ran = run_tests(tmp_path, failing={"venv"})
    assert done.returncode != 0
    assert summary(done.stdout) == {"engine": "ok", "venv": "FAILED", "lint": "FAILED", "loader-venv": "ok"}
    assert re.search(r"^lint\s+FAILED\s+-\s+not run: a stage before it in its lane failed", done.stdout, re.M)
    assert "lint" not in spans(ran) and "loader-venv" in spans(ran)
    assert "test-deps" not in spans(ran) and "rehearsals" not in spans(ran)
    assert "===== why venv failed" in done.stdout and "===== why lint failed" not in done.stdout
