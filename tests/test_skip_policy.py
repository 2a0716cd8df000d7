"""The skip policy (scripts/pytest_skip_policy.py) that make pytest and make loader-test load:
a real pytest run on a small suite that skips, with and without an allowed pattern."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"

SUITE = """
import pytest

def test_runs():
    assert True

def test_needs_a_tool():
    pytest.skip("frobnicate is not installed")
"""


def run_suite(tmp_path: Path, conftest: str = "") -> subprocess.CompletedProcess:
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_suite.py").write_text(SUITE)
    (tmp_path / "tests" / "conftest.py").write_text(conftest)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "pytest_skip_policy", "tests"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(SCRIPTS), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_skip_nobody_allowed_fails_the_run_naming_it(tmp_path):
    done = run_suite(tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 passed, 1 skipped" in done.stdout
    assert "skip policy: 1 skipped, 0 allowed" in done.stdout
    assert "NOT ALLOWED: tests/test_suite.py::test_needs_a_tool: frobnicate is not installed" in done.stdout


def test_an_allowed_skip_passes_and_is_still_counted(tmp_path):
    allow = (
        "import pytest_skip_policy\n"
        "pytest_skip_policy.ALLOWED_SKIPS['tests/test_suite.py::test_needs_*'] = "
        "('not installed', 'the tool is optional here')\n"
    )
    done = run_suite(tmp_path, allow)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "skip policy: 1 skipped, 1 allowed (scripts/pytest_skip_policy.py), 0 not allowed" in done.stdout


def test_an_allowed_pattern_with_another_reason_still_fails(tmp_path):
    allow = (
        "import pytest_skip_policy\n"
        "pytest_skip_policy.ALLOWED_SKIPS['tests/test_suite.py::*'] = ('has a GPU', 'GPU hosts only')\n"
    )
    done = run_suite(tmp_path, allow)
    assert done.returncode == 1 and "NOT ALLOWED" in done.stdout, done.stdout


def test_a_deselected_test_is_counted_apart_and_is_no_skip(tmp_path):
    """The gpu tests' way (files/hf_loader/pyproject.toml: -m 'not gpu'): deselected, not skipped."""
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_suite.py").write_text(
        "import pytest\n\ndef test_runs():\n    assert True\n\n"
        "@pytest.mark.gpu\ndef test_needs_cuda():\n    assert False\n"
    )
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    gpu: needs CUDA\n")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "pytest_skip_policy", "-m", "not gpu"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(SCRIPTS), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed, 1 deselected" in done.stdout
    assert "0 not allowed; 1 deselected (not run here)" in done.stdout
