"""Completeness checks of cached copies, without reading the data.

Shallow (default): one `stat` and one tail read of a few bytes per file, so the cost grows
with the number of files, not with bytes:
- Arrow cache: `dataset_info.json` present and parseable; every split's shard files (named
  from `shard_lengths`, as `datasets` names them) present, non-empty and ending with the
  Arrow stream end-of-stream marker (a truncated copy does not).
- Hub snapshot: no dangling symlinks (blob missing), the dataset card's splits each have
  files, `-NNNNN-of-MMMMM` shard sets are complete, parquet files end with `PAR1`, and the
  total size is not below the card's `download_size`.

Deep (`deep=True`): also reads Arrow/parquet metadata to count rows against the recorded
`num_examples`/`shard_lengths`, and hashes LFS blobs against their sha256 names, in a thread
pool with a progress bar.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ARROW_EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"
PARQUET_MAGIC = b"PAR1"
_SHARD_RE = re.compile(r"-(\d{5})-of-(\d{5})")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_UU = re.compile(r"([A-Z]+)([A-Z][a-z])")
_LU = re.compile(r"([a-z\d])([A-Z])")


def snake(name: str) -> str:
    """`datasets.naming.camelcase_to_snakecase` (kept here to avoid importing datasets)."""
    return _LU.sub(r"\1_\2", _UU.sub(r"\1_\2", name)).lower()


def arrow_split_files(directory: Path, dataset_name: str, split: str, shard_lengths) -> list[Path]:
    """File names `datasets` writes for a split (`datasets.naming.filenames_for_dataset_split`)."""
    prefix = f"{snake(dataset_name)}-{split}"
    if shard_lengths and len(shard_lengths) > 1:
        n = len(shard_lengths)
        return [directory / f"{prefix}-{i:05d}-of-{n:05d}.arrow" for i in range(n)]
    return [directory / f"{prefix}.arrow"]


# Problem kinds, which decide the remedy: a copy whose only problems are permissions is
# fixed with chmod/chown, never deleted or re-synced.
MISSING, PERMISSION, CORRUPT, SPECIAL, METADATA = (
    "missing",
    "permission",
    "corrupt",
    "special",
    "metadata",
)


@dataclass
class Problem:
    path: str
    message: str
    kind: str = CORRUPT

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class SplitReport:
    name: str
    files: list[str] = field(default_factory=list)
    bytes: int = 0
    rows_expected: int | None = None
    rows_found: int | None = None
    shard_rows_expected: list | None = None


@dataclass
class CheckReport:
    kind: str  # "arrow" or "hub"
    path: str
    splits: dict[str, SplitReport] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    files_checked: int = 0
    deep: bool = False
    card: dict = field(default_factory=dict)
    # splits the dataset card records but whose files were never downloaded (a snapshot
    # fetched with allow_patterns); usable for the other splits, reported as a warning
    missing_splits: list[str] = field(default_factory=list)
    files_hashed: int = 0
    # deep mode: plain data files (not blob links) with no blob or manifest to hash against
    unverified: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, path, message: str, kind: str = CORRUPT) -> None:
        self.problems.append(Problem(str(path), message, kind))

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "path": self.path,
            "ok": self.ok,
            "deep": self.deep,
            "files_checked": self.files_checked,
            "files_hashed": self.files_hashed,
            "unverified": list(self.unverified),
            "splits": {
                n: {
                    "files": len(s.files),
                    "bytes": s.bytes,
                    "rows_expected": s.rows_expected,
                    "rows_found": s.rows_found,
                }
                for n, s in self.splits.items()
            },
            "problems": [str(p) for p in self.problems],
            "missing_splits": list(self.missing_splits),
        }


class NotRegularFileError(OSError):
    """A FIFO, device, socket or folder where a file belongs (reading it could block)."""


_FILE_TYPES = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a folder",
}


def open_regular(path) -> int:
    """A read-only descriptor of a regular file; anything else raises before a read.

    O_NONBLOCK makes opening a FIFO return at once instead of waiting for a writer; the
    type is then checked on the descriptor itself, so nothing can be swapped in between.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        what = _FILE_TYPES.get(stat.S_IFMT(mode), "not a regular file")
        raise NotRegularFileError(f"is {what}, not a regular file")
    os.set_blocking(fd, True)
    return fd


