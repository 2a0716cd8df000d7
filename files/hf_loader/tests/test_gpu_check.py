"""hf_loader.gpu_check, the CUDA workload of the health gate before service.

The decisions run on CPU tensors: a product with one wrong element, a NaN, TF32-like rounding,
GPUs missing from CUDA's view, a GPU that failed among good ones. The command itself runs for
real on this machine, where CUDA sees no GPU: it must fail with exit 3 and say why, never skip
or pass. The test marked gpu runs the workload on every GPU of a GPU host (deselected here;
scripts/gpu-host-check.sh runs it with -m gpu) and feeds a GPU's product a wrong reference,
which must fail that GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from hf_loader import gpu_check
from hf_loader.cli.exitcodes import ExitCode

TOLERANCE = gpu_check.DEFAULT_TOLERANCE


def product(size: int = 256, seed: int = 7):
    return gpu_check.make_inputs(torch, size, seed)


def gpu(index: int, passed: bool = True, problem: str = "") -> dict:
    return {
        "index": index,
        "name": "NVIDIA H200",
        "uuid": f"GPU-0000000{index}-aaaa-bbbb-cccc-dddddddddddd",
        "bus_id": f"00000000:{0x18 + index:02X}:00.0",
        "passed": passed,
        "problem": problem,
        "fix": "" if passed else gpu_check.FIX_WRONG_RESULT,
    }


# ------------------------------------------------------------------ compare


def test_a_float32_product_is_within_the_default_tolerance_of_the_float64_reference():
    a, b, reference = product(512)
    found = gpu_check.compare(a @ b, reference, TOLERANCE)
    assert found["passed"], found
    assert 0 < found["relative_error"] < TOLERANCE / 10  # float32 rounding, far below the tolerance


def test_one_wrong_element_fails_and_is_located():
    a, b, reference = product()
    wrong = (a @ b).clone()
    wrong[17, 42] += 0.01 * reference.abs().max().item()  # a flipped bit's worth in one element
    found = gpu_check.compare(wrong, reference, TOLERANCE)
    assert not found["passed"]
    assert found["worst"] == [17, 42]
    assert found["relative_error"] == pytest.approx(0.01, rel=1e-3)
    assert "above the tolerance" in found["detail"]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_nan_or_infinity_fails_whatever_the_tolerance(bad):
    a, b, reference = product(64)
    wrong = (a @ b).clone()
    wrong[3, 5] = bad
    found = gpu_check.compare(wrong, reference, 0.99)
    assert not found["passed"]
    assert found["nonfinite"] == 1 and "NaN or infinite" in found["detail"]
    assert found["worst"] == [3, 5]


def test_tf32_rounding_would_fail_the_default_tolerance():
    """Why the run switches TF32 off: inputs rounded to TF32's 10-bit mantissa move the product
    by about 1e-3, which the check must see as wrong."""
    a, b, reference = product(512)
    as_tf32 = [(m.view(torch.int32) & ~0x1FFF).view(torch.float32) for m in (a, b)]
    found = gpu_check.compare(as_tf32[0] @ as_tf32[1], reference, TOLERANCE)
    assert not found["passed"] and found["relative_error"] > TOLERANCE


def test_a_product_of_the_wrong_shape_fails():
    a, b, reference = product(32)
    found = gpu_check.compare((a @ b)[:16], reference, TOLERANCE)
    assert not found["passed"] and "shape" in found["detail"]


def test_the_workload_on_the_cpu_device_passes():
    a, b, reference = product(128)
    measured = gpu_check.check_gpu(torch, torch.device("cpu"), a, b, reference, TOLERANCE, 1)
    assert measured["passed"] and measured["pattern_errors"] == 0


def test_a_measured_record_has_exactly_the_documented_fields():
    """The lab's stand-in prints records with GPU_RECORD_FIELDS (tests/test_gpu_sim.py)."""
    a, b, reference = product(32)
    record = gpu_check.new_record(0)
    record.update(gpu_check.check_gpu(torch, torch.device("cpu"), a, b, reference, TOLERANCE, 1))
    assert tuple(record) == gpu_check.GPU_RECORD_FIELDS
    assert None not in record.values()


def test_the_workload_fails_a_device_whose_product_is_not_the_reference():
    """The same path as a GPU whose matmul differs: the reference moved by one element."""
    a, b, reference = product(128)
    moved = reference.clone()
    moved[0, 0] += 1.0
    with pytest.raises(gpu_check.GpuFailedError, match="matmul differs from the CPU's") as raised:
        gpu_check.check_gpu(torch, torch.device("cpu"), a, b, moved, TOLERANCE, 1)
    assert raised.value.exit_code == ExitCode.GPU_FAILED
    assert "dcgmi diag -r 3" in raised.value.remedy
    assert raised.value.measured["worst"] == [0, 0]


# ------------------------------------------------------------------ decide and report


def test_every_gpu_passed_is_exit_0():
    assert gpu_check.decide([gpu(0), gpu(1)], visible=2, expected=2) == (0, [])


