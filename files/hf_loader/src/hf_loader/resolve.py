"""Offline resolution of a dataset id to a local copy, and loading it.

Order: (a) a complete Arrow cache for exactly the id (`HF_DATASETS_CACHE/ns___name/CONFIG/
VERSION/HASH`), newest complete copy first, `*.incomplete` and broken copies skipped and
reported; (b) the hub-cache snapshot (`snapshot_download(..., local_files_only=True)`),
read in streaming mode, or converted once to Arrow (by-name layout, so plain `datasets`
finds it afterwards) when allowed and the free space covers it; (c) `NotCachedError` with
every place looked, near misses and the fix. Offline mode is forced on first; no token.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from .check import (
    CORRUPT,
    METADATA,
    MISSING,
    PERMISSION,
    SPECIAL,
    CheckReport,
    add_os_error,
    card_config,
    card_config_names,
    check_arrow_dir,
    check_hub_snapshot,
    listdir_or_empty,
    open_regular,
    read_card,
)
from .env import CachePaths, force_offline, scratch_dir
from .errors import (
    EnvironmentMisconfiguredError,
    HFLoaderError,
    IncompleteCacheError,
    InvalidDatasetIdError,
    InvalidRevisionError,
    NotCachedError,
)

log = logging.getLogger(__name__)

_ID_RE = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
_NOT_DATASETS = {"downloads", "hub", "modules"}


class ConversionSkippedWarning(UserWarning):
    """Conversion to Arrow was allowed but not done (not enough free space); streaming instead."""


def arrow_root(paths: CachePaths, dataset_id: str) -> Path:
    from .check import snake

    parts = dataset_id.split("/")
    parts[-1] = snake(parts[-1])
    return paths.datasets_cache / "___".join(parts)


def hub_repo_dir(paths: CachePaths, dataset_id: str) -> Path:
    return paths.hub_cache / ("datasets--" + dataset_id.replace("/", "--"))


@dataclass
class Skipped:
    path: str
    reason: str
    permissions_only: bool = False

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class Resolution:
    dataset_id: str
    config: str
    revision: str | None
    source: str  # "arrow" or "hub"
    path: str  # Arrow HASH folder or hub snapshot folder
    mode: str  # "arrow", "streaming" (hub read as a stream), "converted" (hub -> Arrow now)
    report: CheckReport
    skipped: list[Skipped] = field(default_factory=list)
    looked: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # warnings: something to fix
    infos: list[str] = field(default_factory=list)  # what was done or not done, nothing to fix

    @property
    def splits(self) -> list[str]:
        return list(self.report.splits)

    def to_dict(self) -> dict:
        return {
            "dataset_id": self.dataset_id,
            "config": self.config,
            "revision": self.revision,
            "source": self.source,
            "path": self.path,
            "mode": self.mode,
            "splits": self.splits,
            "skipped": [str(s) for s in self.skipped],
            "looked": self.looked,
            "notes": self.notes,
            "infos": self.infos,
            "check": self.report.to_dict(),
        }


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0


def cached_ids(paths: CachePaths) -> dict[str, list[str]]:
    """Every dataset id present in either cache -> the folders holding it."""
    found: dict[str, list[str]] = {}
    for name in listdir_or_empty(paths.datasets_cache):
        p = paths.datasets_cache / name
        if name.startswith((".", "_")) or name in _NOT_DATASETS or not p.is_dir():
            continue
        found.setdefault(name.replace("___", "/", 1), []).append(str(p))
    for name in listdir_or_empty(paths.hub_cache):
        if name.startswith("datasets--"):
            found.setdefault(name[len("datasets--") :].replace("--", "/", 1), []).append(
                str(paths.hub_cache / name)
            )
    return found


def _norm(s: str) -> str:
    return re.sub(r"[^a-z0-9]", "", s.lower())


def cached_id(near_miss: str) -> str:
    """The id of a `near_misses` entry ("'ns/name' at FOLDERS")."""
    return near_miss.split("'")[1]


def near_misses(paths: CachePaths, dataset_id: str) -> list[str]:
    """Cached ids that are probably what the user meant (other namespace, case, -/_)."""
    want_full = _norm(dataset_id)
    want_name = _norm(dataset_id.split("/")[-1])
    out = []
    for cid, folders in sorted(cached_ids(paths).items()):
        if cid == dataset_id:
            continue
        if _norm(cid) == want_full or _norm(cid.split("/")[-1]) == want_name:
            out.append(f"'{cid}' at {', '.join(folders)}")
    return out


def _subfolders(folder: Path, report: CheckReport) -> list[Path]:
    """The folders in `folder` ([] when it is missing); every EACCES is a permission problem
    in `report`, never an empty listing (a copy this user may not read is not "not cached")."""
    try:
        names = sorted(os.listdir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as e:
        _folder_error(report, folder, e)
        return []
    out = []
    for name in names:
        path = folder / name
        try:
            if stat.S_ISDIR(os.stat(path).st_mode):
                out.append(path)
        except FileNotFoundError:
            continue  # a dangling link: not a folder
        except OSError as e:
            _folder_error(report, folder if isinstance(e, PermissionError) else path, e)
            return out
    return out


def _arrow_candidates(
    paths: CachePaths, dataset_id: str, config: str | None, revision: str | None
) -> tuple[list[Path], list[Skipped], list[str], CheckReport]:
    root = arrow_root(paths, dataset_id)
    unreadable = CheckReport(kind="arrow", path=str(root))
    candidates, skipped = [], []
    if config:  # looked up by name: a root this user may search but not list still works
        try:
            cfg_dirs = [root / config] if stat.S_ISDIR(os.stat(root / config).st_mode) else []
        except (FileNotFoundError, NotADirectoryError):
            cfg_dirs = []
        except OSError as e:
            _folder_error(unreadable, root, e)
            cfg_dirs = []
    else:
        cfg_dirs = _subfolders(root, unreadable)
    for cfg_dir in cfg_dirs:
        for vdir in _subfolders(cfg_dir, unreadable):
            for d in _subfolders(vdir, unreadable):
                h = d.name
                if h.endswith(".incomplete"):
                    skipped.append(Skipped(str(d), "interrupted prepare (*.incomplete), ignored"))
                    continue
                if revision and h != revision:
                    skipped.append(Skipped(str(d), f"other revision than {revision}"))
                    continue
                candidates.append(d)
    configs_found = sorted({c.parent.parent.name for c in candidates})
    return candidates, skipped, configs_found, unreadable


@dataclass
class _Search:
    """One resolution under way: what is asked, and what was looked at, passed over and found
    broken so far (the error at the end names all of it)."""

    dataset_id: str
    config: str | None
    revision: str | None
    paths: CachePaths
    deep: bool
    progress: bool
    looked: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    broken: list[CheckReport] = field(default_factory=list)
    arrow_candidates: list[Path] = field(default_factory=list)


def resolve(
    dataset_id: str,
    config: str | None = None,
    revision: str | None = None,
    *,
    paths: CachePaths | None = None,
    allow_convert: bool = False,
    convert_headroom: float = 1.1,
    deep: bool = False,
    progress: bool = False,
) -> Resolution:
    """Find a complete local copy of `dataset_id`. Raises NotCachedError/IncompleteCacheError."""
    force_offline()
    paths = paths or CachePaths.from_env()
    _check_dataset_id(paths, dataset_id)
    search = _Search(dataset_id, config, revision, paths, deep, progress)
    found = _from_arrow_cache(search)
    if found is not None:
        return found
    found = _from_hub_snapshot(search)
    if found is None:
        raise _not_found(search)
    # Here, not in a helper: the warnings' stacklevel names resolve's caller.
    if allow_convert and found.report.missing_splits:
        _stream_instead(
            found, "conversion to Arrow needs every split of the card; streaming instead", 3
        )
    elif allow_convert:
        _maybe_convert(found, paths, convert_headroom, progress)
    return found


def _check_dataset_id(paths: CachePaths, dataset_id: str) -> None:
    """InvalidDatasetIdError (usage) for an id that cannot be a Hub id, with a near miss."""
    if _ID_RE.match(dataset_id):
        return
    misses = near_misses(paths, dataset_id)
    raise InvalidDatasetIdError(
        f"'{dataset_id}' is not a valid dataset id",
        near_misses=misses,
        remedy=(
            f"did you mean '{cached_id(misses[0])}'? "
            if misses
            else "pass an id like 'ILSVRC/imagenet-1k' (namespace/name) or 'name'"
        ),
    )


def _from_arrow_cache(search: _Search) -> Resolution | None:
    """(a) The newest complete Arrow copy of exactly the id; broken ones are recorded."""
    dataset_id, config, paths = search.dataset_id, search.config, search.paths
    root = arrow_root(paths, dataset_id)
    search.looked.append(
        f"Arrow cache {root}/{config or '*'}/*/* ({paths.sources.get('datasets_cache', 'given')})"
    )
    candidates, skipped, configs_found, unreadable = _arrow_candidates(
        paths, dataset_id, config, search.revision
    )
    search.skipped.extend(skipped)
    if unreadable.problems:
        search.broken.append(unreadable)
        search.skipped.extend(
            Skipped(p.path, p.message, permissions_only=p.kind == PERMISSION)
            for p in unreadable.problems
        )
    if config is None and len(configs_found) > 1:
        if "default" not in configs_found:
            raise NotCachedError(
                f"several configs of '{dataset_id}' are cached: {', '.join(configs_found)}",
                path=str(root),
                looked=search.looked,
                remedy=f"choose one with --config (e.g. --config {configs_found[0]})",
            )
        candidates = [c for c in candidates if c.parent.parent.name == "default"]
    search.arrow_candidates = candidates
    for d in sorted(candidates, key=_mtime, reverse=True):
        rep = check_arrow_dir(d, deep=search.deep, progress=search.progress)
        if rep.ok:
            return _found(search, d.parent.parent.name, "arrow", d, "arrow", rep)
        search.skipped.append(
            Skipped(
                str(d),
                "; ".join(str(p) for p in rep.problems[:5]),
                permissions_only=all(p.kind == PERMISSION for p in rep.problems),
            )
        )
        search.broken.append(rep)
    return None


def _from_hub_snapshot(search: _Search) -> Resolution | None:
    """(b) The hub snapshot of the revision (refs/main by default), when complete."""
    dataset_id, config, paths = search.dataset_id, search.config, search.paths
    repo_dir = hub_repo_dir(paths, dataset_id)
    search.looked.append(
        f"hub cache {repo_dir}/snapshots/<{search.revision or 'refs/main'}> "
        f"({paths.sources.get('hub_cache', 'given')})"
    )
    snapshot, refused = locate_snapshot(dataset_id, search.revision, paths)
    if refused is not None:
        search.broken.append(refused)
    if snapshot is not None and config is not None:
        names = card_config_names(read_card(snapshot))
        if names and config not in names:
            search.looked.append(
                f"snapshot {snapshot} has configs {', '.join(names)}, not '{config}'"
            )
            snapshot = None
    if snapshot is None:
        return None
    rep = check_hub_snapshot(snapshot, config, deep=search.deep, progress=search.progress)
    cfg_name = config if config is not None else _snapshot_config(search, snapshot, rep)
    if not rep.ok:
        search.broken.append(rep)
        return None
    res = _found(search, cfg_name, "hub", snapshot, "streaming", rep)
    if rep.missing_splits:
        res.notes.append(
            f"splits {', '.join(rep.missing_splits)} are recorded in the dataset card "
            "but were not downloaded into this snapshot; the others are usable"
        )
    return res


def _snapshot_config(search: _Search, snapshot: Path, rep: CheckReport) -> str:
    """The config a snapshot is read as when none was asked: 'default' or its only one."""
    names = card_config_names(rep.card)
    if len(names) > 1 and "default" not in names:
        raise NotCachedError(
            f"the snapshot of '{search.dataset_id}' has several configs: {', '.join(names)}",
            path=str(snapshot),
            looked=search.looked,
            remedy=f"choose one with --config (e.g. --config {names[0]})",
        )
    return "default" if (not names or "default" in names) else names[0]


def _found(
    search: _Search, config: str, source: str, path: Path, mode: str, rep: CheckReport
) -> Resolution:
    return Resolution(
        dataset_id=search.dataset_id,
        config=config,
        revision=search.revision,
        source=source,
        path=str(path),
        mode=mode,
        report=rep,
        skipped=search.skipped,
        looked=search.looked,
    )


def _not_found(search: _Search) -> HFLoaderError:
    """The error when no copy is complete: incomplete (copies broken or interrupted) or not
    cached (naming every place looked and the near misses)."""
    dataset_id, skipped = search.dataset_id, search.skipped
    if search.broken:
        return _broken_copies(search)
    misses = near_misses(search.paths, dataset_id)
    if skipped and not search.arrow_candidates:
        search.looked.extend(f"skipped {s}" for s in skipped)
    remedy = (
        f"use the id it is cached under (e.g. '{cached_id(misses[0])}')"
        if misses
        else (
            "copy the dataset into HF_DATASETS_CACHE (Arrow, as written by datasets) or "
            "HF_HUB_CACHE (hub snapshot) on this host, or point HF_HOME/HF_DATASETS_CACHE/"
            "HF_HUB_CACHE at the mounted cache volume"
        )
    )
    if skipped and not misses and all("incomplete" in s.reason for s in skipped):
        return IncompleteCacheError(
            f"'{dataset_id}' has only interrupted (*.incomplete) copies",
            path=skipped[0].path,
            problems=[str(s) for s in skipped],
            remedy="finish preparing the dataset on a host with the data, copy the complete "
            "folder here, and delete the *.incomplete folder",
        )
    config = search.config
    return NotCachedError(
        f"'{dataset_id}'{f' config {config}' if config else ''} is not cached on this host",
        looked=search.looked,
        near_misses=misses,
        remedy=remedy,
    )


def _broken_copies(search: _Search) -> IncompleteCacheError:
    problems = [p for r in search.broken for p in r.problems]
    worst = search.broken[0]
    unreadable_only = all(p.kind == PERMISSION for p in problems)
    return IncompleteCacheError(
        f"'{search.dataset_id}' is cached but this user may not read it "
        f"({len(problems)} path(s) permission denied)"
        if unreadable_only
        else f"'{search.dataset_id}' is cached but no copy is complete "
        f"({len(problems)} problem(s) in {len(search.broken)} copy/copies)",
        path=worst.path,
        problems=problems + [f"skipped {s}" for s in search.skipped if "incomplete" in s.reason],
        remedy=incomplete_remedy(problems),
    )


def incomplete_remedy(problems) -> str:
    """The fix for a copy's problems; permission problems alone never call for a new copy."""
    kinds = {getattr(p, "kind", None) for p in problems}
    chmod = (
        "give the training user read access, keeping the files: e.g. chmod -R a+rX on the "
        "copy named above (or chown it to the training user)"
    )
    if kinds == {PERMISSION}:
        return chmod + ", then rerun hf-cache-test"
    restore = (
        "restore the missing, corrupt or malformed files named above from the source volume "
        "(or re-sync the cache)"
    )
    if PERMISSION in kinds:
        restore += "; for the files marked 'permission denied', " + chmod
    return restore + ", then rerun hf-cache-test; the loader never downloads"