def read_regular(path) -> bytes:
    with os.fdopen(open_regular(path), "rb") as f:
        return f.read()


def _tail(path: Path, n: int) -> tuple[int, bytes]:
    """Size and last n bytes of a file (opens it: an unreadable file raises here)."""
    with os.fdopen(open_regular(path), "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size >= n:
            f.seek(size - n)
        return size, f.read(n)


def add_os_error(report: CheckReport, path, error: OSError, what: str) -> None:
    """One problem for a file that could not be read, of the kind that decides the fix."""
    if isinstance(error, FileNotFoundError):
        if os.path.islink(path):
            report.add(path, f"dangling symlink to {os.readlink(path)} (blob missing)", MISSING)
        else:
            report.add(path, f"missing {what}", MISSING)
    elif isinstance(error, PermissionError):
        report.add(path, "not readable by this user (permission denied)", PERMISSION)
    elif isinstance(error, NotRegularFileError):
        report.add(path, f"{error}; expected {what}", SPECIAL)
    else:
        report.add(path, f"cannot read: {error.strerror or error}")


def _check_file(report: CheckReport, path: Path, magic: bytes, what: str) -> int | None:
    report.files_checked += 1
    try:
        size, tail = _tail(path, len(magic))
    except OSError as e:
        add_os_error(report, path, e, what)
        return None
    if size == 0:
        report.add(path, f"empty {what}")
    elif tail != magic:
        report.add(path, f"truncated or corrupt {what} (no end marker, {size} bytes)")
    return size


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="file", disable=not enabled, leave=False)


def _parallel(fn, items, desc: str, workers: int | None, progress: bool) -> list:
    results = [None] * len(items)
    with ThreadPoolExecutor(max_workers=workers or min(8, (os.cpu_count() or 1) * 2)) as pool:
        futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
        with _progress(len(items), desc, progress) as bar:
            from concurrent.futures import as_completed

            for fut in as_completed(futures):
                i = futures[fut]
                try:
                    results[i] = fut.result()
                except Exception as e:  # noqa: BLE001 - reported as a problem per file
                    results[i] = e
                bar.update(1)
    return results


def _arrow_rows(path: Path) -> int:
    import pyarrow as pa

    with pa.memory_map(str(path), "r") as source:
        reader = pa.ipc.open_stream(source)
        return sum(batch.num_rows for batch in reader)


