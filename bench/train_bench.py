#!/usr/bin/env python3
"""Training benchmark (not a test): hf-train's ResNet-50 images/s on one GPU, per device lever.

Every row is a real `Trainer.fit` through `hf_loader.train.train`, the code `hf-train` runs:
- real data: ImageNet-like JPEGs in an Arrow cache written by `datasets`, read through
  hf_loader's loader with hf-train's defaults (every lever on);
- synthetic data: one uint8 batch already on the device, repeated, same levers: the loader
  and the host-to-device copy out of the picture;
- each lever in turn switched off (and `compile`, which is off by default, switched on),
  real data.
Images/s count the batches after --warmup (cuDNN autotuning, compilation), timed between two
device synchronisations. The goals of one H200 are printed beside the figures: at least
3,700 images/s, and real data at least 95% of synthetic.

Without a CUDA GPU it prints "no GPU" and exits 0. `--device cpu` runs the same code on the
CPU with small settings: a smoke run (the tests do it), not a measurement.

Run: make train-bench   (or: .venvs/loader/bin/python bench/train_bench.py [--batches N])
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

DATASET = "bench/imagenet-like"
GOAL_IMAGES_PER_S = 3700
GOAL_REAL_OF_SYNTHETIC = 0.95
# Each lever's row: the hf-train settings that turn it off (compile: on).
LEVERS = {
    "channels_last": {"channels_last": False},
    "bf16": {"precision": "fp32"},
    "cudnn_benchmark": {"cudnn_benchmark": False},
    "foreach_optimizer": {"foreach_optimizer": False},
    "normalize_on_device": {"output": "float"},
    "compile": {"compile": True},
}


def jpegs(n: int) -> list[bytes]:
    """The loader bench's photographs where installed, else the package's synthetic JPEGs."""
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        import loader_bench

        return loader_bench.imagenet_like(n, 95)  # exits when the photographs are missing
    except SystemExit:
        from hf_loader import fixtures

        return [fixtures.synthetic_jpeg(i, size=(409, 347), quality=95) for i in range(n)]


def build_cache(home: Path, n: int) -> None:
    from hf_loader import fixtures

    images = jpegs(n)
    snap = fixtures.make_hub_snapshot(
        home / "hub",
        DATASET,
        {"train": (images, [i % 10 for i in range(n)])},
        [f"c{i}" for i in range(10)],
        shards=4,
    )
    fixtures.make_arrow_cache(home / "datasets", DATASET, snap)


class SyntheticBatches:
    """The same device batch, `length` times: what training costs with no input pipeline."""

    def __init__(self, batch, length: int) -> None:
        self.batch = batch
        self.length = length
        self.batch_size = len(batch[1])  # Composer reads the microbatch size from it

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        for _ in range(self.length):
            yield self.batch


def run(args, settings: dict, synthetic: bool) -> float:
    import torch
    from composer.core import Callback
    from hf_loader import train
    from hf_loader.data import make_dataspec

    total = args.warmup + args.batches
    cfg = dict(train.DEFAULTS)
    cfg.update(
        dataset=DATASET,
        eval_split=None,
        batch_size=args.batch_size,
        workers=args.workers,
        max_duration=f"{total}ba",
        warmup="0ba",
        device=args.device,
        log_to_console=False,
        speed_window=0,
    )
    cfg.update(settings)
    cuda = args.device == "gpu"
    marks = {}

    class Clock(Callback):
        def batch_end(self, state, logger):
            done = int(state.timestamp.batch)
            if done in (args.warmup, total):
                if cuda:
                    torch.cuda.synchronize()
                marks[done] = time.perf_counter()

    overrides = {"callbacks": [Clock()], "loggers": []}
    if synthetic:
        device = torch.device("cuda" if cuda else "cpu")
        x = torch.randint(0, 256, (args.batch_size, 3, 224, 224), dtype=torch.uint8)
        x = x.contiguous(memory_format=torch.channels_last).to(device)
        y = torch.randint(0, 10, (args.batch_size,)).to(device)
        loader = SyntheticBatches([x, y], total)
        overrides["train_dataloader"] = make_dataspec(loader, channels_last=cfg["channels_last"])
    train.train(cfg, **overrides)
    return args.batch_size * args.batches / (marks[total] - marks[args.warmup])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["auto", "gpu", "cpu"], default="auto")
    ap.add_argument("--images", type=int, default=12800, help="JPEGs in the cache")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--warmup", type=int, default=30, help="batches before the clock starts")
    ap.add_argument("--batches", type=int, default=100, help="batches timed")
    ap.add_argument("--workers", default="auto", help="DataLoader workers (hf-train's setting)")
    ap.add_argument("--levers", nargs="*", choices=list(LEVERS), default=list(LEVERS), help="rows to run")
    args = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    args.workers = int(args.workers) if args.workers != "auto" else "auto"
    warnings.filterwarnings("ignore", message="The warmup duration is 0")

    import torch

    if args.device == "auto":
        if not torch.cuda.is_available():
            print("train bench: no GPU (torch.cuda.is_available() is False): nothing measured")
            return 0
        args.device = "gpu"
    where = torch.cuda.get_device_name(0) if args.device == "gpu" else "CPU (smoke run)"
    with tempfile.TemporaryDirectory(prefix="hf-train-bench-") as tmp:
        home = Path(tmp) / "hf"
        for var in ("HF_DATASETS_CACHE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
            os.environ.pop(var, None)
        os.environ["HF_HOME"] = str(home)
        t = time.perf_counter()
        build_cache(home, args.images)
        print(
            f"{where}, {os.cpu_count()} CPUs; torch {torch.__version__}; {args.images} JPEGs "
            f"cached in {time.perf_counter() - t:.0f} s; batch {args.batch_size}, workers "
            f"{args.workers}; {args.batches} batches timed after {args.warmup}"
        )
        rows = {
            "real data, every lever": run(args, {}, synthetic=False),
            "synthetic data on the device": run(args, {}, synthetic=True),
        }
        for lever in args.levers:
            state = "on" if lever == "compile" else "off"
            rows[f"real data, {lever} {state}"] = run(args, LEVERS[lever], synthetic=False)
    base = rows["real data, every lever"]
    print(f"\n{'run':<40} {'images/s':>10} {'x every lever':>14}")
    for name, ips in rows.items():
        # A CPU smoke run trains a few images a second, fewer on a busy machine: whole numbers would print 0.
        print(f"{name:<40} {ips:>10.{0 if ips >= 100 else 3}f} {ips / base:>13.2f}x")
    share = base / rows["synthetic data on the device"]
    if args.device == "gpu":
        print(
            f"\ngoals: {base:.0f} images/s against {GOAL_IMAGES_PER_S} "
            f"({'met' if base >= GOAL_IMAGES_PER_S else 'NOT met'}); real data at "
            f"{share:.0%} of synthetic against {GOAL_REAL_OF_SYNTHETIC:.0%} "
            f"({'met' if share >= GOAL_REAL_OF_SYNTHETIC else 'NOT met'})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