_COMMIT_RE = re.compile(rb"^[0-9a-f]{40}\n?$")
_COMMIT_TEXT_RE = re.compile(r"^[0-9a-f]{40}$")


def _ref_name_problem(name: str) -> str | None:
    """Why a ref name (`--revision`) cannot name a file under refs/, or None."""
    parts = name.split("/")
    if name.startswith("/") or any(part in ("", ".", "..") for part in parts):
        return "it is not a plain ref name (empty, absolute or '..' parts)"
    if any(ord(c) < 32 for c in name):
        return "it holds a control character"
    return None


def _real_inside(path: str, folder: str) -> bool:
    real, top = os.path.realpath(path), os.path.realpath(folder)
    return real != top and real.startswith(top.rstrip("/") + "/")


def locate_snapshot(
    dataset_id: str, revision: str | None, paths: CachePaths
) -> tuple[Path | None, CheckReport | None]:
    """The hub snapshot folder of `dataset_id` (None: not there) and a broken copy's report.

    The ref is read here, never by huggingface_hub, which joins its text into
    `snapshots/<text>` as it stands: a ref holding `../../datasets--other--set/snapshots/SHA`
    would load another dataset under this id, one holding `/` would walk the filesystem.
    A ref must hold one 40-hex commit (a trailing newline allowed), and the snapshot's real
    path must lie inside this repository's `snapshots/`. Every EACCES on the way is a
    permission problem (huggingface_hub's `os.path.exists` would call the copy missing).
    """
    repo_dir = hub_repo_dir(paths, dataset_id)
    report = CheckReport(kind="hub", path=str(repo_dir))
    try:
        st = os.stat(repo_dir)
    except FileNotFoundError:
        return None, None
    except OSError as e:
        add_os_error(report, repo_dir, e, "repository folder")
        return None, report
    if not stat.S_ISDIR(st.st_mode):
        report.add(repo_dir, "is not a folder: a hub repository folder belongs here", SPECIAL)
        return None, report
    real_repo = os.path.realpath(repo_dir)
    if os.path.basename(real_repo).startswith("datasets--") and (
        os.path.basename(real_repo) != repo_dir.name
    ):
        report.add(
            repo_dir,
            f"is a link to {real_repo}, the repository of another dataset: it would be loaded "
            f"under '{dataset_id}'",
            CORRUPT,
        )
        return None, report
    try:
        os.listdir(repo_dir)
    except OSError as e:
        _folder_error(report, repo_dir, e)
        return None, report
    snapshots = repo_dir / "snapshots"
    if revision and _COMMIT_TEXT_RE.match(revision):
        commit, ref, ref_name = revision, None, None
    else:
        ref_name = revision or "main"
        why = _ref_name_problem(ref_name)
        if why:
            raise InvalidRevisionError(
                f"--revision {ref_name!r} cannot name a ref: {why}",
                remedy="pass a 40-hex commit (a folder name under snapshots/) or a branch or tag "
                "name such as 'main'",
            )
        ref = repo_dir / "refs" / ref_name
        try:
            text = _read_ref(ref)
        except FileNotFoundError:
            return None, None  # no such ref: not cached (the message lists where it looked)
        except OSError as e:
            add_os_error(report, ref, e, "ref file (one commit)")
            return None, report
        if not _COMMIT_RE.match(text):
            shown = text[:80].decode("utf-8", errors="backslashreplace")
            report.add(
                ref,
                f"ref '{ref_name}' holds {shown!r}, not one 40-hex commit: a ref is never used "
                f"as a path (snapshots there: {', '.join(_names(snapshots)) or 'none'})",
                METADATA,
            )
            return None, report
        commit = text.decode("ascii").strip()
    snapshot = snapshots / commit
    report.path = str(snapshot)
    try:
        st = os.stat(snapshot)
    except FileNotFoundError:
        if ref is None:
            return None, None  # that commit is not cached (the message lists where it looked)
        report.add(
            ref,
            f"ref '{ref_name}' points to snapshot {commit}, which is not in {snapshots} "
            f"(snapshots there: {', '.join(_names(snapshots)) or 'none'})",
            MISSING,
        )
        return None, report
    except OSError as e:
        _folder_error(report, snapshots, e)
        return None, report
    if not _real_inside(str(snapshot), str(repo_dir / "snapshots")) or not os.path.samefile(
        os.path.dirname(os.path.realpath(snapshots)), real_repo
    ):
        report.add(
            snapshot,
            f"the snapshot is a link to {os.path.realpath(snapshot)}, outside this repository's "
            f"{snapshots}: another copy would be loaded under '{dataset_id}'",
            CORRUPT,
        )
        return None, report
    if not stat.S_ISDIR(st.st_mode):
        report.add(snapshot, "is not a folder: a snapshot folder belongs here", SPECIAL)
        return None, report
    try:
        os.listdir(snapshot)
    except OSError as e:
        _folder_error(report, snapshot, e)
        return None, report
    # huggingface_hub's own check of the snapshot against its cached tree listing, given
    # the commit itself (so it reads no ref).
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        snapshot_download(
            dataset_id,
            repo_type="dataset",
            revision=commit,
            cache_dir=str(paths.hub_cache),
            local_files_only=True,
        )
    except LocalEntryNotFoundError as e:
        log.debug("huggingface_hub finds no snapshot for %s: %s", dataset_id, e)
        return None, None
    except (OSError, ValueError) as e:  # IncompleteSnapshotError: files of its listing missing
        report.add(snapshot, f"huggingface_hub refuses the snapshot: {e}", MISSING)
        return None, report
    return snapshot, None