def _parquet_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.read_metadata(str(path)).num_rows


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with os.fdopen(open_regular(path), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- Arrow cache


def read_dataset_info(directory: Path, report: CheckReport) -> dict | None:
    """The parsed `dataset_info.json`, or None with a problem naming the file.

    Valid JSON of the wrong shape (`null`, a list, a split that is `null`, a count that is
    not an integer) is a problem too: `datasets` would fail on it later, or worse, not.
    """
    info_path = directory / "dataset_info.json"
    report.files_checked += 1
    try:
        info = json.loads(read_regular(info_path).decode("utf-8"))
    except FileNotFoundError:
        report.add(
            info_path, "missing dataset_info.json (split list and shard counts unknown)", MISSING
        )
        return None
    except OSError as e:
        add_os_error(report, info_path, e, "dataset_info.json")
        return None
    except ValueError as e:
        report.add(info_path, f"invalid JSON: {e}", METADATA)
        return None
    shape_problems = dataset_info_shape_problems(info)
    for problem in shape_problems:
        report.add(info_path, f"malformed metadata: {problem}", METADATA)
    return None if shape_problems else info


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def dataset_info_shape_problems(info) -> list[str]:
    """What is wrong with the shape of a parsed `dataset_info.json` ([] when nothing)."""
    if not isinstance(info, dict):
        return [f"the top level is {type(info).__name__}, not an object"]
    problems = []
    for key in ("dataset_name", "builder_name"):
        if info.get(key) is not None and not isinstance(info[key], str):
            problems.append(f"'{key}' is {type(info[key]).__name__}, not a string")
    splits = info.get("splits")
    if not isinstance(splits, dict):
        return problems + [f"'splits' is {type(splits).__name__}, not an object of splits"]
    for name, split in splits.items():
        if not isinstance(split, dict):
            problems.append(f"split '{name}' is {type(split).__name__}, not an object")
            continue
        if split.get("num_examples") is not None and not _is_count(split["num_examples"]):
            problems.append(f"split '{name}': num_examples is not a count")
        lengths = split.get("shard_lengths")
        if lengths is not None and not (
            isinstance(lengths, list) and all(_is_count(n) for n in lengths)
        ):
            problems.append(f"split '{name}': shard_lengths is not a list of counts")
    return problems


def check_arrow_dir(
    directory, *, deep: bool = False, workers: int | None = None, progress: bool = False
) -> CheckReport:
    """Check one `ns___name/CONFIG/VERSION/HASH` folder written by `datasets`."""
    directory = Path(directory)
    report = CheckReport(kind="arrow", path=str(directory), deep=deep)
    if directory.name.endswith(".incomplete"):
        report.add(directory, "interrupted prepare (*.incomplete folder)")
        return report
    try:
        entries = list(os.scandir(directory))
    except PermissionError:
        report.add(
            directory,
            "folder not readable/searchable by this user (permission denied)",
            PERMISSION,
        )
        return report
    except FileNotFoundError:
        report.add(directory, "folder does not exist", MISSING)
        return report
    except OSError as e:
        add_os_error(report, directory, e, "folder")
        return report
    for entry in entries:  # `datasets` writes no links: one out of the folder is refused
        if entry.is_symlink():
            dest = _link_destination(Path(entry.path))
            if dest is None or dest.parent != directory:
                report.add(
                    entry.path,
                    f"symlink to {os.readlink(entry.path)}, outside the copy (hf-cache-manifest "
                    "refuses it too)",
                    CORRUPT,
                )
    info = read_dataset_info(directory, report)
    if info is None:
        return report
    name = info.get("dataset_name") or info.get("builder_name") or ""
    splits = info["splits"]
    if not splits:
        report.add(directory / "dataset_info.json", "records no splits", METADATA)
    rows_jobs = []
    for split_name, s in splits.items():
        sr = SplitReport(name=split_name, rows_expected=s.get("num_examples"))
        lengths = s.get("shard_lengths")
        sr.shard_rows_expected = lengths
        for i, path in enumerate(arrow_split_files(directory, name, split_name, lengths)):
            size = _check_file(report, path, ARROW_EOS, "Arrow shard")
            sr.files.append(str(path))
            if size is not None:
                sr.bytes += size
                expected = lengths[i] if lengths and len(lengths) > 1 else sr.rows_expected
                rows_jobs.append((split_name, path, expected))
        report.splits[split_name] = sr
    if deep and rows_jobs:
        results = _parallel(
            lambda job: _arrow_rows(job[1]), rows_jobs, "rows (arrow)", workers, progress
        )
        _apply_row_counts(report, rows_jobs, results)
    return report


def _apply_row_counts(report: CheckReport, jobs, results) -> None:
    found: dict[str, int] = {}
    for (split_name, path, expected), res in zip(jobs, results, strict=True):
        if isinstance(res, Exception):
            report.add(path, f"metadata unreadable: {res}")
            continue
        found[split_name] = found.get(split_name, 0) + res
        if expected is not None and report.kind == "arrow" and res != expected:
            report.add(path, f"{res} rows, dataset_info.json records {expected}")
    for split_name, sr in report.splits.items():
        if split_name in found:
            sr.rows_found = found[split_name]
            if sr.rows_expected is not None and sr.rows_found != sr.rows_expected:
                report.add(
                    sr.files[0] if sr.files else report.path,
                    f"split '{split_name}' has {sr.rows_found} rows, "
                    f"metadata records {sr.rows_expected}",
                )


# --------------------------------------------------------------------------- hub snapshot


def read_card(snapshot: Path, report: CheckReport | None = None) -> dict:
    """YAML header of the dataset card (README.md), {} if none."""
    path = snapshot / "README.md"
    try:
        text = read_regular(path).decode("utf-8", errors="replace")
    except FileNotFoundError as e:  # no card at all is reported by the caller
        if report is not None and os.path.islink(path):
            add_os_error(report, path, e, "dataset card")
        return {}
    except OSError as e:
        if report is not None:
            add_os_error(report, path, e, "dataset card")
        return {}
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    if end < 0:
        return {}
    try:
        data = yaml.safe_load(text[3:end]) or {}
    except yaml.YAMLError as e:
        if report is not None:
            report.add(path, f"dataset card YAML invalid: {e}", METADATA)
        return {}
    if not isinstance(data, dict):
        if report is not None:
            report.add(path, "malformed metadata: the card's header is not a mapping", METADATA)
        return {}
    shape = card_shape_problems(data)
    if shape:
        if report is not None:
            for problem in shape:
                report.add(path, f"malformed metadata: {problem}", METADATA)
        return {}
    return data


def _strings(value) -> bool:
    return isinstance(value, str) or (
        isinstance(value, list) and all(isinstance(v, str) for v in value)
    )


def card_shape_problems(card: dict) -> list[str]:
    """What in the card's `configs` and `dataset_info` entries has a shape no reader expects
    (a config or split name that is not a string, data file patterns that are not strings)."""
    problems = []
    for key in ("configs", "dataset_info"):
        entries = card.get(key)
        entries = [entries] if isinstance(entries, dict) else entries
        if entries is None:
            continue
        if not isinstance(entries, list):
            problems.append(f"'{key}' is {type(entries).__name__}, not a list")
            continue
        for entry in entries:
            if not isinstance(entry, dict):
                continue  # skipped by every reader
            name = entry.get("config_name")
            if name is not None and not isinstance(name, str):
                problems.append(f"'{key}' config_name {name!r} is not a string")
            spec = entry.get("data_files") if key == "configs" else None
            if spec is None or isinstance(spec, str):
                continue
            if isinstance(spec, dict):
                spec = [{"split": k, "path": v} for k, v in spec.items()]
            if not isinstance(spec, list):
                problems.append(f"data_files of config {name!r} is {type(spec).__name__}")
                continue
            for item in spec:
                if isinstance(item, dict) and not (
                    isinstance(item.get("split", "train"), str) and _strings(item.get("path"))
                ):
                    problems.append(
                        f"data_files entry {item!r} of config {name!r}: its split must be a "
                        "string and its path a string or a list of strings"
                    )
    return problems


def card_config(card: dict, config: str | None) -> tuple[dict | None, dict | None]:
    """(configs entry, dataset_info entry) for a config name (None: default/only one)."""

    def pick(entries):
        if isinstance(entries, dict):
            entries = [entries]
        if not isinstance(entries, list):
            return None
        entries = [e for e in entries if isinstance(e, dict)]
        if not entries:
            return None
        for e in entries:
            if (e.get("config_name") or "default") == (config or "default"):
                return e
        if config is None:
            defaults = [e for e in entries if e.get("default")]
            return defaults[0] if defaults else (entries[0] if len(entries) == 1 else None)
        return None

    return pick(card.get("configs")), pick(card.get("dataset_info"))


def card_config_names(card: dict) -> list[str]:
    entries = card.get("configs") or card.get("dataset_info") or []
    if isinstance(entries, dict):
        entries = [entries]
    return [e.get("config_name") or "default" for e in entries if isinstance(e, dict)]


def _walk(root: Path, report: CheckReport) -> list[str]:
    """Relative paths of all files/symlinks under root (skips .git/.cache); reports errors."""
    out: list[str] = []
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            entries = list(os.scandir(d))
        except PermissionError:
            report.add(
                d, "folder not readable/searchable by this user (permission denied)", PERMISSION
            )
            continue
        except OSError as e:
            add_os_error(report, d, e, "folder")
            continue
        for e in entries:
            if e.name in (".git", ".cache", ".huggingface"):
                continue
            # A folder named like a data file stands where a data file belongs: listed, so
            # that it is opened, found to be a folder and named, not taken for a missing file.
            if e.is_dir(follow_symlinks=False) and not e.name.endswith(_DATA_EXT):
                stack.append(Path(e.path))
            else:
                out.append(os.path.relpath(e.path, root))
    return sorted(out)


_DEFAULT_SPLIT_PATTERNS = {
    "train": ["data/train-*", "data/train/*", "train-*", "train/*", "*train*"],
    "validation": ["data/validation-*", "data/validation/*", "validation-*", "*validation*"],
    "test": ["data/test-*", "data/test/*", "test-*", "*test*"],
}
_DATA_EXT = (".parquet", ".arrow", ".jsonl", ".json", ".csv", ".tar")


def split_data_files(card: dict, config: str | None, files: list[str]) -> dict[str, list[str]]:
    """Map split -> relative data files, from the card's `configs[].data_files` patterns."""
    cfg, _ = card_config(card, config)
    data = [f for f in files if f.endswith(_DATA_EXT)]
    result: dict[str, list[str]] = {}
    if cfg and cfg.get("data_files"):
        spec = cfg["data_files"]
        if isinstance(spec, str):
            spec = [{"split": "train", "path": spec}]
        elif isinstance(spec, dict):
            spec = [{"split": k, "path": v} for k, v in spec.items()]
        for entry in spec:
            if not isinstance(entry, dict):
                continue
            pats = entry.get("path")
            pats = [pats] if isinstance(pats, str) else pats or []
            pats = [p for p in pats if isinstance(p, str)]
            matched = sorted({f for f in data for p in pats if fnmatch.fnmatchcase(f, p)})
            result[entry.get("split", "train")] = matched
        return result
    for split, pats in _DEFAULT_SPLIT_PATTERNS.items():
        for p in pats:
            matched = [f for f in data if fnmatch.fnmatchcase(f, p)]
            if matched:
                result[split] = matched
                break
    return result


def card_recorded_splits(info: dict | None, report: CheckReport, card_path: Path) -> dict:
    """split name -> the card's record of it; records of the wrong shape are problems."""
    if not info:
        return {}
    splits = info.get("splits")
    if splits is None:
        return {}
    if isinstance(splits, dict):
        entries = [dict(s, name=n) if isinstance(s, dict) else (n, s) for n, s in splits.items()]
    elif isinstance(splits, list):
        entries = splits
    else:
        report.add(card_path, "malformed metadata: dataset_info.splits is not a list", METADATA)
        return {}
    recorded = {}
    for entry in entries:
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            if entry.get("num_examples") is not None and not _is_count(entry["num_examples"]):
                report.add(
                    card_path,
                    f"malformed metadata: split '{entry['name']}' num_examples is not a count",
                    METADATA,
                )
                continue
            recorded[entry["name"]] = entry
        else:
            report.add(
                card_path,
                f"malformed metadata: dataset_info.splits entry {entry!r} is not a named split",
                METADATA,
            )
    return recorded


def check_hub_snapshot(
    snapshot,
    config: str | None = None,
    *,
    deep: bool = False,
    workers: int | None = None,
    progress: bool = False,
) -> CheckReport:
    """Check a `datasets--ns--name/snapshots/SHA` folder against its dataset card."""
    snapshot = Path(snapshot)
    report = CheckReport(kind="hub", path=str(snapshot), deep=deep)
    files = _walk(snapshot, report)
    card = read_card(snapshot, report)
    report.card = card
    _, info = card_config(card, config)
    by_split = split_data_files(card, config, files)
    recorded = card_recorded_splits(info, report, snapshot / "README.md")
    if not card:
        report.add(snapshot / "README.md", "no dataset card with dataset_info: splits unverifiable")
    for split in recorded:
        if not by_split.get(split):
            report.missing_splits.append(split)
    by_split = {k: v for k, v in by_split.items() if v}
    if not by_split:
        report.add(snapshot, "no data files found in the snapshot")
    _check_snapshot_links(report, snapshot, files)
    # dangling symlinks anywhere (not only data files)
    data_set = {f for fs in by_split.values() for f in fs}
    for rel in files:
        if rel not in data_set and rel != "README.md":
            p = snapshot / rel
            if os.path.islink(p) and not os.path.exists(p):
                report.add(p, f"dangling symlink to {os.readlink(p)} (blob missing)")
    total = 0
    jobs = []
    for split, rels in by_split.items():
        s = recorded.get(split) or {}
        sr = SplitReport(name=split, rows_expected=s.get("num_examples"))
        shard_sets: dict[tuple[str, int], set[int]] = {}
        for rel in rels:
            p = snapshot / rel
            sr.files.append(str(p))
            magic = PARQUET_MAGIC if rel.endswith(".parquet") else b""
            size = _check_file(report, p, magic, "parquet shard" if magic else "data file")
            if size is not None:
                sr.bytes += size
                if magic:
                    jobs.append((split, p, None))
            m = _SHARD_RE.search(rel)
            if m:
                key = (rel[: m.start()], rel[m.end() :], int(m.group(2)))
                shard_sets.setdefault(key, set()).add(int(m.group(1)))
        for (stem, suffix, n), present in shard_sets.items():
            missing = sorted(set(range(n)) - present)
            for i in missing:
                report.add(
                    snapshot / f"{stem}-{i:05d}-of-{n:05d}{suffix}",
                    f"shard {i} of {n} of split '{split}' missing",
                    MISSING,
                )
        total += sr.bytes
        report.splits[split] = sr
    if (
        info
        and not report.missing_splits
        and isinstance(info.get("download_size"), int)
        and total < info["download_size"]
    ):
        report.add(
            snapshot,
            f"data files total {total} bytes, the dataset card records download_size "
            f"{info['download_size']}: files are missing or truncated",
        )
    if deep:
        if jobs:
            results = _parallel(
                lambda job: _parquet_rows(job[1]), jobs, "rows (parquet)", workers, progress
            )
            _apply_row_counts(report, jobs, results)
        _hash_snapshot_files(report, snapshot, files, data_set, workers, progress)
    return report


def _link_destination(path: Path) -> Path | None:
    """Where a symlink leads, normalized as written (as `hf-cache-manifest` reads it); None
    for an absolute target."""
    target = os.readlink(path)
    return None if os.path.isabs(target) else Path(os.path.normpath(path.parent / target))


def _check_snapshot_links(report: CheckReport, snapshot: Path, files: list[str]) -> None:
    """Each symlink must lead to a blob of this repository (a regular file) or into the
    snapshot: what `hf-cache-manifest write` accepts. A link out of the copy loads files that
    no blob or manifest vouches for, and seeding would publish it."""
    blobs_dir = snapshot.parent.parent / "blobs"
    for rel in files:
        path = snapshot / rel
        try:
            if not os.path.islink(path):
                continue
            dest = _link_destination(path)
        except OSError as e:
            add_os_error(report, path, e, "symlink")
            continue
        if dest is None:
            report.add(
                path,
                f"symlink with an absolute target {os.readlink(path)}: it leads out of the "
                "copy (hf-cache-manifest refuses it too)",
                CORRUPT,
            )
        elif dest.parent == blobs_dir:
            try:
                mode = os.lstat(dest).st_mode
            except FileNotFoundError:
                continue  # a dangling link: reported with the file it stands for
            except OSError as e:
                add_os_error(report, dest, e, "blob")
                continue
            if not stat.S_ISREG(mode):
                what = "a symlink" if stat.S_ISLNK(mode) else _FILE_TYPES.get(stat.S_IFMT(mode))
                report.add(dest, f"blob is {what or 'not a regular file'}, not a file", SPECIAL)
        elif not (dest == snapshot or str(dest).startswith(str(snapshot) + "/")):
            report.add(
                path,
                f"symlink to {os.readlink(path)}, outside the copy (neither a blob of this "
                "repository nor a file of the snapshot; hf-cache-manifest refuses it too)",
                CORRUPT,
            )


def _git_blob_sha1(path: Path) -> str:
    """git's object name of a file (sha1 of 'blob SIZE\\0' + content): how small files that
    are not LFS files (the card, small data files) are named in blobs/."""
    with os.fdopen(open_regular(path), "rb") as f:
        h = hashlib.sha1(f"blob {os.fstat(f.fileno()).st_size}\0".encode(), usedforsecurity=False)
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


_SHA1_RE = re.compile(r"^[0-9a-f]{40}$")


def _expected_digest(snapshot: Path, rel: str, blob_names: set[str]) -> tuple[str, object]:
    """How a snapshot file is checked: ("sha256", name) or ("git", name) when it links to a
    blob of this repository, by the blob's name; ("any", names) for anything else (a plain
    copy, `cp -rL`/`rsync -L`, or a link to a file of the snapshot): its sha256 must be one of
    the LFS blob names beside the snapshot; ("none", None) when there are none."""
    path = snapshot / rel
    if os.path.islink(path):
        dest = _link_destination(path)
        if dest is not None and dest.parent == snapshot.parent.parent / "blobs":
            if _SHA256_RE.match(dest.name):
                return "sha256", dest.name
            if _SHA1_RE.match(dest.name):
                return "git", dest.name
    return ("any", blob_names) if blob_names else ("none", None)


def _hash_snapshot_files(
    report: CheckReport, snapshot: Path, files: list[str], data_set: set, workers, progress
) -> None:
    """Every data file is hashed against a blob, or counted in `unverified`: none is skipped."""
    blobs_dir = snapshot.parent.parent / "blobs"
    blob_names = {n for n in listdir_or_empty(blobs_dir) if _SHA256_RE.match(n)}
    refused = {p.path for p in report.problems}
    jobs = []
    for rel in files:
        path = snapshot / rel
        if str(path) in refused or (os.path.islink(path) and not os.path.exists(path)):
            continue  # already a problem (a link out of the copy, a dangling link)
        how, expected = _expected_digest(snapshot, rel, blob_names)
        if rel not in data_set and how not in ("sha256", "git"):
            continue  # a small file that is no blob link (e.g. .gitattributes copied plain)
        if how == "none":
            report.unverified.append(str(path))
        else:
            jobs.append((path, how, expected))

    def digest(job):
        return _git_blob_sha1(job[0]) if job[1] == "git" else _sha256(job[0])

    digests = _parallel(digest, jobs, "sha256", workers, progress)
    for (path, how, expected), digest in zip(jobs, digests, strict=True):
        report.files_hashed += 1
        if isinstance(digest, OSError):
            add_os_error(report, path, digest, "data file")
        elif isinstance(digest, Exception):
            report.add(path, f"cannot hash: {digest}")
        elif how in ("sha256", "git") and digest != expected:
            kind = "git object name" if how == "git" else "sha256"
            report.add(path, f"{kind} {digest} does not match its blob name {expected}")
        elif how == "any" and digest not in expected:
            report.add(
                path,
                f"plain copy with sha256 {digest}, which no LFS blob in {blobs_dir} has: "
                "changed or truncated since it was copied",
            )


def listdir_or_empty(path: Path) -> list[str]:
    """Sorted names in a folder; [] when it cannot be listed (the callers report that)."""
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []
