"""Build small but real caches with the real libraries (for tests and the benchmark).

- `make_hub_snapshot`: the hub cache layout `datasets--ns--name/{blobs,snapshots/SHA,refs/main}`
  with parquet shards written by `datasets` (`Dataset.to_parquet`), blobs named by sha256
  (LFS files) or git blob sha1 (small files) and relative symlinks, and a README.md dataset
  card with `dataset_info` (features, splits, sizes) and `configs[].data_files`.
- `make_arrow_cache`: the Arrow cache as `datasets` writes it on a by-name hub load
  (`ns___name/CONFIG/VERSION/HASH`, `dataset_info.json`, `name-split[-i-of-n].arrow`),
  written by the parquet builder's own `download_and_prepare`.
- `interrupted_prepare`: a real `*.incomplete` folder, left by a preparing process that is
  killed (`os._exit`) after writing its first split.
- `build_cache`: the three above in one call, ROOT/{hub,datasets}: the one cache builder of the
  project (the package's tests, the lab, the GPU host check), also as a command:
  `python -m hf_loader.fixtures ROOT DATASET --train N --val N [--classes N] [--size WxH]
  [--shards N] [--arrow-shard-bytes N|parquet]`.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import yaml
from PIL import Image, ImageDraw, ImageFilter


def synthetic_jpeg(seed: int, size: tuple[int, int] = (80, 64), quality: int = 90) -> bytes:
    """A small photo-like JPEG (gradients, shapes, blur, noise) encoded by PIL."""
    rng = random.Random(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack(
        [
            (np.sin(x / (5 + rng.random() * 20) + rng.random() * 6) * 60 + 128 + c * 20)
            + (np.cos(y / (5 + rng.random() * 20)) * 50)
            for c in range(3)
        ],
        axis=-1,
    )
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = rng.randrange(w), rng.randrange(h)
        x1, y1 = x0 + rng.randrange(5, w), y0 + rng.randrange(5, h)
        fill = tuple(rng.randrange(256) for _ in range(3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=fill)
    img = img.filter(ImageFilter.GaussianBlur(1.2))
    arr = np.asarray(img).astype(np.int16)
    arr = arr + np.random.default_rng(seed).integers(-12, 12, arr.shape, dtype=np.int16)
    out = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=quality)
    return out.getvalue()


def image_dataset(images: list[bytes], labels: list[int], label_names: list[str]):
    import datasets

    feats = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=label_names)}
    )
    return datasets.Dataset.from_dict(
        {"image": [{"bytes": b, "path": None} for b in images], "label": labels},
        features=feats,
    )


def tiny_splits(
    n_train: int = 12, n_val: int = 6, classes: int = 3, size=(80, 64), seed: int = 0
) -> tuple[dict, list[str]]:
    names = [f"class_{i}" for i in range(classes)]
    splits = {}
    for k, (split, n) in enumerate((("train", n_train), ("validation", n_val))):
        imgs = [synthetic_jpeg(seed * 100000 + k * 10000 + i, size) for i in range(n)]
        splits[split] = (imgs, [i % classes for i in range(n)])
    return splits, names


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # noqa: S324 - git's id


def _card(dataset_id: str, label_names, split_stats, download_size, dataset_size, config):
    info = {
        "features": [
            {"name": "image", "dtype": "image"},
            {
                "name": "label",
                "dtype": {"class_label": {"names": {i: n for i, n in enumerate(label_names)}}},
            },
        ],
        "splits": [
            {"name": s, "num_bytes": nb, "num_examples": ne} for s, (nb, ne) in split_stats.items()
        ],
        "download_size": download_size,
        "dataset_size": dataset_size,
    }
    cfg = {
        "config_name": config,
        "data_files": [{"split": s, "path": f"data/{s}-*"} for s in split_stats],
    }
    if config != "default":
        info["config_name"] = config
    header = yaml.safe_dump({"dataset_info": info, "configs": [cfg]}, sort_keys=False)
    return f"---\n{header}---\n\n# {dataset_id}\n\nTest copy built by hf_loader.fixtures.\n"


def make_hub_snapshot(
    hub_cache,
    dataset_id: str,
    splits: dict,
    label_names: list[str],
    shards: int | dict = 2,
    commit: str | None = None,
    config: str = "default",
) -> Path:
    """Write `HF_HUB_CACHE/datasets--ns--name` with parquet shards; returns the snapshot dir."""
    hub_cache = Path(hub_cache)
    repo = hub_cache / ("datasets--" + dataset_id.replace("/", "--"))
    commit = commit or hashlib.sha1(dataset_id.encode()).hexdigest()
    snap = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    tmp = repo / ".build"
    tmp.mkdir(exist_ok=True)
    stats, download_size, dataset_size = {}, 0, 0
    files: dict[str, bytes] = {}
    for split, (imgs, labels) in splits.items():
        ds = image_dataset(imgs, labels, label_names)
        n = shards[split] if isinstance(shards, dict) else shards
        nbytes = ds.data.nbytes
        stats[split] = (nbytes, len(ds))
        dataset_size += nbytes
        for i in range(n):
            part = tmp / f"{split}-{i:05d}-of-{n:05d}.parquet"
            ds.shard(n, i, contiguous=True).to_parquet(str(part))
            data = part.read_bytes()
            part.unlink()
            files[f"data/{split}-{i:05d}-of-{n:05d}.parquet"] = data
            download_size += len(data)
    tmp.rmdir()
    card = _card(dataset_id, label_names, stats, download_size, dataset_size, config)
    files["README.md"] = card.encode()
    for rel, data in files.items():
        lfs = rel.endswith(".parquet")
        blob = repo / "blobs" / (hashlib.sha256(data).hexdigest() if lfs else _git_blob_sha1(data))
        blob.write_bytes(data)
        link = snap / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs" / "main").write_text(commit)
    return snap


def make_arrow_cache(
    datasets_cache,
    dataset_id: str,
    snapshot,
    config: str = "default",
    hash: str | None = None,
    max_shard_size: int | str | None = None,
) -> Path:
    """Prepare the by-name Arrow cache from a snapshot's parquet files with `datasets` itself."""
    from datasets.data_files import DataFilesDict
    from datasets.packaged_modules.parquet.parquet import Parquet

    snapshot = Path(snapshot)
    data = snapshot / "data"
    files: dict[str, list[str]] = {}
    for f in sorted(os.listdir(data)):
        files.setdefault(f.split("-")[0], []).append(str(data / f))
    name = dataset_id.split("/")[-1]
    hash = hash or snapshot.name
    builder = Parquet(
        cache_dir=str(datasets_cache),
        dataset_name=name,
        config_name=config,
        hash=hash,
        data_files=DataFilesDict.from_local_or_remote(files, base_path="/"),
    )
    from .env import CachePaths
    from .resolve import arrow_root

    paths = CachePaths(Path(datasets_cache).parent, Path(datasets_cache), Path("/nonexistent"))
    out = arrow_root(paths, dataset_id) / config / str(builder.config.version) / hash
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    builder.download_and_prepare(output_dir=str(out), **kwargs)
    return out


