#!/usr/bin/env python3
"""hf_loader benchmark (not a test): train-loader images/s against a plain baseline,
time to first batch, and completeness-check time at 10/100/1000 shards.

Images: ImageNet-like JPEGs (random crops/rescales to about 400x350, re-encoded at
--quality) cut from real photographs that the scikit-learn and scikit-image wheels ship
(requirements/loader-bench.txt); nothing is downloaded. They are stored as an Arrow cache
written by `datasets` and resolved offline exactly like ImageNet.

Pipelines, same DataLoader settings (batch size, workers, no pinning), interleaved runs:
- baseline: full PIL decode + torchvision RandomResizedCrop(224) + RandomHorizontalFlip +
  ToTensor + Normalize (float32 out), from the same Arrow rows;
- hf_loader float: libjpeg-turbo decodes only the crop window + torch antialiased uint8
  resize + flip + normalize in the worker (float32 out, same meaning as the baseline);
- hf_loader uint8: the same, uint8 out; hf-train normalizes these on the device
  (Composer microbatch transform after the move + the model's first module);
- hf_loader uint8 full: uint8 out, but simplejpeg decodes the whole image (crop_decode off):
  what decoding only the window buys;
- hf_loader uint8 no ring: uint8 out, every batch in new shared memory as PyTorch does
  (reuse_batch_memory off): what the workers' ring of batch buffers buys.
Ratios are medians of --reps runs measured in this one process. The decode-only limit is one
core fully decoding the same JPEGs with the fastest decoder found, nothing else.

Run: make loader-bench   (or: .venvs/loader/bin/python bench/loader_bench.py [--quick])
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

import numpy as np
from PIL import Image

PHOTOS = {
    "sklearn": ["datasets/images/china.jpg", "datasets/images/flower.jpg"],
    "skimage": [
        "data/astronaut.png",
        "data/chelsea.png",
        "data/coffee.png",
        "data/rocket.jpg",
        "data/motorcycle_left.png",
        "data/motorcycle_right.png",
        "data/hubble_deep_field.jpg",
    ],
}


def photos() -> list[Image.Image]:
    out = []
    for pkg, rels in PHOTOS.items():
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            continue
        base = Path(next(iter(spec.submodule_search_locations)))
        for rel in rels:
            p = base / rel
            if p.exists():
                out.append(Image.open(p).convert("RGB"))
    if len(out) < 3:
        sys.exit("bench: photographs not found; install requirements/loader-bench.txt (make loader-bench does)")
    return out


def imagenet_like(n: int, quality: int, seed: int = 0) -> list[bytes]:
    """Random crops of the photos, rescaled to ImageNet-like sizes (mean ~400x350)."""
    rng = random.Random(seed)
    srcs = photos()
    out = []
    for _ in range(n):
        src = srcs[rng.randrange(len(srcs))]
        w = int(rng.gauss(405, 60))
        h = int(rng.gauss(350, 50))
        w, h = max(200, min(w, 600)), max(180, min(h, 520))
        scale = rng.uniform(0.5, 1.0)
        cw = min(src.width, int(src.width * scale))
        ch = min(src.height, int(cw * h / w))
        x0 = rng.randrange(0, src.width - cw + 1)
        y0 = rng.randrange(0, src.height - ch + 1)
        img = src.resize((w, h), Image.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=quality)
        out.append(buf.getvalue())
    return out


class BaselineDataset:
    """Plain torchvision-style pipeline over the same Arrow rows."""

    def __init__(self, ds):
        import datasets
        from hf_loader.transforms import IMAGENET_MEAN, IMAGENET_STD
        from torchvision import transforms as T

        self.ds = ds.cast_column("image", datasets.Image(decode=False))
        self.t = T.Compose(
            [
                T.RandomResizedCrop(224),
                T.RandomHorizontalFlip(),
                T.ToTensor(),
                T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ]
        )

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        row = self.ds[int(i)]
        img = Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB")
        return self.t(img), row["label"]


def run_loader(make_loader) -> tuple[float, float, float]:
    """(images/s after the first batch, first batch s, images per CPU-second).

    CPU-seconds count this process and its (joined) DataLoader workers over the whole
    run: a measure that other jobs sharing the machine disturb much less than wall time.
    """
    c0 = os.times()
    t0 = time.perf_counter()
    loader = make_loader()
    n, n_all, first, t1 = 0, 0, None, None
    for x, _ in loader:
        n_all += x.shape[0]
        if first is None:
            first = time.perf_counter() - t0
            t1 = time.perf_counter()
            continue
        n += x.shape[0]
    dt = time.perf_counter() - t1
    del loader  # workers exit and are reaped: their CPU time lands in os.times().children_*
    c1 = os.times()
    cpu = sum(c1[i] - c0[i] for i in range(4))
    return n / dt, first, n_all / cpu


def bench_throughput(args, ds) -> dict:
    from hf_loader.data import LoaderConfig, build_dataloader
    from torch.utils.data import DataLoader

    results = {}
    for workers in args.workers:
        common = {"batch_size": args.batch_size, "num_workers": workers, "pin_memory": False}

        def baseline(workers=workers, common=common):
            return DataLoader(BaselineDataset(ds), shuffle=True, drop_last=True, **common)

        def ours(output, workers=workers, crop_decode=True, reuse_batch_memory=True):
            cfg = LoaderConfig(
                batch_size=args.batch_size,
                workers=workers,
                pin_memory=False,
                persistent_workers=False,
                output=output,
                crop_decode=crop_decode,
                reuse_batch_memory=reuse_batch_memory,
            )
            return lambda: build_dataloader(ds, True, cfg, rank=0, world_size=1)

        pipes = {
            "baseline": baseline,
            "float": ours("float"),
            "uint8": ours("uint8"),
            "uint8 full": ours("uint8", crop_decode=False),
            "uint8 no ring": ours("uint8", reuse_batch_memory=False),
        }
        runs = {k: [] for k in pipes}
        firsts = {k: [] for k in pipes}
        per_cpu = {k: [] for k in pipes}
        for _ in range(args.reps):
            for name, make in pipes.items():
                ips, first, ipc = run_loader(make)
                runs[name].append(ips)
                firsts[name].append(first)
                per_cpu[name].append(ipc)
        med = {k: statistics.median(v) for k, v in runs.items()}
        med_cpu = {k: statistics.median(v) for k, v in per_cpu.items()}
        results[workers] = {
            "images_per_s_median": med,
            "images_per_s_all": runs,
            "images_per_cpu_s_median": med_cpu,
            "first_batch_s_median": {k: statistics.median(v) for k, v in firsts.items()},
            "ratio": {k: med[k] / med["baseline"] for k in pipes},
            "cpu_ratio": {k: med_cpu[k] / med_cpu["baseline"] for k in pipes},
        }
    return results


def decode_limit(jpegs: list[bytes], reps: int) -> dict:
    """Images/s on one core: full decode with each decoder, and the crop-window decode."""
    import simplejpeg
    from hf_loader import transforms
    from hf_loader.transforms import random_resized_crop_params

    crop = transforms.CROP_DECODER
    rng = random.Random(0)
    decoders = {"simplejpeg full": lambda b: simplejpeg.decode_jpeg(b, colorspace="RGB")}
    decoders["PIL full"] = lambda b: np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))
    if crop is not None:
        decoders["libjpeg-turbo 3 full"] = lambda b: crop.decode(b, 0, 0, *crop.size(b))

        def window(b):
            return crop.decode(b, *random_resized_crop_params(*crop.size(b), rng))

        decoders["libjpeg-turbo 3 crop window"] = window
    out = {}
    for name, fn in decoders.items():
        best = float("inf")
        for _ in range(max(reps, 3)):
            t = time.perf_counter()
            for b in jpegs:
                fn(b)
            best = min(best, time.perf_counter() - t)
        out[name] = len(jpegs) / best
    full = [v for k, v in out.items() if k.endswith("full")]
    out["limit"] = max(full)
    return out


def time_to_first_batch(args, home: Path, dataset_id: str) -> dict:
    """Cold: a fresh process resolves, checks, builds the loader, yields batch 1."""
    code = (
        "import time; t=time.perf_counter()\n"
        "from hf_loader.resolve import resolve, load_split\n"
        "from hf_loader.data import LoaderConfig, build_dataloader\n"
        f"r = resolve({dataset_id!r}); ds = load_split(r, 'train')\n"
        f"cfg = LoaderConfig(batch_size={args.batch_size}, workers={max(args.workers)}, "
        "pin_memory=False)\n"
        "x, y = next(iter(build_dataloader(ds, True, cfg, rank=0, world_size=1)))\n"
        "print(time.perf_counter() - t)\n"
    )
    env = dict(os.environ, HF_HOME=str(home))
    times = []
    for _ in range(3):
        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        times.append((time.perf_counter() - t, float(p.stdout.strip().splitlines()[-1])))
    return {
        "process_wall_s_median": statistics.median(t[0] for t in times),
        "in_process_s_median": statistics.median(t[1] for t in times),
    }


def bench_checks(root: Path) -> dict:
    """Shallow check time vs number of shards, and vs bytes at a fixed shard count."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from hf_loader import fixtures
    from hf_loader.check import check_arrow_dir, check_hub_snapshot
    from hf_loader.env import CachePaths
    from hf_loader.resolve import resolve

    out = {"shards": {}, "bytes": {}}
    img = fixtures.synthetic_jpeg(1, (16, 16))
    for n in (10, 100, 1000):
        home = root / f"shards{n}"
        dataset_id = f"bench/shards-{n}"
        splits = {"train": ([img] * n, [0] * n)}
        snap = fixtures.make_hub_snapshot(home / "hub", dataset_id, splits, ["a"], shards=n)
        arrow = _arrow_with_shards(home / "datasets", dataset_id, snap, n)
        paths = CachePaths(home, home / "datasets", home / "hub")
        t_hub = _best(lambda snap=snap: check_hub_snapshot(snap))
        t_arrow = _best(lambda arrow=arrow: check_arrow_dir(arrow))
        rep = check_arrow_dir(arrow)
        assert rep.ok and len(rep.splits["train"].files) == n, rep.problems[:3]
        t_res = _best(lambda dataset_id=dataset_id, paths=paths: resolve(dataset_id, paths=paths))
        cli = _cli_check(home, dataset_id)
        out["shards"][n] = {
            "hub_check_s": t_hub,
            "arrow_check_s": t_arrow,
            "resolve_s": t_res,
            "cli_wall_s": cli,
        }
    # bytes: 10 parquet shards of ~1 KB vs ~40 MB each, same card
    for label, rows in (("10 x 1 KB", 1), ("10 x 40 MB", 40)):
        snap = root / f"bytes-{rows}"
        (snap / "data").mkdir(parents=True)
        rng = np.random.default_rng(0)
        for i in range(10):
            col = [rng.bytes(1 << 20 if rows > 1 else 1000) for _ in range(rows)]
            pq.write_table(
                pa.table({"image": col, "label": [0] * rows}),
                snap / "data" / f"train-{i:05d}-of-00010.parquet",
                compression="none",
            )
        total = sum(f.stat().st_size for f in (snap / "data").iterdir())
        _drop_page_cache(snap)
        cold = _once(lambda snap=snap: check_hub_snapshot(snap))
        out["bytes"][label] = {
            "total_bytes": total,
            "check_s": _best(lambda snap=snap: check_hub_snapshot(snap)),
            "check_cold_s": cold,
        }
    return out


