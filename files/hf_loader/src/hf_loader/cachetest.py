"""`hf-cache-test`: is this host ready to train offline? Exit 0 only when it is.

Stages: environment (cache variables, paths, offline mode) -> cache (resolution and
completeness) -> loading (N batches through the real DataLoader, images/s).
All findings are reported; the exit code is that of the first failing stage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass, field

from .env import OFFLINE_VARS, CachePaths, force_offline, offline_disabled_by_user
from .errors import (
    EXIT_ENVIRONMENT,
    EXIT_INTERNAL,
    EXIT_READY,
    EXIT_USAGE,
    HFLoaderError,
    LoadingFailedError,
)

DEFAULT_DATASET = "ILSVRC/imagenet-1k"

EXIT_CODES_HELP = """exit codes:
  0  ready: environment sane, a complete copy found, batches loaded
  1  internal error (a bug: please report it with the output)
  2  usage error (bad arguments)
  3  not cached: no copy of the dataset id in the Arrow or hub cache
  4  incomplete or corrupt: a copy exists but files are missing, truncated,
     dangling, unreadable, or an interrupted (*.incomplete) prepare only
  5  environment misconfigured: cache variables point to missing/unreadable
     folders, or offline mode is switched off (a false HF_DATASETS_OFFLINE)
  6  loading failed: the cache looked complete but the DataLoader failed
