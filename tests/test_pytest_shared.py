"""scripts/pytest-shared.sh and its plugin scripts/pytest_file_claims.py (`make pytest`), run for
real over a small suite whose tests record which process ran them: every test runs once, each
file in one process with its module fixture set up once, the processes share the files, a
failure anywhere fails the run, and a bad process count is refused before any test runs."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "pytest-shared.sh"
FILES = 6
TESTS_A_FILE = 3

SUITE_FILE = """
import os, time
import pytest

LOG = {log!r}


def record(what):
    with open(LOG, "a") as log:
        log.write(f"{{os.getpid()}} {{what}}\\n")


@pytest.fixture(scope="module")
def module_fixture():
    record("setup {name}")
    yield


@pytest.mark.parametrize("n", range({tests}))
def test_one(module_fixture, n):
    time.sleep(0.3)
    record(f"test {name} {{n}}")
    assert not ({name!r} == {failing!r} and n == 1), "this test fails on purpose"
"""


def run_suite(tmp_path: Path, failing: str = "", **env: str) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    suite, log = tmp_path / "suite", tmp_path / "ran.log"
    suite.mkdir()
    for index in range(FILES):
        name = f"test_file_{index}"
        text = SUITE_FILE.format(log=str(log), name=name, tests=TESTS_A_FILE, failing=failing)
        (suite / f"{name}.py").write_text(text)
    done = subprocess.run(
        ["bash", str(SCRIPT), sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(suite)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT / "scripts"), **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    lines = [line.split() for line in log.read_text().splitlines()] if log.exists() else []
    return done, lines


def test_every_test_runs_once_each_file_in_one_process_and_the_processes_share_the_files(tmp_path):
    done, lines = run_suite(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    tests = collections.Counter((line[2], line[3]) for line in lines if line[1] == "test")
    assert tests == {(f"test_file_{f}", str(n)): 1 for f in range(FILES) for n in range(TESTS_A_FILE)}
    setups = collections.Counter(line[2] for line in lines if line[1] == "setup")
    assert setups == {f"test_file_{f}": 1 for f in range(FILES)}
    processes_of_file = collections.defaultdict(set)
    for pid, _, name, *_ in lines:
        processes_of_file[name].add(pid)
    assert all(len(pids) == 1 for pids in processes_of_file.values()), processes_of_file
    assert len({pid for pid, *_ in lines}) == 2, "one process ran every file"
    assert done.stdout.count("----- pytest process") == 2


def test_a_failing_test_fails_the_run_and_every_other_test_still_runs(tmp_path):
    done, lines = run_suite(tmp_path, failing="test_file_3")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "this test fails on purpose" in done.stdout
    assert sum(1 for line in lines if line[1] == "test") == FILES * TESTS_A_FILE


def test_a_process_count_that_is_not_a_number_is_refused_before_any_test(tmp_path):
    done, lines = run_suite(tmp_path, PYTEST_PROCESSES="two")
    assert done.returncode == 2
    assert "PYTEST_PROCESSES must be a whole number of at least 1, not 'two'" in done.stderr
    assert lines == []