def _arrow_with_shards(datasets_cache: Path, dataset_id: str, snap: Path, n: int) -> Path:
    """An Arrow cache with n shards, written by datasets (one row per shard)."""
    from datasets.data_files import DataFilesDict
    from datasets.packaged_modules.parquet.parquet import Parquet
    from hf_loader.env import CachePaths
    from hf_loader.resolve import arrow_root

    files = {"train": sorted(str(p) for p in (snap / "data").iterdir())}
    b = Parquet(
        cache_dir=str(datasets_cache),
        dataset_name=dataset_id.split("/")[-1],
        config_name="default",
        hash=snap.name,
        data_files=DataFilesDict.from_local_or_remote(files, base_path="/"),
        writer_batch_size=1,
    )
    paths = CachePaths(datasets_cache.parent, datasets_cache, Path("/nonexistent"))
    out = arrow_root(paths, dataset_id) / "default" / "0.0.0" / snap.name
    b.download_and_prepare(output_dir=str(out), max_shard_size=1)
    return out


def _drop_page_cache(path: Path) -> None:
    """Evict the files from the page cache where allowed (posix_fadvise DONTNEED)."""
    for f in path.rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _once(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _best(fn, n: int = 5) -> float:
    return min(_once(fn) for _ in range(n))


def _cli_check(home: Path, dataset_id: str) -> float:
    exe = Path(sys.executable).with_name("hf-cache-test")
    # Without the installed entry point (hf_loader on PYTHONPATH only) the module runs the same CLI.
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "hf_loader.cachetest"]
    env = dict(os.environ, HF_HOME=str(home))
    t = time.perf_counter()
    p = subprocess.run([*command, dataset_id, "--batches", "0", "--json"], env=env, capture_output=True)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(p.stdout.decode()[-2000:])
    return wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--quality", type=int, default=95)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="400 images, 1 rep (smoke run)")
    ap.add_argument("--skip-checks", action="store_true")
    ap.add_argument("--json-out", help="also write the results as JSON here")
    args = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    if args.quick:
        args.images, args.reps = 400, 1

    from hf_loader import fixtures
    from hf_loader.resolve import load_split, resolve

    with tempfile.TemporaryDirectory(prefix="hf-loader-bench-") as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        jpegs = imagenet_like(args.images, args.quality)
        sizes = [Image.open(io.BytesIO(b)).size for b in jpegs[:500]]
        kb = statistics.mean(len(b) for b in jpegs) / 1024
        dataset_id = "bench/imagenet-like"
        home = root / "hf"
        n = len(jpegs)
        labels = [i % 10 for i in range(n)]
        snap = fixtures.make_hub_snapshot(
            home / "hub",
            dataset_id,
            {"train": (jpegs, labels)},
            [f"c{i}" for i in range(10)],
            shards=4,
        )
        fixtures.make_arrow_cache(home / "datasets", dataset_id, snap)
        from hf_loader.env import CachePaths

        paths = CachePaths(home, home / "datasets", home / "hub")
        ds = load_split(resolve(dataset_id, paths=paths), "train")
        print(
            f"data: {n} JPEGs from {len(photos())} shipped photographs, mean "
            f"{statistics.mean(s[0] for s in sizes):.0f}x{statistics.mean(s[1] for s in sizes):.0f}"
            f" px, quality {args.quality}, mean {kb:.1f} KB; built in "
            f"{time.perf_counter() - t:.1f} s"
        )
        load = os.getloadavg()[0]
        print(
            f"machine: {os.cpu_count()} CPUs, load average {load:.1f} at start; batch "
            f"{args.batch_size}; medians of {args.reps} interleaved runs"
        )
        res = {"data": {"images": n, "quality": args.quality, "mean_kb": kb}}
        tp = bench_throughput(args, ds)
        res["throughput"] = tp
        names = ["baseline", "float", "uint8", "uint8 full", "uint8 no ring"]
        hdr = f"{'workers':>8}" + "".join(f"{n:>14}" for n in names)
        hdr += "".join(f"{'x ' + n:>16}" for n in names[1:])
        for title, key, ratio in (
            ("train loader images/s (wall, after the first batch)", "images_per_s_median", "ratio"),
            ("images per CPU-second (process + workers; robust to other load)", "images_per_cpu_s_median", "cpu_ratio"),
        ):
            print(f"\n{title}")
            print(hdr)
            for w, r in tp.items():
                m = r[key]
                print(
                    f"{w:>8}"
                    + "".join(f"{m[n]:>14.0f}" for n in names)
                    + "".join(f"{r[ratio][n]:>15.2f}x" for n in names[1:])
                )
        limit = decode_limit(jpegs, args.reps)
        res["decode_limit"] = limit
        print("\ndecode only, one core, images/s (best of 3 passes over the same JPEGs)")
        for name, ips in limit.items():
            if name != "limit":
                print(f"  {name:<30} {ips:>8.0f}")
        two = tp.get(2)
        if two:
            ratio = two["ratio"]["uint8"]
            print(
                f"\nCPU goal, uint8 at 2 workers >= 3x baseline: {ratio:.2f}x "
                f"({'met' if ratio >= 3 else 'NOT met'}); decoding the whole image instead: "
                f"{two['ratio']['uint8 full']:.2f}x; new shared memory for every batch: "
                f"{two['ratio']['uint8 no ring']:.2f}x; full-decode limit on 2 cores: "
                f"{2 * limit['limit'] / two['images_per_s_median']['baseline']:.2f}x"
            )
        ttfb = time_to_first_batch(args, home, dataset_id)
        res["time_to_first_batch"] = ttfb
        print(
            f"\ntime to first batch (fresh process: imports + resolve + check + loader, "
            f"{max(args.workers)} workers): {ttfb['process_wall_s_median']:.2f} s wall, "
            f"{ttfb['in_process_s_median']:.2f} s after interpreter start"
        )
        if not args.skip_checks:
            chk = bench_checks(root)
            res["checks"] = chk
            print("\nshallow completeness check (best of 5; cli = hf-cache-test --batches 0 wall)")
            print(f"{'shards':>8} {'hub':>9} {'arrow':>9} {'resolve':>9} {'cli':>9}")
            for s, r in chk["shards"].items():
                print(
                    f"{s:>8} {r['hub_check_s']:>8.3f}s {r['arrow_check_s']:>8.3f}s "
                    f"{r['resolve_s']:>8.3f}s {r['cli_wall_s']:>8.2f}s"
                )
            for label, r in chk["bytes"].items():
                print(
                    f"{label:>12} ({r['total_bytes'] / 1e6:.0f} MB): {r['check_s'] * 1000:.1f} ms "
                    f"(cold cache {r['check_cold_s'] * 1000:.1f} ms)"
                )
        print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(res, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