def _read_ref(ref: Path) -> bytes:
    """A ref's bytes; at most 4 KiB (a commit is 40): a huge or special file is no ref."""
    with os.fdopen(open_regular(ref), "rb") as f:
        return f.read(4096)


def _names(folder: Path) -> list[str]:
    return listdir_or_empty(folder)


def _folder_error(report: CheckReport, folder: Path, error: OSError) -> None:
    if isinstance(error, PermissionError):
        report.add(
            folder, "folder not readable/searchable by this user (permission denied)", PERMISSION
        )
    else:
        add_os_error(report, folder, error, "folder")


def _arrow_size_estimate(report: CheckReport, config: str) -> int:
    _, info = card_config(report.card, config)
    if info and isinstance(info.get("dataset_size"), int):
        return info["dataset_size"]
    return sum(s.bytes for s in report.splits.values()) * 2  # parquet compresses ~2x at most


def _stream_instead(res: Resolution, msg: str, stacklevel: int) -> None:
    """Conversion allowed but not done: warn `resolve`'s caller and note it in the result."""
    warnings.warn(msg, ConversionSkippedWarning, stacklevel=stacklevel)
    res.infos.append(msg)


def _maybe_convert(res: Resolution, paths: CachePaths, headroom: float, progress: bool) -> None:
    target = writable_target(paths.datasets_cache)
    if target is None:
        msg = (
            f"conversion of {res.path} to Arrow skipped: {paths.datasets_cache} is not writable "
            "by this user (read-only volume or another owner); reading the hub snapshot in "
            "streaming mode"
        )
        _stream_instead(res, msg, 4)
        return
    need = int(_arrow_size_estimate(res.report, res.config) * headroom)
    try:
        free = shutil.disk_usage(target).free
    except OSError:
        free = 0
    if free < need:
        msg = (
            f"conversion of {res.path} to Arrow skipped: needs about {need} bytes, "
            f"{free} free in {paths.datasets_cache}; reading the hub snapshot in streaming mode"
        )
        _stream_instead(res, msg, 4)
        return
    try:
        paths.datasets_cache.mkdir(parents=True, exist_ok=True)
        out = convert_to_arrow(res, paths)
    except OSError as e:  # the disk filled up, or the folder changed hands meanwhile
        raise EnvironmentMisconfiguredError(
            f"converting {res.path} to Arrow failed: {e.strerror or e}",
            path=str(e.filename or paths.datasets_cache),
            remedy=f"free space or fix permissions in {paths.datasets_cache}, remove the "
            "*.incomplete folder it left, and rerun (or run without --allow-convert to stream)",
        ) from e
    res.infos.append(f"converted hub snapshot {res.path} to Arrow at {out}")
    res.source, res.path, res.mode = "arrow", str(out), "converted"
    res.report = check_arrow_dir(out)
    if not res.report.ok:
        raise IncompleteCacheError(
            "the Arrow copy just written is incomplete",
            path=str(out),
            problems=res.report.problems,
            remedy="check free space and permissions of HF_DATASETS_CACHE, delete the folder "
            "and rerun",
        )


