"""`hf-cache-test`: is this host ready to train offline? Exit 0 only when it is.

Stages: environment (the cache volume mounted, with --require-mount; cache variables,
paths, offline mode) -> cache (resolution and completeness) -> loading (N batches through
the real DataLoader, images/s). All findings are reported; the exit code is that of the
first failing stage. A volume that is not mounted skips the cache and loading stages: what
they would find is the folder beneath the mount point, not the dataset volume.
The test never writes into a cache: the libraries' locks go to a folder of its own.
"""

from __future__ import annotations

import argparse
import os
import shlex
import stat
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from . import report
from .cli import output
from .cli.exitcodes import CACHE_TEST, ExitCode
from .cli.output import Finding, Findings
from .configfile import load_config_file
from .env import (
    OFFLINE_VARS,
    CachePaths,
    filesystem_of,
    force_offline,
    mount_unit_name,
    mounted_at,
    offline_disabled_by_user,
    read_mounts,
    scratch_dir,
)
from .errors import (
    ConfigError,
    HFLoaderError,
    LoadingFailedError,
    OutputLocationError,
)

DEFAULT_DATASET = "ILSVRC/imagenet-1k"


@dataclass
class Result(Findings):
    STAGE_ORDER = {"usage": 0, "environment": 1, "cache": 2, "loading": 3, "internal": 4}

    dataset: str
    findings: list[Finding] = field(default_factory=list)
    paths: dict = field(default_factory=dict)
    resolution: dict | None = None
    loading: dict | None = None
    error: dict | None = None

    @property
    def verdict(self) -> str:
        if self.exit_code != ExitCode.READY:
            return "not_ready"
        return "ready_with_warnings" if any(f.level == "warn" for f in self.findings) else "ready"

    def to_dict(self) -> dict:
        return {
            "schema_version": report.SCHEMA_VERSION,
            "dataset": self.dataset,
            "ready": self.exit_code == ExitCode.READY,
            "verdict": self.verdict,
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
    except OSError as e:  # a link loop, a name too long, an I/O error
        return f"cannot be listed ({e.strerror or e})"
    return None


def _check_offline_mode(result: Result, paths: CachePaths) -> None:
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
            exit_code=ExitCode.ENVIRONMENT,
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


def check_environment(result: Result, paths: CachePaths) -> list[Finding]:
    """Offline mode and the cache folders. Returns the warnings about a missing cache folder:
    they become failures only if the dataset is then found in no cache (see `run`)."""
    _check_offline_mode(result, paths)
    home = paths.hf_home
    try:
        home_is_file = not stat.S_ISDIR(os.stat(home).st_mode)
    except OSError:  # missing or unreachable: said of each cache folder below
        home_is_file = False
    if home_is_file:
        result.add(
            "fail",
            "environment",
            f"HF_HOME {home} ({paths.sources['HF_HOME']}) is a file, not a folder",
            path=str(home),
            remedy="point HF_HOME at the cache folder on the mounted volume",
            exit_code=ExitCode.ENVIRONMENT,
        )
        return []
    present, missing = [], []
    for label, p, var in (
        ("Arrow cache", paths.datasets_cache, paths.sources["datasets_cache"]),
        ("hub cache", paths.hub_cache, paths.sources["hub_cache"]),
    ):
        why = _probe_dir(p)
        if why is None:
            present.append(p)
            result.add("ok", "environment", f"{label} folder {p} ({var})", path=str(p))
        elif why == "does not exist":
            remedy = f"mount the cache volume or fix {var}" if var != "default" else None
            missing.append(
                result.add(
                    "warn", "environment", f"{label} folder {p} ({var}) {why}", str(p), remedy
                )
            )
        else:
            remedy = (
                f"fix {var}: it must name a folder"
                if why == "is not a folder"
                else "give the training user read and search (x) permission on the folder"
            )
            result.add(
                "fail",
                "environment",
                f"{label} folder {p} ({var}) {why}",
                path=str(p),
                remedy=remedy,
                exit_code=ExitCode.ENVIRONMENT,
            )
    if not present and not any(f.level == "fail" for f in result.findings):
        result.add(
            "fail",
            "environment",
            f"neither cache folder exists ({paths.datasets_cache}, {paths.hub_cache})",
            path=str(paths.hf_home),
            remedy="mount the cache volume and set HF_HOME (or HF_DATASETS_CACHE/HF_HUB_CACHE)",
            exit_code=ExitCode.ENVIRONMENT,
        )
        return []
    return missing


def _within(folder: str, path: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def mount_holds_cache(mount: str, paths: CachePaths) -> str | None:
    """The cache folder that the mount point `mount` holds (HF_HOME, or the Arrow cache when
    both cache folders are below it but HF_HOME is not), or None: it is not the cache root or
    above it. Compared as written and with symlinks resolved."""
    for view in (os.path.abspath, os.path.realpath):
        top = view(mount)
        if _within(top, view(str(paths.hf_home))):
            return str(paths.hf_home)
        if all(_within(top, view(str(p))) for p in (paths.datasets_cache, paths.hub_cache)):
            return str(paths.datasets_cache)
    return None


def _folder_state(path: str) -> str:
    """What a plain folder holds, said for a message; reads only its names."""
    try:
        names = sorted(os.listdir(path))
    except FileNotFoundError:
        return "does not exist"
    except NotADirectoryError:
        return "is a file"
    except PermissionError:
        return "is a folder that this user may not read"
    if not names:
        return "is an empty folder"
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return f"is a plain folder (holding {shown})"


def check_mount(result: Result, mount: str, cache: str) -> bool:
    """--require-mount: True when `mount` is a mount point, else a failure (exit 5) that says
    why the cache folder is not the volume's and how to mount it. Reads, never writes."""
    mounts = read_mounts()
    mounted, entry = mounted_at(mount, mounts)
    if mounted:
        what = f" ({entry.fstype} from {entry.source})" if entry else ""
        result.add("ok", "environment", f"dataset volume mounted at {mount}{what}", path=mount)
        return True
    unit = shlex.quote(mount_unit_name(mount))
    remedy = (
        f"mount it (mount {shlex.quote(mount)}; see systemctl status {unit} and "
        f"journalctl -b -u {unit}) or rerun the dataset_volume role"
    )
    state = _folder_state(mount)
    if state == "does not exist":
        message = (
            f"{mount} does not exist, so it is not a mount point: the dataset volume is not "
            "mounted (its mount point is missing too)"
        )
        remedy = (
            f"rerun the dataset_volume role, which creates the mount point and mounts the volume "
            f"(see systemctl status {unit} and journalctl -b -u {unit})"
        )
    elif state == "is a file":
        message = f"{mount} is not a folder, so it is not a mount point: no volume is mounted there"
        remedy = (
            "set --require-mount (hf_loader_cache_mount_point) to the dataset volume's mount "
            "point; if it is that, move the file away and rerun the dataset_volume role"
        )
    else:
        where = filesystem_of(mount, mounts)
        on = (
            "the root filesystem"
            if where == "/"
            else f"the filesystem mounted at {where}"
            if where
            else "the filesystem of its parent folder"
        )
        if os.path.realpath(cache) == os.path.realpath(mount):
            subject = f"the cache folder {state}"
        else:
            subject = f"the cache folder {cache} {_folder_state(cache)}"
        message = (
            f"{mount} is not a mount point: the dataset volume is not mounted, so {subject} on {on}"
        )
    result.add(
        "fail", "environment", message, path=mount, remedy=remedy, exit_code=ExitCode.ENVIRONMENT
    )
    return False


def run(args: argparse.Namespace, result: Result) -> None:
    try:
        paths = CachePaths.from_env()
    except HFLoaderError as e:  # no home folder to find the default cache in
        result.fail("environment", e)
        return
    result.paths = paths.to_dict()
    mount = getattr(args, "require_mount", None)
    mounted = True
    if mount:
        cache = mount_holds_cache(mount, paths)
        if cache is None:
            err = ConfigError(
                f"--require-mount {mount} is neither the cache root {paths.hf_home} "
                f"({paths.sources['HF_HOME']}) nor one of its parents, so its mount says nothing "
                "of the cache",
                path=mount,
                remedy=f"pass the dataset volume's mount point that holds {paths.hf_home} "
                "(hf_loader_cache_mount_point), or fix HF_HOME",
            )
            result.fail("usage", err)
            return
        mounted = check_mount(result, mount, cache)  # first: the cause of what follows
    missing_folders = check_environment(result, paths)
    if not mounted:
        result.add(
            "note",
            "cache",
            f"cache and loading not checked: until {mount} is mounted, the cache folder is not "
            "the dataset volume's",
        )
        return
    try:  # the libraries' locks and temporary files: never the cache, never the working folder
        scratch_dir(avoid=[paths.hf_home, paths.datasets_cache, paths.hub_cache])
    except HFLoaderError as e:
        result.fail("environment", e)
        return
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        force_offline()  # before datasets/huggingface_hub are imported below

    from .resolve import load_split, resolve

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # every warning is also in the resolution's notes
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
        stage = "usage" if isinstance(e, ConfigError) else "cache"
        result.fail(stage, e)
        if e.exit_code == ExitCode.NOT_CACHED:
            for finding in missing_folders:  # the missing folder is the likely cause
                finding.level, finding.exit_code = "fail", ExitCode.ENVIRONMENT
        return
    result.resolution = res.to_dict()
    for s in res.skipped:
        remedy = (
            "give the training user read access to it (chmod -R a+rX, or chown): its files "
            "are there, only unreadable"
            if s.permissions_only
            else "repair it (restore the files named), or move it out of the cache, so that "
            "plain `datasets` loads cannot pick it"
        )
        result.add("warn", "cache", f"passed over a broken copy: {s.reason}", s.path, remedy)
    for note in res.notes:
        result.add("warn", "cache", note, path=res.path)
    for info in res.infos:
        result.add("note", "cache", info, path=res.path)
    _report_copy(result, res, args.deep)
    if args.batches == 0:
        result.add("note", "loading", "--batches 0: no batch loaded")
        return
    try:
        result.loading = load_batches(res, args, load_split)
        result.add(
            "ok",
            "loading",
            f"{result.loading['batches']} batches of {args.split}: "
            f"{result.loading['images_per_s']:.0f} images/s, first batch after "
            f"{result.loading['first_batch_s']:.2f} s ({result.loading['decoder']} decode, "
            f"{result.loading['workers']} workers)",
            path=res.path,
        )
    except HFLoaderError as e:
        result.fail("loading", e)
    except Exception as e:  # noqa: BLE001 - any failure while reading is a loading failure
        err = LoadingFailedError(
            f"reading {args.split} through the DataLoader failed: {type(e).__name__}: {e}",
            path=res.path,
            remedy="the files named look complete but do not decode: run with --deep, restore "
            "the shards it names, or check that the workers have enough shared memory (/dev/shm)",
        )
        result.fail("loading", err)


def _report_copy(result: Result, res, deep: bool) -> None:
    check = res.report
    detail = ""
    if deep:
        rows = ", ".join(f"{n}={s.rows_found}" for n, s in check.splits.items())
        not_hashed = (
            f", {len(check.unverified)} data files not checkable against a blob"
            if check.unverified
            else ""
        )
        if res.source == "arrow":
            not_hashed = ", no blob to hash Arrow shards against: rows counted"
        detail = f" (deep: rows {rows}; {check.files_hashed} files hashed{not_hashed})"
    result.add(
        "ok",
        "cache",
        f"complete {res.source} copy ({res.mode}), config '{res.config}', splits "
        f"{', '.join(res.splits)}, {check.files_checked} files checked{detail}",
        path=res.path,
    )
    if deep and check.unverified:
        result.add(
            "warn",
            "cache",
            f"{len(check.unverified)} data files could not be checked against a blob: plain "
            "copies with no blobs/ folder beside them, so no hash to check them against (row "
            "counts were checked, the bytes were not)",
            path=check.unverified[0],
            remedy="copy the snapshot with its blobs/ folder (rsync -a, cp -a: keep the links)",
        )


def _shuffle_buffer(res, args: argparse.Namespace, default: int) -> int:
    """A streaming shuffle buffer that leaves rows unread in each worker's shards after the
    batches the test takes: when a stream ends, `datasets` sleeps ~5 s at thread shutdown
    (its SLEEP_TIME_ON_THREADS_SHUTDOWN) before the rows still in the buffer come out, and
    that sleep would be timed as the first batch. Datasets too small for that get none."""
    split_report = res.report.splits.get(args.split)
    rows = split_report.rows_expected if split_report else None
    if not rows:
        return default
    streams = max(1, min(args.workers, len(split_report.files)))
    batches_per_stream = -(-args.batches // max(1, args.workers))
    unread = rows // streams - batches_per_stream * args.batch_size - 1
    return max(0, min(default, unread))


def load_batches(res, args, load_split) -> dict:
    from .data import LoaderConfig, build_dataloader
    from .transforms import DECODER

    ds = load_split(res, args.split)
    cfg = LoaderConfig(
        batch_size=args.batch_size,
        workers=args.workers,
        persistent_workers=False,
        drop_last_train=False,
        shuffle_buffer=_shuffle_buffer(res, args, LoaderConfig.shuffle_buffer),
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
        # timed here: leaving the loop finalizes the stream, and `datasets` may sleep then
        last = time.perf_counter()
        if n_batches >= args.batches:
            break
    if n_batches == 0:
        raise LoadingFailedError(
            f"split {args.split} yielded no batch",
            path=res.path,
            remedy="the split is empty: check the copy with --deep",
        )
    steady = last - t1
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
        "decoder": DECODER,
    }


def render(result: Result) -> str:
    mark = {"ok": "OK  ", "note": "NOTE", "warn": "WARN", "fail": "FAIL"}
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
    verdict = {"ready": "READY", "ready_with_warnings": "READY, with warnings"}
    lines.append(f"{verdict.get(result.verdict, 'NOT READY')} (exit {code})")
    return "\n".join(lines)


# --------------------------------------------------------------------------- arguments


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print and exit; --json must still answer
        raise ConfigError(message, remedy=f"see {self.prog} --help")


def _count(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below {minimum}")
        return value

    return parse


def _absolute_path(text: str) -> str:
    if not text.startswith("/"):
        raise argparse.ArgumentTypeError(f"'{text}' is not an absolute path")
    return "/" + os.path.normpath(text).lstrip("/")


def add_dataset_arguments(p: argparse.ArgumentParser) -> None:
    """The dataset id, and the config and revision that pick its copy (both CLIs)."""
    p.add_argument(
        "dataset",
        nargs="?",
        default=os.environ.get("HF_LOADER_DATASET", DEFAULT_DATASET),
        help="dataset id, exactly as loaded (default: %(default)s)",
    )
    p.add_argument("--config", help="dataset config name (default: 'default' or the only one)")
    p.add_argument("--revision", help="commit sha of the hub snapshot / Arrow hash folder")


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="hf-cache-test",
        description="Check offline that this host can load a Hugging Face image dataset: "
        "environment, cache completeness, and real batches through the DataLoader.",
        epilog=CACHE_TEST.epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_dataset_arguments(p)
    p.add_argument("--split", default="train", help="split to pull batches from")
    p.add_argument(
        "--batches", type=_count(0), default=3, help="batches to load (0: check the cache only)"
    )
    p.add_argument("--batch-size", type=_count(1), default=32)
    p.add_argument(
        "--workers",
        type=_count(0),
        default=2,
        help="DataLoader workers (capped at this host's CPUs, with a note)",
    )
    p.add_argument(
        "--deep",
        action="store_true",
        help="also count rows in parquet/Arrow metadata and hash hub files against their blobs",
    )
    p.add_argument(
        "--allow-convert",
        action="store_true",
        help="convert a hub snapshot to Arrow once if free space covers it and the cache is "
        "writable (else stream it, with a note)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable JSON on stdout")
    p.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bar for --deep"
    )
    p.add_argument(
        "--config-file",
        type=Path,
        metavar="FILE",
        help="YAML mapping of these options (long names, '_' for '-'); flags override it",
    )
    p.add_argument(
        "--report",
        type=Path,
        metavar="FILE",
        help="also write the report (the --json object with host, time, command) atomically",
    )
    p.add_argument(
        "--metrics-dir",
        type=Path,
        metavar="DIR",
        help="also write DIR/hf_cache_test.prom for node_exporter's textfile collector",
    )
    p.add_argument(
        "--require-mount",
        type=_absolute_path,
        metavar="PATH",
        help="fail (exit 5) unless PATH, the dataset volume's mount point (the cache root or a "
        "folder above it), is a mount point; the cache is then not checked",
    )
    p.add_argument(
        "--require-ready",
        type=Path,
        metavar="FILE",
        help="run no test: exit 0 only if FILE is a valid report of this host that says ready "
        "(the training unit's gate)",
    )
    p.add_argument(
        "--max-age",
        type=_seconds,
        metavar="AGE",
        help="with --require-ready: a report older than AGE (seconds, or 30m, 12h, 7d) "
        "keeps the gate closed",
    )
    return p


CONFIG_FILE_KEYS = (
    "dataset",
    "config",
    "revision",
    "split",
    "batches",
    "batch_size",
    "workers",
    "deep",
    "allow_convert",
    "report",
    "metrics_dir",
    "require_mount",
)


def _config_file_defaults(p: argparse.ArgumentParser, path: Path) -> dict:
    """The config file's options, each checked as its flag would be."""
    values = {}
    actions = {a.dest: a for a in p._actions}
    for key, value in load_config_file(str(path), CONFIG_FILE_KEYS).items():
        action = actions[key]
        if isinstance(action, argparse._StoreTrueAction):
            if not isinstance(value, bool):
                raise ConfigError(f"'{key}' must be true or false, not {value!r}", path=str(path))
        elif value is not None:
            if isinstance(value, (bool, dict, list)):
                raise ConfigError(f"'{key}' must be a single value, not {value!r}", path=str(path))
            try:
                value = action.type(str(value)) if action.type else str(value)
            except argparse.ArgumentTypeError as e:
                raise ConfigError(f"'{key}': {e}", path=str(path)) from None
        values[key] = value
    return values


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = parser()
    args = p.parse_args(argv)
    if args.config_file:
        p.set_defaults(**_config_file_defaults(p, args.config_file))
        args = p.parse_args(argv)
    if args.json:
        args.progress = False
    return args


def _cap_workers(args: argparse.Namespace, result: Result) -> None:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if cpus and args.workers > cpus:
        result.add(
            "note",
            "loading",
            f"--workers {args.workers} capped at {cpus}, the CPUs this process may use",
        )
        args.workers = cpus


def _within(folder: str, path: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _check_output(folder: Path, flag: str, target: Path, caches: list[str]) -> None:
    """An output folder that exists, is writable and lies outside the caches, checked before
    the test: a READY test must not end in a failed write (exit 2 naming the flag)."""
    uid = os.geteuid()
    try:
        is_dir = stat.S_ISDIR(os.stat(folder).st_mode)
    except FileNotFoundError:
        raise OutputLocationError(
            f"{flag} {target}: the folder {folder} does not exist",
            path=str(folder),
            remedy=f"create {folder} (writable by uid {uid}), or pass another {flag}",
        ) from None
    except OSError as e:
        raise OutputLocationError(
            f"{flag} {target}: the folder {folder} cannot be reached ({e.strerror})",
            path=str(folder),
            remedy=f"give uid {uid} search permission on the folders above it, or pass another "
            f"{flag}",
        ) from None
    if not is_dir:
        raise OutputLocationError(
            f"{flag} {target}: {folder} is not a folder",
            path=str(folder),
            remedy=f"pass a {flag} in an existing folder",
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputLocationError(
            f"{flag} {target}: the folder {folder} is not writable by this user (uid {uid}, or "
            "a read-only filesystem)",
            path=str(folder),
            remedy=f"make {folder} writable by uid {uid}, or pass another {flag}",
        )
    if os.path.isdir(target) and target != folder:
        raise OutputLocationError(
            f"{flag} {target} is a folder, not a file",
            path=str(target),
            remedy=f"pass a file name for {flag}",
        )
    real = os.path.realpath(folder)
    cache = next((c for c in caches if _within(os.path.realpath(c), real)), None)
    if cache:
        raise OutputLocationError(
            f"{flag} {target} lies in the cache folder {cache}: the cache test never writes "
            "into a cache",
            path=str(target),
            remedy=f"pass a {flag} outside the cache (e.g. under /var/lib/hf-loader)",
        )


def check_outputs(args: argparse.Namespace) -> None:
    """--report and --metrics-dir: OutputLocationError (exit 2) before any test is run."""
    try:
        paths = CachePaths.from_env()
        caches = [str(paths.hf_home), str(paths.datasets_cache), str(paths.hub_cache)]
    except HFLoaderError:
        caches = []  # reported by the environment stage
    if args.report:
        report_path = Path(os.path.abspath(args.report))
        _check_output(report_path.parent, "--report", report_path, caches)
    if args.metrics_dir:
        folder = Path(os.path.abspath(args.metrics_dir))
        _check_output(folder, "--metrics-dir", folder / report.METRICS_FILE, caches)


def _write_failed(result: Result, what: str, path, error: OSError) -> None:
    result.add(
        "fail",
        "environment",
        f"cannot write the {what} {path}: {error.strerror or error}",
        path=str(path),
        remedy="free space in its folder and keep it writable by this user, then rerun",
        exit_code=ExitCode.ENVIRONMENT,
    )


def emit(result: Result, args: argparse.Namespace | None, argv: list[str], as_json: bool) -> None:
    """Write the report and metrics (a failed write is a finding, exit 5), then print."""
    if args is not None and (args.report or args.metrics_dir):
        stored = report.stamp(result.to_dict(), [parser().prog, *argv])
        if args.report:
            try:
                report.write_atomic(args.report, output.as_json(stored) + "\n")
            except OSError as e:
                _write_failed(result, "report", args.report, e)
                stored = report.stamp(result.to_dict(), [parser().prog, *argv])
        if args.metrics_dir:
            target = args.metrics_dir / report.METRICS_FILE
            try:
                report.write_atomic(target, report.metrics_text(stored))
            except OSError as e:
                _write_failed(result, "metrics file", target, e)
    text = output.as_json(result.to_dict()) if as_json else render(result)
    output.emit(text, flush=True, reader_may_leave=True)


def _seconds(text: str) -> int:
    """A duration: whole seconds, or a number with s, m, h or d."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        value = int(number)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a duration (seconds, or a number with s, m, h, d)"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is below 1 second")
    return value * units[unit]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    result = Result(dataset=os.environ.get("HF_LOADER_DATASET", DEFAULT_DATASET))
    try:
        args = parse_args(argv)
        if args.max_age is not None and not args.require_ready:
            raise ConfigError("--max-age applies only to --require-ready FILE")
        if not args.require_ready:
            check_outputs(args)
    except SystemExit as e:  # --help
        return output.parser_exit_code(e)
    except ConfigError as e:  # the parser's, the config file's, the output folders'
        result.fail("usage", e)
        emit(result, None, argv, "--json" in argv)
        return result.exit_code
    if args.require_ready:
        code, line = report.require_ready(args.require_ready, max_age=args.max_age)
        print(line, file=sys.stdout if code == ExitCode.READY else sys.stderr)
        return code
    result.dataset = args.dataset
    try:
        _cap_workers(args, result)
        run(args, result)
    except Exception as e:  # noqa: BLE001 - report, never a bare traceback
        result.fail_unexpected(e, keep_host_error=False)
    emit(result, args, argv, args.json)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
