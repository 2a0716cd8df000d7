"""bench/train_bench.py runs the real training code: a CPU smoke run of two rows, and no GPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[3] / "bench" / "train_bench.py"
pytestmark = pytest.mark.skipif(not BENCH.exists(), reason="outside the project's checkout")


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=600
    )


def test_cpu_smoke_run_prints_every_row():
    p = _bench(
        *("--device", "cpu", "--images", "32", "--batch-size", "4", "--warmup", "1"),
        *("--batches", "1", "--workers", "1", "--levers", "channels_last", "normalize_on_device"),
    )
    assert p.returncode == 0, p.stderr[-3000:]
    rows = [line.split() for line in p.stdout.splitlines() if line.startswith(("real", "synth"))]
    names = [" ".join(r[:-2]) for r in rows]
    assert names == [
        "real data, every lever",
        "synthetic data on the device",
        "real data, channels_last off",
        "real data, normalize_on_device off",
    ]
    assert all(float(r[-2]) > 0 for r in rows) and rows[0][-1] == "1.00x"
    assert "goals:" not in p.stdout  # the GPU goals are not judged on a smoke run


def test_without_gpu_says_so():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    p = _bench()
    assert p.returncode == 0 and "no GPU" in p.stdout