def test_a_failed_gpu_is_named_with_its_uuid_and_bus_id_and_the_fix():
    code, problems = gpu_check.decide(
        [gpu(0), gpu(1, passed=False, problem="matmul differs")], visible=2, expected=2
    )
    assert code == ExitCode.GPU_FAILED
    (problem,) = problems
    assert problem["gpu"] == 1 and problem["bus_id"] == "00000000:19:00.0"
    assert problem["what"].startswith("GPU 1 (NVIDIA H200, GPU-00000001-")
    assert "matmul differs" in problem["what"] and "dcgmi diag" in problem["fix"]


def test_fewer_gpus_than_the_host_has_is_exit_4_and_a_failed_gpu_is_listed_too():
    code, problems = gpu_check.decide([gpu(0, passed=False, problem="x")], visible=1, expected=2)
    assert code == ExitCode.MISSING_GPUS
    assert "CUDA sees 1 GPU(s), the host has 2" in problems[0]["what"]
    assert problems[0]["gpu"] is None and "RmInitAdapter" in problems[0]["fix"]
    assert problems[1]["gpu"] == 0


def test_no_gpu_visible_never_passes_even_when_none_is_expected():
    code, problems = gpu_check.decide([], visible=0, expected=0)
    assert code == ExitCode.NO_CUDA and problems[0]["what"] == "CUDA sees no GPU"


def test_the_report_carries_the_verdict_and_the_settings():
    settings = {"size": 64, "tolerance": 1e-4, "alloc_mib": 1, "expect_gpus": 2, "seed": 1}
    doc = gpu_check.report(gpus=[gpu(0), gpu(1)], visible=2, expected=2, settings=settings)
    assert doc["passed"] and doc["exit_code"] == 0 and doc["problems"] == []
    assert doc["check"] == "cuda" and doc["version"] == gpu_check.REPORT_VERSION
    assert doc["message"] == "2 GPU(s) passed: allocate, matmul 64x64, compare with the CPU"
    failed = gpu_check.report(
        gpus=[gpu(0), gpu(1, passed=False, problem="CUDA error: an illegal memory access")],
        visible=2,
        expected=2,
        settings=settings,
    )
    assert not failed["passed"] and failed["exit_code"] == 5
    assert "GPU 1" in failed["message"] and "illegal memory access" in failed["message"]


# ------------------------------------------------------------------ the command, here


def run_module(*args: str) -> tuple[int, dict, str]:
    # No GPU for CUDA, also where this runs on a GPU host: the no-CUDA path for real.
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, "-m", "hf_loader.gpu_check", *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=300,
    )
    return done.returncode, json.loads(done.stdout), done.stderr


def test_without_cuda_the_command_fails_with_exit_3_saying_why_and_the_fix():
    code, doc, stderr = run_module("--expect-gpus", "8", "--size", "64")
    assert code == 3 and doc["exit_code"] == 3 and doc["passed"] is False
    assert doc["gpus"] == [] and doc["expected_gpus"] == 8
    assert "CUDA is not available to torch" in doc["message"]
    assert "nvidia-smi" in doc["problems"][0]["fix"]
    assert "FAILED (exit 3)" in stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--size", "0"],
        ["--tolerance", "2"],
        ["--tolerance", "x"],
        ["--expect-gpus", "-1"],
        ["--bogus"],
    ],
)
def test_bad_options_are_a_usage_error_in_the_same_json(args):
    code, doc, _ = run_module(*args)
    assert code == 2 and doc["exit_code"] == 2 and not doc["passed"]
    assert doc["problems"][0]["fix"].startswith("see: python -m hf_loader.gpu_check --help")


# ------------------------------------------------------------------ on a GPU host


@pytest.mark.gpu
def test_on_cuda_every_gpu_passes_and_a_wrong_reference_fails_the_gpu():
    if not torch.cuda.is_available():
        pytest.fail(
            f"CUDA is not available to torch {torch.__version__} (built for CUDA"
            f" {torch.version.cuda}): this test needs a GPU host (scripts/gpu-host-check.sh,"
            " step pytest); the CPU run deselects it",
            pytrace=False,
        )
    count = torch.cuda.device_count()
    done = subprocess.run(
        [sys.executable, "-m", "hf_loader.gpu_check", "--expect-gpus", str(count)],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    doc = json.loads(done.stdout)
    assert done.returncode == 0 and doc["passed"], done.stdout + done.stderr
    assert [entry["index"] for entry in doc["gpus"]] == list(range(count))
    for entry in doc["gpus"]:
        assert entry["relative_error"] < TOLERANCE / 10, entry
        assert entry["uuid"].startswith("GPU-") and entry["pattern_errors"] == 0
    # The same workload on GPU 0 against a reference moved by one element: that GPU fails.
    a, b, reference = gpu_check.make_inputs(torch, 512, 3)
    moved = reference.clone()
    moved[5, 9] += 1.0
    torch.backends.cuda.matmul.allow_tf32 = False
    with pytest.raises(gpu_check.GpuFailedError, match="matmul differs") as raised:
        gpu_check.check_gpu(torch, torch.device("cuda", 0), a, b, moved, TOLERANCE, 16)
    assert raised.value.measured["worst"] == [5, 9]
