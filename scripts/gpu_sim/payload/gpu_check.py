#!/usr/bin/python3
"""Lab stand-in for `python -m hf_loader.gpu_check`: /usr/lib/gpu-sim/gpu-check of the simulated
libcuda1 package (scripts/gpu_sim/build.py sets LIBRARY_VERSION to the package's version).

The lab's hosts have no CUDA and usually no torch, so the health gate's CUDA command points here
(inventory/lab/group_vars/gpu_hosts.yml, hf_loader_health_gate_cuda_command). It takes the real
module's options and prints the real module's JSON shape and exit codes
(files/hf_loader/src/hf_loader/gpu_check.py; tests/test_gpu_sim.py holds the two together), from
what the lab's boot script wrote for this boot:

- no driver loaded (/proc/driver/nvidia/version missing): exit 3, as CUDA without a driver;
- the loaded driver is not this library's version (installed, not rebooted yet): exit 3, as
  cuInit's CUDA_ERROR_SYSTEM_DRIVER_MISMATCH;
- the GPUs that initialised (/run/gpu-sim/gpus): fewer than --expect-gpus is exit 4;
- fault injection: the indexes in /etc/gpu-sim/gpu-check-fail (blank-separated, or `all`) get a
  product with one element moved by 1% of the largest: their comparison fails, exit 5.

The "GPU" work is a small real matmul in Python (at most 24x24) compared with a float sum of the
same products in another order, by the real module's rule (largest error over the largest
reference element, NaN fails). LAB_GPU_SIM_ROOT (default /) prefixes every path read, for tests.
Python 3 standard library only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import sys
import time
from pathlib import Path

LIBRARY_VERSION = ""  # set by scripts/gpu_sim/build.py for each package version
ROOT = Path(os.environ.get("LAB_GPU_SIM_ROOT", "/"))
PROC_VERSION = ROOT / "proc/driver/nvidia/version"
GPUS = ROOT / "run/gpu-sim/gpus"
FAIL_FILE = ROOT / "etc/gpu-sim/gpu-check-fail"

REPORT_VERSION = 1
# Exit codes: hf_loader.gpu_check's ExitCode.PASSED, USAGE, ... (tests/test_gpu_sim.py compares them);
# 1 (internal) is never given by the stand-in.
EXIT_PASSED, EXIT_USAGE, EXIT_NO_CUDA, EXIT_MISSING_GPUS, EXIT_GPU_FAILED = 0, 2, 3, 4, 5
SIM_SIZE = 24  # the stand-in's matrices: a real product, small enough for a container
# The real module's fields and fixes (tests/test_gpu_sim.py compares them with hf_loader.gpu_check).
GPU_RECORD_FIELDS = (
    "index",
    "name",
    "uuid",
    "bus_id",
    "passed",
    "problem",
    "fix",
    "pattern_errors",
    "seconds",
    "max_abs_error",
    "relative_error",
    "nonfinite",
    "worst",
    "detail",
)
FIX_WRONG_RESULT = (
    "keep the host out of service: run `dcgmi diag -r 3` on it, read"
    " `nvidia-smi -q -d ECC,ROW_REMAPPER` for uncorrectable errors and pending remaps, and"
    " `journalctl -k | grep -i xid`; reset the GPU (nvidia-smi -r -i INDEX) or reboot, and send"
    " the GPU for repair if the error returns"
)
FIX_MISSING_GPUS = (
    "compare `nvidia-smi -L` with the GPUs in sysfs (lspci -d 10de:); read `journalctl -k | grep -i"
    " -e RmInitAdapter -e xid` for a GPU that failed to initialise; check that CUDA_VISIBLE_DEVICES"
    " is not set; reboot, then reseat or replace the missing GPU"
)
FIX_NO_DEVICE = (
    "check that the NVIDIA driver is loaded and sees the GPUs (nvidia-smi), that the driver"
    " supports this torch's CUDA (nvidia-smi's 'CUDA Version' at least torch.version.cuda), that"
    " CUDA_VISIBLE_DEVICES is not empty, and on NVSwitch systems that nvidia-fabricmanager is"
    " active"
)
STAND_IN = "lab gpu-sim"  # what the report gives as torch's version


class UsageError(Exception):
    pass


def loaded_version(text: str) -> str:
    for line in text.splitlines():
        if line.startswith("NVRM version:"):
            match = re.search(r"\s(\d+\.\d+(?:\.\d+)?)\s", line + " ")
            if match:
                return match.group(1)
    return ""


def bus_id(address: str) -> str:
    domain, _, rest = address.partition(":")
    return f"{int(domain, 16):08X}:{rest.upper()}" if rest else address


def failing_indexes(text: str, count: int) -> set[int]:
    words = text.split()
    if "all" in words:
        return set(range(count))
    return {int(word) for word in words if word.isdigit()}


def matmul(a: list[list[float]], b: list[list[float]]) -> list[list[float]]:
    columns = list(zip(*b, strict=True))
    return [[sum(x * y for x, y in zip(row, column, strict=True)) for column in columns] for row in a]


def reference(a: list[list[float]], b: list[list[float]]) -> list[list[float]]:
    columns = list(zip(*b, strict=True))
    return [[math.fsum(x * y for x, y in zip(row, column, strict=True)) for column in columns] for row in a]


def compare(result: list[list[float]], expected: list[list[float]], tolerance: float) -> dict:
    """The real module's rule: largest |difference| over the largest |reference|; NaN fails."""
    nonfinite = sum(1 for row in result for value in row if not math.isfinite(value))
    worst, max_abs = [0, 0], -1.0
    for i, (got_row, want_row) in enumerate(zip(result, expected, strict=True)):
        for j, (got, want) in enumerate(zip(got_row, want_row, strict=True)):
            difference = abs(got - want) if math.isfinite(got) else math.inf
            if difference > max_abs:
                worst, max_abs = [i, j], difference
    scale = max(abs(value) for row in expected for value in row) or 1.0
    relative = max_abs / scale
    passed = nonfinite == 0 and relative <= tolerance
    detail = ""
    if nonfinite:
        detail = f"{nonfinite} element(s) are NaN or infinite"
    elif not passed:
        detail = f"relative error {relative:.3g} above the tolerance {tolerance:g}"
    return {
        "passed": passed,
        "max_abs_error": max_abs if math.isfinite(max_abs) else None,
        "relative_error": relative if math.isfinite(relative) else None,
        "nonfinite": nonfinite,
        "worst": worst,
        "detail": detail,
    }