def writable_target(folder: Path) -> Path | None:
    """The folder, or its nearest existing parent, if this user may write there; else None.

    access(2) answers EROFS for a read-only mount as well as EACCES, without writing.
    """
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            ok = candidate.is_dir() and os.access(candidate, os.W_OK | os.X_OK)
            return candidate if ok else None
    return None


def convert_to_arrow(res: Resolution, paths: CachePaths) -> Path:
    """Write the by-name Arrow cache (`ns___name/CONFIG/VERSION/SHA`) from a hub snapshot."""
    import datasets

    snapshot = Path(res.path)
    builder = datasets.load_dataset_builder(
        str(snapshot), name=res.config, cache_dir=str(paths.datasets_cache)
    )
    name = res.dataset_id.split("/")[-1]
    builder.dataset_name = name  # file names as a by-name hub load writes them
    builder.info.dataset_name = name
    out = (
        arrow_root(paths, res.dataset_id) / res.config / str(builder.config.version) / snapshot.name
    )
    builder.download_and_prepare(output_dir=str(out))
    return out


def load_split(res: Resolution, split: str):
    """The split as a `datasets.Dataset` (Arrow, memory-mapped) or `IterableDataset` (stream)."""
    force_offline()
    import datasets

    if split in res.report.missing_splits:
        raise NotCachedError(
            f"split '{split}' is recorded in the dataset card but its files are not in "
            f"the snapshot {res.path}",
            path=res.path,
            remedy=f"copy the '{split}' data files into the hub cache, or use one of: "
            f"{', '.join(res.splits)}",
        )
    if split not in res.report.splits:
        raise NotCachedError(
            f"split '{split}' is not in {res.path} (has: {', '.join(res.splits) or 'none'})",
            path=res.path,
            remedy=f"use one of: {', '.join(res.splits)}",
        )
    if res.mode in ("arrow", "converted"):
        info = datasets.DatasetInfo.from_directory(res.path)
        parts = [
            datasets.Dataset.from_file(f, info=info, split=split)
            for f in res.report.splits[split].files
        ]
        return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts, info=info)
    # cache_dir: the lock `datasets` takes even to stream goes to this process's own folder,
    # so a read-only or foreign cache is read without a single write into it.
    if not res.report.missing_splits:
        return datasets.load_dataset(
            res.path, name=res.config, split=split, streaming=True, cache_dir=str(scratch_dir())
        )
    # `datasets` refuses a snapshot folder with a card split missing; read the checked
    # (complete) files of this split directly, with the card's features
    _, info = card_config(res.report.card, res.config)
    features = None
    if info and isinstance(info.get("features"), list):
        features = datasets.Features._from_yaml_list(info["features"])
    return datasets.load_dataset(
        "parquet",
        data_files={split: res.report.splits[split].files},
        split=split,
        streaming=True,
        features=features,
        cache_dir=str(scratch_dir()),
    )
