"""A short CUDA workload on every GPU, for the health gate before a host goes back to service.

    python -m hf_loader.gpu_check [--expect-gpus N] [--size N] [--tolerance X] [--alloc-mib N]

On each GPU torch sees, in PCI bus order (the order and indexes of nvidia-smi): allocate
--alloc-mib MiB, fill it with a pattern and read it back; multiply two --size square float32
matrices and compare the product with the CPU's (float64) within --tolerance, the largest
error relative to the largest element of the CPU's product. TF32 is switched off for the run,
so a healthy GPU's error is near float32's rounding (about 1e-6), far below the default 1e-4.

Prints one JSON document on stdout (the roles' health gate reads it, roles/hf_loader/tasks/
health_gate.yml; the lab's stand-in scripts/gpu_sim/payload/gpu_check.py prints the same shape)
and a line a GPU on stderr. Every problem names the GPU (index, UUID, bus id), what failed and
the fix. A host without CUDA fails (exit 3): nothing is skipped, nothing passes by default.

Exit codes: `hf_loader.cli.exitcodes.GPU_CHECK`, shown by --help and in docs/hf-loader-cli.md.
When several apply the lowest non-zero code wins but every problem is listed.

The decisions (compare, decide, report) are pure functions that take CPU tensors and plain
records, tested on the CPU (files/hf_loader/tests/test_gpu_check.py); torch is imported only to
run the workload, so the report's shape can be read where torch is not installed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from .cli import output
from .cli.exitcodes import GPU_CHECK, ExitCode
from .errors import HFLoaderError

REPORT_VERSION = 1
DEFAULT_SIZE = 2048
DEFAULT_TOLERANCE = 1e-4
DEFAULT_ALLOC_MIB = 256
DEFAULT_SEED = 1234
PATTERN = 0xA5

# What to do about each kind of problem (the gate prints it beside the GPU).
FIX_WRONG_RESULT = (
    "keep the host out of service: run `dcgmi diag -r 3` on it, read"
    " `nvidia-smi -q -d ECC,ROW_REMAPPER` for uncorrectable errors and pending remaps, and"
    " `journalctl -k | grep -i xid`; reset the GPU (nvidia-smi -r -i INDEX) or reboot, and send"
    " the GPU for repair if the error returns"
)
FIX_CUDA_ERROR = (
    "read `journalctl -k | grep -i -e xid -e nvrm` for the GPU's errors, then reset the GPU"
    " (nvidia-smi -r -i INDEX) or reboot; if it fails again, keep the host cordoned and send the"
    " GPU for repair"
)
FIX_MISSING_GPUS = (
    "compare `nvidia-smi -L` with the GPUs in sysfs (lspci -d 10de:); read `journalctl -k | grep -i"
    " -e RmInitAdapter -e xid` for a GPU that failed to initialise; check that CUDA_VISIBLE_DEVICES"
    " is not set; reboot, then reseat or replace the missing GPU"
)
FIX_NO_TORCH = (
    "install the loader's stack (the hf_loader role's virtual environment) and run this with its"
    " python"
)
FIX_CPU_TORCH = (
    "install a CUDA build of torch (the loader's lock pins one); a CPU build cannot reach the GPUs"
)
FIX_NO_DEVICE = (
    "check that the NVIDIA driver is loaded and sees the GPUs (nvidia-smi), that the driver"
    " supports this torch's CUDA (nvidia-smi's 'CUDA Version' at least torch.version.cuda), that"
    " CUDA_VISIBLE_DEVICES is not empty, and on NVSwitch systems that nvidia-fabricmanager is"
    " active"
)


class GpuCheckError(HFLoaderError):
    """The workload could not run at all (no CUDA, bad options): one problem, no GPU to name."""

    kind = "gpu_check"


class CudaUnavailableError(GpuCheckError):
    """torch missing, a CPU build of torch, or no GPU visible to CUDA."""

    exit_code = ExitCode.NO_CUDA
    kind = "no_cuda"


class UsageError(GpuCheckError):
    exit_code = ExitCode.USAGE
    kind = "usage"


class GpuFailedError(GpuCheckError):
    """Raised by check_gpu for one GPU: a wrong product or pattern, or a CUDA error on it."""

    exit_code = ExitCode.GPU_FAILED
    kind = "gpu_failed"


# Every GPU record has exactly these keys (None where not measured): the lab's stand-in
# (scripts/gpu_sim/payload/gpu_check.py) prints the same, tests/test_gpu_sim.py compares them.
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


# ------------------------------------------------------------------ pure decisions


def new_record(index: int) -> dict:
    """A GPU's record before the workload: every field, None where not measured yet."""
    record = dict.fromkeys(GPU_RECORD_FIELDS)
    record.update(index=index, name="", uuid="", bus_id="", passed=False, problem="", fix="")
    return record


