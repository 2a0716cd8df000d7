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
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from .check import (
    MISSING,
    PERMISSION,
    CheckReport,
    card_config,
    card_config_names,
    check_arrow_dir,
    check_hub_snapshot,
    listdir_or_empty,
    read_card,
)
from .env import CachePaths, force_offline, scratch_dir
from .errors import IncompleteCacheError, InvalidDatasetIdError, NotCachedError

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


def _arrow_candidates(
    paths: CachePaths, dataset_id: str, config: str | None, revision: str | None
) -> tuple[list[Path], list[Skipped], list[str]]:
    root = arrow_root(paths, dataset_id)
    candidates, skipped = [], []
    configs = [config] if config else listdir_or_empty(root)
    for cfg in configs:
        cfg_dir = root / cfg
        if not cfg_dir.is_dir():
            continue
        for ver in listdir_or_empty(cfg_dir):
            vdir = cfg_dir / ver
            if not vdir.is_dir():
                continue
            for h in listdir_or_empty(vdir):
                d = vdir / h
                if not d.is_dir():
                    continue
                if h.endswith(".incomplete"):
                    skipped.append(Skipped(str(d), "interrupted prepare (*.incomplete), ignored"))
                    continue
                if revision and h != revision:
                    skipped.append(Skipped(str(d), f"other revision than {revision}"))
                    continue
                candidates.append(d)
    configs_found = sorted({c.parent.parent.name for c in candidates})
    return candidates, skipped, configs_found


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
    if not _ID_RE.match(dataset_id):
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
    looked: list[str] = []
    skipped: list[Skipped] = []
    broken: list[CheckReport] = []

    # (a) Arrow cache, exact id
    root = arrow_root(paths, dataset_id)
    looked.append(
        f"Arrow cache {root}/{config or '*'}/*/* ({paths.sources.get('datasets_cache', 'given')})"
    )
    candidates, sk, configs_found = _arrow_candidates(paths, dataset_id, config, revision)
    skipped.extend(sk)
    if config is None and len(configs_found) > 1:
        if "default" in configs_found:
            candidates = [c for c in candidates if c.parent.parent.name == "default"]
        else:
            raise NotCachedError(
                f"several configs of '{dataset_id}' are cached: {', '.join(configs_found)}",
                path=str(root),
                looked=looked,
                remedy=f"choose one with --config (e.g. --config {configs_found[0]})",
            )
    for d in sorted(candidates, key=_mtime, reverse=True):
        rep = check_arrow_dir(d, deep=deep, progress=progress)
        if rep.ok:
            return Resolution(
                dataset_id=dataset_id,
                config=d.parent.parent.name,
                revision=revision,
                source="arrow",
                path=str(d),
                mode="arrow",
                report=rep,
                skipped=skipped,
                looked=looked,
            )
        skipped.append(
            Skipped(
                str(d),
                "; ".join(str(p) for p in rep.problems[:5]),
                permissions_only=all(p.kind == PERMISSION for p in rep.problems),
            )
        )
        broken.append(rep)

    # (b) hub snapshot
    repo_dir = hub_repo_dir(paths, dataset_id)
    looked.append(
        f"hub cache {repo_dir}/snapshots/<{revision or 'refs/main'}> "
        f"({paths.sources.get('hub_cache', 'given')})"
    )
    snapshot = _snapshot(dataset_id, revision, paths)
    if snapshot is None:
        dangling = _dangling_ref(repo_dir, revision)
        if dangling:
            broken.append(dangling)
    if snapshot is not None and config is not None:
        names = card_config_names(read_card(snapshot))
        if names and config not in names:
            looked.append(f"snapshot {snapshot} has configs {', '.join(names)}, not '{config}'")
            snapshot = None
    if snapshot is not None:
        rep = check_hub_snapshot(snapshot, config, deep=deep, progress=progress)
        if config is None:
            names = card_config_names(rep.card)
            cfg_name = "default" if (not names or "default" in names) else names[0]
            if len(names) > 1 and "default" not in names:
                raise NotCachedError(
                    f"the snapshot of '{dataset_id}' has several configs: {', '.join(names)}",
                    path=str(snapshot),
                    looked=looked,
                    remedy=f"choose one with --config (e.g. --config {names[0]})",
                )
        else:
            cfg_name = config
        if rep.ok:
            res = Resolution(
                dataset_id=dataset_id,
                config=cfg_name,
                revision=revision,
                source="hub",
                path=str(snapshot),
                mode="streaming",
                report=rep,
                skipped=skipped,
                looked=looked,
            )
            if rep.missing_splits:
                res.notes.append(
                    f"splits {', '.join(rep.missing_splits)} are recorded in the dataset card "
                    "but were not downloaded into this snapshot; the others are usable"
                )
            if allow_convert and rep.missing_splits:
                _stream_instead(
                    res, "conversion to Arrow needs every split of the card; streaming instead", 3
                )
            elif allow_convert:
                _maybe_convert(res, paths, convert_headroom, progress)
            return res
        broken.append(rep)

    if broken:
        problems = [p for r in broken for p in r.problems]
        worst = broken[0]
        raise IncompleteCacheError(
            f"'{dataset_id}' is cached but no copy is complete "
            f"({len(problems)} problem(s) in {len(broken)} copy/copies)",
            path=worst.path,
            problems=problems + [f"skipped {s}" for s in skipped if "incomplete" in s.reason],
            remedy=incomplete_remedy(problems),
        )
    misses = near_misses(paths, dataset_id)
    if skipped and not candidates:
        looked.extend(f"skipped {s}" for s in skipped)
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
        raise IncompleteCacheError(
            f"'{dataset_id}' has only interrupted (*.incomplete) copies",
            path=skipped[0].path,
            problems=[str(s) for s in skipped],
            remedy="finish preparing the dataset on a host with the data, copy the complete "
            "folder here, and delete the *.incomplete folder",
        )
    raise NotCachedError(
        f"'{dataset_id}'{f' config {config}' if config else ''} is not cached on this host",
        looked=looked,
        near_misses=misses,
        remedy=remedy,
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


def _dangling_ref(repo_dir: Path, revision: str | None) -> CheckReport | None:
    """A ref (refs/main) that names a snapshot folder that is not there, as a broken copy."""
    ref_name = revision or "main"
    ref = repo_dir / "refs" / ref_name
    try:
        commit = ref.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    snapshots = repo_dir / "snapshots"
    if (snapshots / commit).is_dir():
        return None
    present = listdir_or_empty(snapshots)
    report = CheckReport(kind="hub", path=str(snapshots / commit))
    report.add(
        ref,
        f"ref '{ref_name}' points to snapshot {commit}, which is not in {snapshots} "
        f"(snapshots there: {', '.join(present) or 'none'})",
        MISSING,
    )
    return report


def _snapshot(dataset_id: str, revision: str | None, paths: CachePaths) -> Path | None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(
            snapshot_download(
                dataset_id,
                repo_type="dataset",
                revision=revision,
                cache_dir=str(paths.hub_cache),
                local_files_only=True,
            )
        )
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError) as e:
        log.debug("no hub snapshot for %s: %s", dataset_id, e)
        return None


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
    free = shutil.disk_usage(target).free
    if free < need:
        msg = (
            f"conversion of {res.path} to Arrow skipped: needs about {need} bytes, "
            f"{free} free in {paths.datasets_cache}; reading the hub snapshot in streaming mode"
        )
        _stream_instead(res, msg, 4)
        return
    paths.datasets_cache.mkdir(parents=True, exist_ok=True)
    out = convert_to_arrow(res, paths)
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