def gpu_name(gpu: dict) -> str:
    parts = [str(gpu.get(key)) for key in ("name", "uuid", "bus_id") if gpu.get(key)]
    return f"GPU {gpu['index']}" + (f" ({', '.join(parts)})" if parts else "")


def check(gpu: dict, index: int, wrong: bool, settings: dict) -> dict:
    started = time.monotonic()
    record = dict.fromkeys(GPU_RECORD_FIELDS)
    record.update(index=index, name=gpu["name"], uuid=gpu["uuid"], bus_id=bus_id(gpu["address"]))
    generator = random.Random(settings["seed"])
    size = min(settings["size"], SIM_SIZE)
    a = [[generator.gauss(0, 1) for _ in range(size)] for _ in range(size)]
    b = [[generator.gauss(0, 1) for _ in range(size)] for _ in range(size)]
    expected = reference(a, b)
    product = matmul(a, b)
    if wrong:  # the injected fault: one element off by 1% of the largest
        product[size // 2][size // 3] += 0.01 * max(abs(value) for row in expected for value in row)
    record.update(compare(product, expected, settings["tolerance"]))
    record["pattern_errors"] = 0
    record["seconds"] = round(time.monotonic() - started, 3)
    if record["passed"]:
        record.update(problem="", fix="")
    else:
        worst = record["worst"]
        record.update(
            problem=f"matmul differs from the CPU's: {record['detail']} (largest at row {worst[0]}, column {worst[1]})",
            fix=FIX_WRONG_RESULT,
        )
    return record


def decide(gpus: list[dict], visible: int, expected: int) -> tuple[int, list[dict]]:
    problems, codes = [], []
    if visible == 0:
        problems.append({"gpu": None, "uuid": "", "bus_id": "", "what": "CUDA sees no GPU", "fix": FIX_NO_DEVICE})
        codes.append(EXIT_NO_CUDA)
    elif expected and visible < expected:
        what = f"CUDA sees {visible} GPU(s), the host has {expected} (--expect-gpus)"
        problems.append({"gpu": None, "uuid": "", "bus_id": "", "what": what, "fix": FIX_MISSING_GPUS})
        codes.append(EXIT_MISSING_GPUS)
    for gpu in gpus:
        if not gpu["passed"]:
            problems.append(
                {
                    "gpu": gpu["index"],
                    "uuid": gpu["uuid"],
                    "bus_id": gpu["bus_id"],
                    "what": f"{gpu_name(gpu)}: {gpu['problem']}",
                    "fix": gpu["fix"],
                }
            )
            codes.append(EXIT_GPU_FAILED)
    return (min(codes) if codes else EXIT_PASSED), problems


def report(gpus, visible, expected, settings, error=None, exit_code=EXIT_PASSED, seconds=0.0) -> dict:
    if error:
        problems = [{"gpu": None, "uuid": "", "bus_id": "", "what": error[0], "fix": error[1]}]
    else:
        exit_code, problems = decide(gpus, visible, expected)
    passed = exit_code == EXIT_PASSED
    side = settings["size"]
    message = (
        f"{len(gpus)} GPU(s) passed: allocate, matmul {side}x{side}, compare with the CPU"
        if passed
        else "; ".join(problem["what"] for problem in problems)
    )
    return {
        "check": "cuda",
        "version": REPORT_VERSION,
        "passed": passed,
        "exit_code": exit_code,
        "message": message,
        "torch": STAND_IN,
        "cuda": LIBRARY_VERSION,
        "visible_gpus": visible,
        "expected_gpus": expected,
        "size": settings["size"],
        "tolerance": settings["tolerance"],
        "alloc_mib": settings["alloc_mib"],
        "seconds": round(seconds, 3),
        "gpus": gpus,
        "problems": problems,
    }


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def parse(argv: list[str]) -> dict:
    def count(text):
        value = int(text)
        if value < 0:
            raise ValueError(text)
        return value

    def positive(text):
        value = int(text)
        if value < 1:
            raise ValueError(text)
        return value

    def fraction(text):
        value = float(text)
        if not 0 < value < 1:
            raise ValueError(text)
        return value

    parser = Parser(prog="gpu-check (lab stand-in for python -m hf_loader.gpu_check)")
    parser.add_argument("--expect-gpus", type=count, default=0)
    parser.add_argument("--size", type=positive, default=2048)
    parser.add_argument("--tolerance", type=fraction, default=1e-4)
    parser.add_argument("--alloc-mib", type=positive, default=256)
    parser.add_argument("--seed", type=int, default=1234)
    return vars(parser.parse_args(argv))


def run(settings: dict) -> dict:
    started = time.monotonic()
    expected = settings["expect_gpus"]
    try:
        version = loaded_version(PROC_VERSION.read_text())
    except OSError:
        version = ""
    if not version:
        why = f"CUDA is not available to torch {STAND_IN}: no NVIDIA driver loaded, or no GPU visible"
        return report([], 0, expected, settings, (why, FIX_NO_DEVICE), EXIT_NO_CUDA)
    if LIBRARY_VERSION and version != LIBRARY_VERSION:
        why = (
            f"CUDA is not available: the loaded driver {version} is not this CUDA library's {LIBRARY_VERSION}"
            " (system has unsupported display driver / cuda driver combination)"
        )
        fix = "reboot into the installed driver (the module loaded is the old one), then run the check again"
        return report([], 0, expected, settings, (why, fix), EXIT_NO_CUDA)
    try:
        gpus = json.loads(GPUS.read_text())
    except (OSError, ValueError):
        gpus = []
    try:
        wrong = failing_indexes(FAIL_FILE.read_text(), len(gpus))
    except OSError:
        wrong = set()
    records = [check(gpu, index, index in wrong, settings) for index, gpu in enumerate(gpus)]
    return report(records, len(gpus), expected, settings, seconds=time.monotonic() - started)


def main(argv: list[str] | None = None) -> int:
    defaults = {"expect_gpus": 0, "size": 2048, "tolerance": 1e-4, "alloc_mib": 256, "seed": 1234}
    try:
        doc = run(parse(sys.argv[1:] if argv is None else argv))
    except UsageError as error:
        doc = report([], 0, 0, defaults, (str(error), "see: python -m hf_loader.gpu_check --help"), EXIT_USAGE)
    print(json.dumps(doc, indent=2))
    for problem in doc["problems"]:
        print(f"gpu-check: {problem['what']}\n  fix: {problem['fix']}", file=sys.stderr)
    print(f"gpu-check: {'passed' if doc['passed'] else 'FAILED'} (exit {doc['exit_code']})", file=sys.stderr)
    return doc["exit_code"]


if __name__ == "__main__":
    sys.exit(main())