when several stages fail, the code is that of the first: environment, cache, loading"""


@dataclass
class Finding:
    level: str  # "ok", "warn", "fail"
    stage: str  # "environment", "cache", "loading"
    message: str
    path: str | None = None
    remedy: str | None = None
    exit_code: int = 0

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class Result:
    dataset: str
    findings: list[Finding] = field(default_factory=list)
    paths: dict = field(default_factory=dict)
    resolution: dict | None = None
    loading: dict | None = None
    error: dict | None = None

    def add(self, *a, **k) -> Finding:
        f = Finding(*a, **k)
        self.findings.append(f)
        return f

    @property
    def exit_code(self) -> int:
        order = {"environment": 0, "cache": 1, "loading": 2, "internal": 3}
        fails = sorted(
            (f for f in self.findings if f.level == "fail"), key=lambda f: order[f.stage]
        )
        return fails[0].exit_code if fails else EXIT_READY

    def to_dict(self) -> dict:
        return {
            "dataset": self.dataset,
            "ready": self.exit_code == EXIT_READY,
            "exit_code": self.exit_code,
            "paths": self.paths,
            "findings": [f.to_dict() for f in self.findings],
            "resolution": self.resolution,
            "loading": self.loading,
            "error": self.error,
        }


def _probe_dir(path) -> str | None:
    """None if the folder exists and can be listed, else the reason."""
    try:
        os.listdir(path)
    except FileNotFoundError:
        return "does not exist"
    except NotADirectoryError:
        return "is not a folder"
    except PermissionError:
        return "is not readable/searchable by this user"
    return None


def check_environment(result: Result, paths: CachePaths) -> None:
    env = os.environ
    disabled = offline_disabled_by_user()
    if disabled:
        shown = ", ".join(f"{n}={env.get(n)}" for n in disabled)
        result.add(
            "fail",
            "environment",
            f"{shown} switches offline mode off: plain `datasets` calls retry the network "
            "for ~25 s and fail on hub-only caches (hf_loader forces offline in its own "
            "process)",
            remedy="set HF_DATASETS_OFFLINE=1 and HF_HUB_OFFLINE=1 (or remove the variable) in "
            "the host environment, e.g. /etc/environment or the training user's profile",
            exit_code=EXIT_ENVIRONMENT,
        )
    elif not any(env.get(n) for n in OFFLINE_VARS):
        result.add(
            "warn",
            "environment",
            "HF_DATASETS_OFFLINE/HF_HUB_OFFLINE not set: hf_loader forces offline mode in its "
            "own process, other tools would try the network",
            remedy="set HF_DATASETS_OFFLINE=1 and HF_HUB_OFFLINE=1 in the host environment",
        )
    else:
        result.add(
            "ok",
            "environment",
            "offline mode on ("
            + ", ".join(f"{n}={env[n]}" for n in OFFLINE_VARS if env.get(n))
            + ")",
        )
    if not any(env.get(v) for v in ("HF_HOME", "HF_DATASETS_CACHE", "HF_HUB_CACHE")):
        result.add(
            "warn",
            "environment",
            f"no cache variable set; using the default {paths.hf_home}",
            path=str(paths.hf_home),
            remedy="set HF_HOME (or HF_DATASETS_CACHE and HF_HUB_CACHE) to the mounted cache "
            "volume",
        )
    present = []
    for label, p, var in (
        ("Arrow cache", paths.datasets_cache, paths.sources["datasets_cache"]),
        ("hub cache", paths.hub_cache, paths.sources["hub_cache"]),
    ):
        why = _probe_dir(p)
        if why is None:
            present.append(p)
            result.add("ok", "environment", f"{label} folder {p} ({var})", path=str(p))
        elif why == "does not exist" and var == "default":
            result.add("warn", "environment", f"{label} folder {p} {why}", path=str(p))
        else:
            remedy = (
                f"mount the cache volume or fix {var}"
                if why == "does not exist"
                else "give the training user read and search (x) permission on the folder"
            )
            result.add(
                "fail",
                "environment",
                f"{label} folder {p} ({var}) {why}",
                path=str(p),
                remedy=remedy,
                exit_code=EXIT_ENVIRONMENT,
            )
    if not present and not any(f.level == "fail" for f in result.findings):
        result.add(
            "fail",
            "environment",
            f"neither cache folder exists ({paths.datasets_cache}, {paths.hub_cache})",
            path=str(paths.hf_home),
            remedy="mount the cache volume and set HF_HOME (or HF_DATASETS_CACHE/HF_HUB_CACHE)",
            exit_code=EXIT_ENVIRONMENT,
        )


def _error_finding(result: Result, stage: str, err: HFLoaderError) -> None:
    result.add(
        "fail", stage, err.message, path=err.path, remedy=err.remedy, exit_code=err.exit_code
    )
    result.error = err.to_dict()


def run(args: argparse.Namespace) -> Result:
    result = Result(dataset=args.dataset)
    paths = CachePaths.from_env()
    result.paths = paths.to_dict()
    check_environment(result, paths)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        force_offline()  # before datasets/huggingface_hub are imported below

    from .resolve import load_split, resolve

    try:
        res = resolve(
            args.dataset,
            args.config,
            args.revision,
            paths=paths,
            allow_convert=args.allow_convert,
            deep=args.deep,
            progress=args.progress,
        )
    except HFLoaderError as e:
        _error_finding(result, "cache", e)
        return result
    result.resolution = res.to_dict()
    for s in res.skipped:
        result.add(
            "warn",
            "cache",
            f"skipped {s.reason}",
            path=s.path,
            remedy="delete or repair it so plain `datasets` loads cannot pick it",
        )
    for note in res.notes:
        result.add("warn", "cache", note, path=res.path)
    result.add(
        "ok",
        "cache",
        f"complete {res.source} copy ({res.mode}), config '{res.config}', splits "
        f"{', '.join(res.splits)}, {res.report.files_checked} files checked"
        + (
            " (deep: rows "
            + ", ".join(f"{n}={s.rows_found}" for n, s in res.report.splits.items())
            + ")"
            if args.deep
            else ""
        ),
        path=res.path,
    )
    if args.batches <= 0:
        return result
    try:
        result.loading = load_batches(res, args, load_split)
        result.add(
            "ok",
            "loading",
            f"{result.loading['batches']} batches of {args.split}: "
            f"{result.loading['images_per_s']:.0f} images/s, first batch after "
            f"{result.loading['first_batch_s']:.2f} s",
            path=res.path,
        )
    except HFLoaderError as e:
        _error_finding(result, "loading", e)
    except Exception as e:  # noqa: BLE001 - any failure while reading is a loading failure
        err = LoadingFailedError(
            f"reading {args.split} through the DataLoader failed: {type(e).__name__}: {e}",
            path=res.path,
            remedy="the files named look complete but do not decode: run with --deep, restore "
            "the shards it names, or check that the workers have enough shared memory (/dev/shm)",
        )
        _error_finding(result, "loading", err)
    return result


def load_batches(res, args, load_split) -> dict:
    from .data import LoaderConfig, build_dataloader

    ds = load_split(res, args.split)
    cfg = LoaderConfig(
        batch_size=args.batch_size,
        workers=args.workers,
        persistent_workers=False,
        drop_last_train=False,
    )
    t0 = time.perf_counter()
    loader = build_dataloader(ds, train=args.split == "train", cfg=cfg, rank=0, world_size=1)
    n_images, n_batches, first = 0, 0, None
    shape = None
    for x, y in loader:
        if first is None:
            first = time.perf_counter() - t0
            t1 = time.perf_counter()
        shape = list(x.shape)
        if x.shape[0] != y.shape[0]:
            raise LoadingFailedError(
                f"batch images/labels mismatch {x.shape} vs {y.shape}",
                path=res.path,
                remedy="report this as a bug",
            )
        n_images += x.shape[0]
        n_batches += 1
        if n_batches >= args.batches:
            break
    if n_batches == 0:
        raise LoadingFailedError(
            f"split {args.split} yielded no batch",
            path=res.path,
            remedy="the split is empty: check the copy with --deep",
        )
    steady = time.perf_counter() - t1
    later = n_images - shape[0] if n_batches > 1 else n_images
    return {
        "split": args.split,
        "batches": n_batches,
        "images": n_images,
        "batch_shape": shape,
        "dtype": str(x.dtype),
        "first_batch_s": first,
        "images_per_s": later / steady if n_batches > 1 and steady > 0 else n_images / first,
        "workers": args.workers,
    }


def render(result: Result) -> str:
    mark = {"ok": "OK  ", "warn": "WARN", "fail": "FAIL"}
    lines = [f"hf-cache-test {result.dataset}"]
    for f in result.findings:
        lines.append(f"[{mark[f.level]}] {f.stage}: {f.message}")
        if f.path and f.path not in f.message:
            lines.append(f"       path: {f.path}")
        if f.remedy and f.level != "ok":
            lines.append(f"       fix:  {f.remedy}")
    if result.error:
        for key in ("looked", "near_misses", "problems"):
            items = result.error.get(key) or []
            if items:
                lines.append(f"       {key.replace('_', ' ')}:")
                lines.extend(f"         - {i}" for i in items[:20])
    code = result.exit_code
    lines.append("READY (exit 0)" if code == 0 else f"NOT READY (exit {code})")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hf-cache-test",
        description="Check offline that this host can load a Hugging Face image dataset: "
        "environment, cache completeness, and real batches through the DataLoader.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "dataset",
        nargs="?",
        default=os.environ.get("HF_LOADER_DATASET", DEFAULT_DATASET),
        help="dataset id, exactly as loaded (default: %(default)s)",
    )
    p.add_argument("--config", help="dataset config name (default: 'default' or the only one)")
    p.add_argument("--revision", help="commit sha of the hub snapshot / Arrow hash folder")
    p.add_argument("--split", default="train", help="split to pull batches from")
    p.add_argument("--batches", type=int, default=3, help="batches to load (0: no loading)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    p.add_argument(
        "--deep",
        action="store_true",
        help="also count rows in parquet/Arrow metadata and hash LFS blobs",
    )
    p.add_argument(
        "--allow-convert",
        action="store_true",
        help="convert a hub snapshot to Arrow once if free space covers it",
    )
    p.add_argument("--json", action="store_true", help="machine-readable JSON on stdout")
    p.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bar for --deep"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as e:  # argparse: 0 for --help, 2 for usage errors
        return int(e.code or 0) if e.code in (0, None) else EXIT_USAGE
    if args.json:
        args.progress = False
    try:
        result = run(args)
    except Exception as e:  # noqa: BLE001 - report, never a bare traceback
        result = Result(dataset=args.dataset)
        result.add(
            "fail",
            "internal",
            f"{type(e).__name__}: {e}",
            remedy="report this with the full output",
            exit_code=EXIT_INTERNAL,
        )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
    else:
        print(render(result))
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