def compare(result: Any, reference: Any, tolerance: float) -> dict:
    """How far `result` (a GPU's product, on the CPU) lies from `reference` (the CPU's, float64).

    relative_error: the largest absolute difference over the largest absolute reference element
    (scale-free: the inputs' size does not move it). A NaN or an infinity anywhere fails,
    whatever the tolerance. worst: [row, column] of the largest difference.
    """
    if tuple(result.shape) != tuple(reference.shape):
        return {
            "passed": False,
            "max_abs_error": None,
            "relative_error": None,
            "nonfinite": 0,
            "worst": None,
            "detail": f"shape {list(result.shape)} instead of {list(reference.shape)}",
        }
    result = result.double()
    nonfinite = int((~result.isfinite()).sum().item())
    difference = (result - reference).abs().nan_to_num(nan=float("inf"))
    flat = int(difference.argmax().item())
    columns = reference.shape[1] if reference.dim() == 2 else 1
    max_abs = float(difference.max().item())
    scale = float(reference.abs().max().item()) or 1.0
    relative = max_abs / scale
    passed = nonfinite == 0 and relative <= tolerance
    detail = ""
    if nonfinite:
        detail = f"{nonfinite} element(s) are NaN or infinite"
    elif not passed:
        detail = f"relative error {relative:.3g} above the tolerance {tolerance:g}"
    return {
        "passed": passed,
        "max_abs_error": max_abs if max_abs != float("inf") else None,
        "relative_error": relative if relative != float("inf") else None,
        "nonfinite": nonfinite,
        "worst": [flat // columns, flat % columns],
        "detail": detail,
    }


def gpu_name(gpu: dict) -> str:
    """'GPU 1 (NVIDIA H200, GPU-..., 00000000:2A:00.0)' from a GPU record."""
    parts = [str(gpu.get(key)) for key in ("name", "uuid", "bus_id") if gpu.get(key)]
    return f"GPU {gpu['index']}" + (f" ({', '.join(parts)})" if parts else "")


def decide(gpus: list[dict], visible: int, expected: int) -> tuple[int, list[dict]]:
    """(exit code, problems) from the per-GPU records, the GPUs CUDA sees and the count expected.

    A GPU record: index, name, uuid, bus_id, passed, problem ('' when passed), fix. expected 0: at
    least one GPU. A problem: {gpu, uuid, bus_id, what, fix}; gpu is None for the host's problems.
    """
    problems = []
    if visible == 0:
        problems.append(
            {
                "gpu": None,
                "uuid": "",
                "bus_id": "",
                "what": "CUDA sees no GPU",
                "fix": FIX_NO_DEVICE,
            }
        )
    elif expected and visible < expected:
        problems.append(
            {
                "gpu": None,
                "uuid": "",
                "bus_id": "",
                "what": f"CUDA sees {visible} GPU(s), the host has {expected} (--expect-gpus)",
                "fix": FIX_MISSING_GPUS,
            }
        )
    for gpu in gpus:
        if not gpu["passed"]:
            problems.append(
                {
                    "gpu": gpu["index"],
                    "uuid": gpu.get("uuid", ""),
                    "bus_id": gpu.get("bus_id", ""),
                    "what": f"{gpu_name(gpu)}: {gpu['problem']}",
                    "fix": gpu.get("fix") or FIX_CUDA_ERROR,
                }
            )
    codes = []
    if visible == 0:
        codes.append(ExitCode.NO_CUDA)
    elif expected and visible < expected:
        codes.append(ExitCode.MISSING_GPUS)
    if any(not gpu["passed"] for gpu in gpus):
        codes.append(ExitCode.GPU_FAILED)
    return (min(codes) if codes else ExitCode.PASSED), problems


def report(
    *,
    gpus: list[dict],
    visible: int,
    expected: int,
    settings: dict,
    torch_version: str = "",
    cuda_version: str = "",
    error: GpuCheckError | None = None,
    seconds: float = 0.0,
) -> dict:
    """The JSON document on stdout. `error`: the run could not start (no CUDA, usage)."""
    if error is not None:
        exit_code = error.exit_code
        problems = [
            {"gpu": None, "uuid": "", "bus_id": "", "what": error.message, "fix": error.remedy}
        ]
    else:
        exit_code, problems = decide(gpus, visible, expected)
    passed = exit_code == ExitCode.PASSED
    if passed:
        side = settings["size"]
        message = f"{len(gpus)} GPU(s) passed: allocate, matmul {side}x{side}, compare with the CPU"
    else:
        message = "; ".join(problem["what"] for problem in problems)
    return {
        "check": "cuda",
        "version": REPORT_VERSION,
        "passed": passed,
        "exit_code": exit_code,
        "message": message,
        "torch": torch_version,
        "cuda": cuda_version,
        "visible_gpus": visible,
        "expected_gpus": expected,
        "size": settings["size"],
        "tolerance": settings["tolerance"],
        "alloc_mib": settings["alloc_mib"],
        "seconds": round(seconds, 3),
        "gpus": gpus,
        "problems": problems,
    }


# ------------------------------------------------------------------ the workload


def make_inputs(torch, size: int, seed: int):
    """Two float32 matrices on the CPU from a fixed seed, and their float64 product (reference)."""
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(size, size, generator=generator, dtype=torch.float32)
    b = torch.randn(size, size, generator=generator, dtype=torch.float32)
    return a, b, a.double() @ b.double()


def identity(torch, index: int) -> dict:
    """index, name, uuid (GPU-...) and bus id (nvidia-smi's 00000000:18:00.0) of one CUDA device."""
    props = torch.cuda.get_device_properties(index)
    uuid = str(getattr(props, "uuid", "") or "")
    if uuid and not uuid.startswith("GPU-"):
        uuid = f"GPU-{uuid}"
    bus_id = ""
    if hasattr(props, "pci_bus_id"):
        domain, bus, device = (
            getattr(props, key, 0) for key in ("pci_domain_id", "pci_bus_id", "pci_device_id")
        )
        bus_id = f"{domain:08X}:{bus:02X}:{device:02X}.0"
    return {"index": index, "name": props.name, "uuid": uuid, "bus_id": bus_id}


def check_gpu(torch, device, a, b, reference, tolerance: float, alloc_mib: int) -> dict:
    """The workload on one device (a GPU; the CPU in the tests): the measurements, or GpuFailedError
    (carrying the measurements so far in .measured) when the device fails."""
    started = time.monotonic()
    measured: dict = {}
    try:
        buffer = torch.empty(alloc_mib * 2**20, dtype=torch.uint8, device=device)
        buffer.fill_(PATTERN)
        measured["pattern_errors"] = int((buffer != PATTERN).sum().item())
        del buffer
        product = (a.to(device) @ b.to(device)).cpu()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    except (
        RuntimeError
    ) as error:  # torch's CUDA errors (out of memory, launch failures, Xid) are RuntimeErrors
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise GpuFailedError(f"CUDA error: {first_line}", remedy=FIX_CUDA_ERROR) from error
    measured["seconds"] = round(time.monotonic() - started, 3)
    if measured["pattern_errors"]:
        failure = GpuFailedError(
            f"{measured['pattern_errors']} byte(s) of {alloc_mib} MiB filled with 0x{PATTERN:02X}"
            " read back wrong",
            remedy=FIX_WRONG_RESULT,
        )
        failure.measured = measured
        raise failure
    comparison = compare(product, reference, tolerance)
    measured.update(comparison)
    if not comparison["passed"]:
        worst = comparison["worst"]
        failure = GpuFailedError(
            f"matmul differs from the CPU's: {comparison['detail']}"
            f" (largest at row {worst[0]}, column {worst[1]})",
            remedy=FIX_WRONG_RESULT,
        )
        failure.measured = measured
        raise failure
    return measured


def run(settings: dict) -> dict:
    """The whole check: the report (never raises for the GPUs' problems)."""
    started = time.monotonic()
    # nvidia-smi's indexes are in PCI bus order; CUDA's default puts the fastest GPU first.
    os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    try:
        import torch
    except ImportError as error:
        failure = CudaUnavailableError(
            f"torch cannot be imported by {sys.executable}: {error}", remedy=FIX_NO_TORCH
        )
        return report(
            gpus=[], visible=0, expected=settings["expect_gpus"], settings=settings, error=failure
        )
    versions = {"torch_version": torch.__version__, "cuda_version": torch.version.cuda or ""}
    if not torch.version.cuda:
        failure = CudaUnavailableError(
            f"torch {torch.__version__} is a CPU build (no CUDA)", remedy=FIX_CPU_TORCH
        )
        return report(
            gpus=[],
            visible=0,
            expected=settings["expect_gpus"],
            settings=settings,
            error=failure,
            **versions,
        )
    if not torch.cuda.is_available():
        failure = CudaUnavailableError(
            f"CUDA is not available to torch {torch.__version__} (built for CUDA"
            f" {torch.version.cuda}): no NVIDIA driver loaded, or no GPU visible",
            remedy=FIX_NO_DEVICE,
        )
        return report(
            gpus=[],
            visible=0,
            expected=settings["expect_gpus"],
            settings=settings,
            error=failure,
            **versions,
        )
    # Full float32 on the GPU: TF32 would move a healthy product by about 1e-3.
    torch.set_float32_matmul_precision("highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    a, b, reference = make_inputs(torch, settings["size"], settings["seed"])
    visible = torch.cuda.device_count()
    gpus = []
    for index in range(visible):
        record = new_record(index)
        try:
            record.update(identity(torch, index))
            device = torch.device("cuda", index)
            measured = check_gpu(
                torch, device, a, b, reference, settings["tolerance"], settings["alloc_mib"]
            )
            record.update(measured, passed=True, problem="", fix="")
        except GpuFailedError as failure:
            record.update(
                getattr(failure, "measured", {}),
                passed=False,
                problem=failure.message,
                fix=failure.remedy,
            )
        except RuntimeError as error:  # the properties of a GPU whose context cannot be made
            record.update(passed=False, problem=f"CUDA error: {error}", fix=FIX_CUDA_ERROR)
        gpus.append(record)
    return report(
        gpus=gpus,
        visible=visible,
        expected=settings["expect_gpus"],
        settings=settings,
        seconds=time.monotonic() - started,
        **versions,
    )


# ------------------------------------------------------------------ command line


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # a usage error is still one JSON document, exit 2
        raise UsageError(message, remedy="see: python -m hf_loader.gpu_check --help")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


def tolerance(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise ValueError(text)
    return value


def parse(argv: list[str]) -> dict:
    parser = _Parser(
        prog="python -m hf_loader.gpu_check",
        description="A short CUDA workload on every GPU: allocate, matmul, compare with the CPU.",
        epilog=GPU_CHECK.epilog(),
    )
    parser.add_argument(
        "--expect-gpus",
        type=non_negative_int,
        default=0,
        help="GPUs the host has (0: at least one); fewer visible fails",
    )
    parser.add_argument(
        "--size", type=positive_int, default=DEFAULT_SIZE, help="matrix side (default %(default)s)"
    )
    parser.add_argument(
        "--tolerance",
        type=tolerance,
        default=DEFAULT_TOLERANCE,
        help="largest relative error accepted, between 0 and 1 (default %(default)s)",
    )
    parser.add_argument(
        "--alloc-mib",
        type=positive_int,
        default=DEFAULT_ALLOC_MIB,
        help="MiB filled and read back on each GPU",
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    return {
        "expect_gpus": args.expect_gpus,
        "size": args.size,
        "tolerance": args.tolerance,
        "alloc_mib": args.alloc_mib,
        "seed": args.seed,
    }


def summary_lines(doc: dict) -> list[str]:
    """What stderr says: one line a GPU, then every problem with its fix."""
    lines = []
    for gpu in doc["gpus"]:
        state = "passed" if gpu["passed"] else f"FAILED: {gpu['problem']}"
        error = gpu.get("relative_error")
        measured = f" relative error {error:.2g}" if error is not None else ""
        lines.append(f"gpu-check: {gpu_name(gpu)}{measured}: {state}")
    for problem in doc["problems"]:
        lines.append(f"gpu-check: {problem['what']}\n  fix: {problem['fix']}")
    lines.append(f"gpu-check: {'passed' if doc['passed'] else 'FAILED'} (exit {doc['exit_code']})")
    return lines


def main(argv: list[str] | None = None) -> int:
    defaults = {
        "expect_gpus": 0,
        "size": DEFAULT_SIZE,
        "tolerance": DEFAULT_TOLERANCE,
        "alloc_mib": DEFAULT_ALLOC_MIB,
        "seed": DEFAULT_SEED,
    }
    try:
        settings = parse(sys.argv[1:] if argv is None else argv)
        doc = run(settings)
    except UsageError as error:
        doc = report(gpus=[], visible=0, expected=0, settings=defaults, error=error)
    except Exception as error:  # a bug: still one JSON document, exit 1
        failure = GpuCheckError(
            f"internal error: {type(error).__name__}: {error}", remedy="report this as a bug"
        )
        failure.exit_code = ExitCode.INTERNAL
        doc = report(gpus=[], visible=0, expected=0, settings=defaults, error=failure)
    output.emit(output.as_json(doc))
    output.emit("\n".join(summary_lines(doc)), stream=sys.stderr)
    return doc["exit_code"]


if __name__ == "__main__":
    sys.exit(main())