_INTERRUPT = r"""
import os, sys, json
args = json.loads(sys.argv[1])
from hf_loader.fixtures import make_arrow_cache
import datasets.builder as b
orig = b.ArrowBasedBuilder._prepare_split
calls = []
def prepare_then_die(self, *a, **k):
    orig(self, *a, **k)
    calls.append(1)
    os._exit(137)  # killed mid-prepare: the *.incomplete folder stays behind
b.ArrowBasedBuilder._prepare_split = prepare_then_die
make_arrow_cache(**args)
"""


def interrupted_prepare(datasets_cache, dataset_id: str, snapshot, hash: str) -> Path:
    """Leave a real `HASH.incomplete` folder: a prepare process dies after its first split."""
    args = {
        "datasets_cache": str(datasets_cache),
        "dataset_id": dataset_id,
        "snapshot": str(snapshot),
        "hash": hash,
    }
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-c", _INTERRUPT, json.dumps(args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 137:
        raise RuntimeError(f"interrupted prepare did not die as planned: {proc.stderr[-2000:]}")
    from .env import CachePaths
    from .resolve import arrow_root

    paths = CachePaths(Path(datasets_cache).parent, Path(datasets_cache), Path("/nonexistent"))
    root = arrow_root(paths, dataset_id) / "default"
    found = list(root.glob(f"*/{hash}.incomplete"))
    if not found:
        raise RuntimeError(f"no {hash}.incomplete under {root}")
    return found[0]


class BuiltCache(NamedTuple):
    snapshot: Path
    arrow: Path
    splits: dict
    names: list[str]


def build_cache(
    root,
    dataset_id: str,
    *,
    n_train: int,
    n_val: int,
    classes: int = 10,
    size: tuple[int, int] = (80, 64),
    shards: int = 2,
    arrow_shard_bytes: int | str | None = None,
) -> BuiltCache:
    """An ImageNet-shaped cache of synthetic JPEGs at ROOT/{hub,datasets}: the hub snapshot
    (`shards` parquet files a split) and its by-name Arrow cache. `arrow_shard_bytes`: the
    Arrow files' largest size (None: `datasets`' default, 500 MB), or "parquet": about as
    large as the train split's parquet shards (the real ImageNet-1k cache's shape)."""
    root = Path(root)
    splits, names = tiny_splits(n_train=n_train, n_val=n_val, classes=classes, size=size)
    snapshot = make_hub_snapshot(root / "hub", dataset_id, splits, names, shards=shards)
    if arrow_shard_bytes == "parquet":
        arrow_shard_bytes = sum(map(len, splits["train"][0])) // shards
    arrow = make_arrow_cache(
        root / "datasets", dataset_id, snapshot, max_shard_size=arrow_shard_bytes
    )
    return BuiltCache(snapshot, arrow, splits, names)


def _size(text: str) -> tuple[int, int]:
    width, _, height = text.partition("x")
    try:
        return int(width), int(height)
    except ValueError:
        raise argparse.ArgumentTypeError(f"WIDTHxHEIGHT, e.g. 96x80, not {text!r}") from None


def _shard_bytes(text: str) -> int | str:
    if text == "parquet":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number of bytes or 'parquet', not {text!r}") from None


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m hf_loader.fixtures",
        description="Build a small ImageNet-shaped cache with the real libraries: "
        "ROOT/{hub,datasets}.",
    )
    p.add_argument("root", type=Path, help="the cache root: hub/ and datasets/ under it")
    p.add_argument("dataset", help="the dataset id, e.g. ILSVRC/imagenet-1k")
    p.add_argument("--train", type=int, required=True, help="train images")
    p.add_argument("--val", type=int, required=True, help="validation images")
    p.add_argument("--classes", type=int, default=10, help="ClassLabel names (default 10)")
    p.add_argument("--size", type=_size, default=(80, 64), help="JPEG WIDTHxHEIGHT (default 80x64)")
    p.add_argument("--shards", type=int, default=2, help="parquet shards a split (default 2)")
    p.add_argument(
        "--arrow-shard-bytes",
        type=_shard_bytes,
        default=None,
        help="Arrow files' largest size in bytes, or 'parquet': about a train parquet shard's size "
        "(default: the datasets library's own)",
    )
    args = p.parse_args(argv)
    built = build_cache(
        args.root,
        args.dataset,
        n_train=args.train,
        n_val=args.val,
        classes=args.classes,
        size=args.size,
        shards=args.shards,
        arrow_shard_bytes=args.arrow_shard_bytes,
    )
    # `datasets` leaves lock files named after the build path beside the cache: not data.
    for lock in (args.root / "datasets").glob("*.lock"):
        lock.unlink()
    print(f"cache written {args.root}: {built.snapshot} {built.arrow}", flush=True)
    # Leave without interpreter teardown: parquet reader threads still winding down then can
    # abort the process ("terminate called without an active exception", apache/arrow#45214).
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
