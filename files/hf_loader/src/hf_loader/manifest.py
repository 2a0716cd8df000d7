"""The manifest of a complete cached copy of a dataset id, and checking a copy against it.

A manifest lists every file a copy needs for `hf-cache-test` to find it complete: the
Arrow cache folder (`ns___name/CONFIG/VERSION/HASH`, `dataset_info.json` included) and/or
the hub repository (`datasets--ns--name`: the refs that name the snapshot, the snapshot's
symlinks with their targets, and the blobs they point to). Paths are relative to the cache
root, `datasets/...` for `HF_DATASETS_CACHE` and `hub/...` for `HF_HUB_CACHE` (the layout
of an `HF_HOME`), so a copy can be checked under another root (a staging folder).

Each regular file carries its size and the sha256 of its content, hashed when the
manifest is written (streamed in `HASH_BUFFER` chunks in a thread pool): the manifest is
what every copy is checked against, so it never takes a hash on trust. A hub blob is named
by its sha256 (an LFS file): that name is only checked against the content, and a blob
whose bytes do not match its name is refused. The cost is one read of the source copy per
manifest (written once and reused by every later seed), the same read `--deep` makes.
`verify_manifest` checks presence, type, size and symlink target with one `lstat` (and one
`readlink`) per entry, reading no file contents; `deep=True` also hashes every file.

Nothing here writes into a cache: the copy is only listed and read, and a manifest is
written only outside the cache folders (`check_output_location`).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import posixpath
import re
import socket
import stat
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from . import __version__
from .check import (
    _FILE_TYPES,
    CORRUPT,
    MISSING,
    PERMISSION,
    SPECIAL,
    NotRegularFileError,
    Problem,
    open_regular,
    read_regular,
)
from .errors import IncompleteCacheError, ManifestError, ManifestLocationError

MANIFEST_VERSION = 1
HASH_BUFFER = 8 << 20  # 8 MiB per read: large sequential reads, one buffer per thread
PREFIXES = ("datasets", "hub")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# Library bookkeeping, never part of a copy: `datasets`' lock files beside the Arrow
# folders, huggingface_hub's record of files a repository does not have.
_BOOKKEEPING_FILE_SUFFIX = ".lock"
_BOOKKEEPING_DIRS = {".no_exist"}


def default_workers() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(8, cpus or 1))


# --------------------------------------------------------------------------- where


@dataclass(frozen=True)
class CacheRoots:
    """Where `datasets/...` and `hub/...` entries of a manifest live on this machine."""

    datasets: Path
    hub: Path

    @classmethod
    def under(cls, root) -> CacheRoots:
        """An HF_HOME-style root (a staging folder): ROOT/datasets and ROOT/hub."""
        root = Path(root)
        return cls(root / "datasets", root / "hub")

    @classmethod
    def of(cls, paths) -> CacheRoots:
        """The caches the libraries use (`env.CachePaths`)."""
        return cls(Path(paths.datasets_cache), Path(paths.hub_cache))

    def base(self, prefix: str) -> Path:
        return self.datasets if prefix == "datasets" else self.hub

    def path(self, rel: str) -> Path:
        prefix, _, rest = rel.partition("/")
        return self.base(prefix) / rest if rest else self.base(prefix)

    def rel(self, path) -> str:
        for prefix in PREFIXES:
            try:
                inside = Path(path).relative_to(self.base(prefix))
            except ValueError:
                continue
            return f"{prefix}/{inside.as_posix()}"
        raise ValueError(f"{path} is in neither {self.datasets} nor {self.hub}")

    def to_dict(self) -> dict:
        return {"datasets": str(self.datasets), "hub": str(self.hub)}


@dataclass(frozen=True)
class Copy:
    """One complete copy: an Arrow HASH folder, or a hub snapshot folder."""

    kind: str  # "arrow" or "hub"
    path: Path

    @property
    def root(self) -> Path:
        """The dataset id's folder: `ns___name` (Arrow) or `datasets--ns--name` (hub)."""
        levels = 3 if self.kind == "arrow" else 2  # HASH/VERSION/CONFIG, SHA/snapshots
        return self.path.parents[levels - 1]

    @property
    def revision(self) -> str:
        return self.path.name


def check_output_location(output, cache_dirs) -> Path:
    """The manifest's real path; refuses one inside a cache folder (exit 2), a folder (2), or
    one whose folder does not exist (exit 8)."""
    output = Path(output)
    real = Path(os.path.realpath(output))
    for folder in cache_dirs:
        folder_real = Path(os.path.realpath(folder))
        if real == folder_real or real.is_relative_to(folder_real):
            raise ManifestLocationError(
                f"the manifest {output} would be written inside the cache folder {folder}",
                path=str(output),
                remedy="write it outside the cache (e.g. /var/lib/hf-loader/manifests/); "
                "a reader never writes into a cache",
            )
    if real.is_dir():
        raise ManifestLocationError(
            f"{output} is a folder", path=str(output), remedy="name the manifest file itself"
        )
    if not real.parent.is_dir():
        raise ManifestError(
            f"cannot write the manifest: the folder {output.parent} does not exist",
            path=str(output),
            remedy="create the folder first, or name another one",
        )
    return real


# --------------------------------------------------------------------------- hashing


def sha256_file(path) -> tuple[str, int]:
    """sha256 hex digest and length of a regular file, streamed: never the whole file read."""
    digest = hashlib.sha256()
    buffer = bytearray(HASH_BUFFER)
    view = memoryview(buffer)
    length = 0
    with os.fdopen(open_regular(path), "rb", buffering=0) as f:
        if hasattr(os, "posix_fadvise"):
            with contextlib.suppress(OSError):
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        while n := f.readinto(buffer):
            digest.update(view[:n])  # hashlib releases the GIL on large updates
            length += n
    return digest.hexdigest(), length


def hash_files(jobs, *, workers: int | None = None, progress: bool = False, desc="sha256"):
    """{key: (digest, length) or the exception} for jobs of (key, path, size), in parallel."""
    results: dict = {}
    if not jobs:
        return results
    from tqdm.auto import tqdm

    jobs = sorted(jobs, key=lambda job: -job[2])  # the largest first: fewer idle threads
    total = sum(job[2] for job in jobs)
    with (
        ThreadPoolExecutor(max_workers=workers or default_workers()) as pool,
        tqdm(
            total=total, unit="B", unit_scale=True, desc=desc, disable=not progress, leave=False
        ) as bar,
    ):
        futures = {pool.submit(sha256_file, path): (key, size) for key, path, size in jobs}
        for future in as_completed(futures):
            key, size = futures[future]
            try:
                results[key] = future.result()
            except Exception as e:  # noqa: BLE001 - reported per file by the caller
                results[key] = e
            bar.update(size)
    return results


# --------------------------------------------------------------------------- building


@dataclass
class _Collector:
    roots: CacheRoots
    entries: dict[str, dict] = field(default_factory=dict)
    to_hash: list[tuple[str, Path, int]] = field(default_factory=list)
    links: list[tuple[str, Path, str]] = field(default_factory=list)  # rel, abs, target
    problems: list[Problem] = field(default_factory=list)

    # A blob's name, when it is a sha256: checked against the content once it is hashed.
    blob_names: dict[str, str] = field(default_factory=dict)

    def add_file(self, path: Path, st: os.stat_result, sha256_name: str | None = None) -> None:
        rel = self.roots.rel(path)
        if rel in self.entries:
            return
        self.entries[rel] = {
            "path": rel,
            "type": "file",
            "size": st.st_size,
            "sha256": None,  # filled in by the hashing: always the content's
            "sha256_from": "content",
        }
        if sha256_name:
            self.blob_names[rel] = sha256_name
        self.to_hash.append((rel, path, st.st_size))

    def add_tree(self, folder: Path) -> None:
        """Every file and symlink under folder (symlinks are recorded, never followed)."""
        try:
            items = sorted(os.scandir(folder), key=lambda e: e.name)
        except PermissionError:
            self.problems.append(
                Problem(
                    str(folder), "folder not readable/searchable (permission denied)", PERMISSION
                )
            )
            return
        except FileNotFoundError:
            self.problems.append(Problem(str(folder), "folder missing", MISSING))
            return
        for item in items:
            path = Path(item.path)
            if _has_control(item.name):
                self.problems.append(
                    Problem(
                        str(folder) + "/" + repr(item.name),
                        "name holds a control character or is not UTF-8: such a path is never "
                        "manifested or seeded (rename it)",
                        CORRUPT,
                    )
                )
                continue
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode):
                self.add_tree(path)
            elif stat.S_ISLNK(st.st_mode):
                target = os.readlink(path)
                rel = self.roots.rel(path)
                self.entries[rel] = {"path": rel, "type": "symlink", "target": target}
                self.links.append((rel, path, target))
            elif stat.S_ISREG(st.st_mode):
                self.add_file(path, st)
            else:
                what = _FILE_TYPES.get(stat.S_IFMT(st.st_mode), "not a regular file")
                self.problems.append(Problem(str(path), f"is {what}, cannot be copied", SPECIAL))

    def add_refs(self, repo: Path, commit: str) -> None:
        """The refs (refs/main, ...) that name this snapshot: how the libraries find it."""
        refs = repo / "refs"
        for folder, _dirs, files in os.walk(refs):
            for name in files:
                path = Path(folder) / name
                try:
                    text = read_regular(path).decode("utf-8", errors="replace").strip()
                except OSError:
                    continue  # a ref naming another snapshot may be unreadable: not ours
                if text == commit:
                    self.add_file(path, os.lstat(path))

    def resolve_links(self, copies: list[Copy]) -> None:
        """Each symlink must point into the copy: a hub blob (added here) or a listed file."""
        blob_dirs = {c.root / "blobs" for c in copies if c.kind == "hub"}
        for _rel, path, target in self.links:
            if os.path.isabs(target):
                self.problems.append(
                    Problem(
                        str(path),
                        f"symlink with an absolute target {target}: a copy under another root "
                        "would point back into this cache",
                        CORRUPT,
                    )
                )
                continue
            dest = Path(os.path.normpath(path.parent / target))
            if dest.parent in blob_dirs:
                try:
                    st = os.lstat(dest)
                except FileNotFoundError:
                    self.problems.append(
                        Problem(str(path), f"dangling symlink to {target} (blob missing)", MISSING)
                    )
                    continue
                if not stat.S_ISREG(st.st_mode):
                    what = _FILE_TYPES.get(stat.S_IFMT(st.st_mode), "not a regular file")
                    self.problems.append(Problem(str(dest), f"blob is {what}", SPECIAL))
                    continue
                name = dest.name if _SHA256_RE.match(dest.name) else None
                self.add_file(dest, st, sha256_name=name)
                continue
            try:
                inside = self.roots.rel(dest) in self.entries
            except ValueError:
                inside = False
            if not inside:
                self.problems.append(
                    Problem(str(path), f"symlink to {target}, outside the copy", CORRUPT)
                )

    def apply_hashes(self, results: dict) -> None:
        for rel, result in results.items():
            path = self.roots.path(rel)
            if isinstance(result, PermissionError):
                self.problems.append(
                    Problem(str(path), "not readable by this user (permission denied)", PERMISSION)
                )
            elif isinstance(result, NotRegularFileError):
                self.problems.append(Problem(str(path), str(result), SPECIAL))
            elif isinstance(result, Exception):
                self.problems.append(Problem(str(path), f"cannot read: {result}", CORRUPT))
            else:
                digest, length = result
                if length != self.entries[rel]["size"]:
                    self.problems.append(
                        Problem(
                            str(path),
                            f"changed while it was hashed ({self.entries[rel]['size']} bytes "
                            f"listed, {length} read)",
                            CORRUPT,
                        )
                    )
                self.entries[rel]["sha256"] = digest
                named = self.blob_names.get(rel)
                if named and named != digest:
                    self.problems.append(
                        Problem(
                            str(path),
                            f"blob content has sha256 {digest}, not the {named} it is named by "
                            "(damaged or replaced)",
                            CORRUPT,
                        )
                    )


def build_manifest(
    dataset_id: str,
    config: str,
    copies: list[Copy],
    roots: CacheRoots,
    *,
    revision_requested: str | None = None,
    workers: int | None = None,
    progress: bool = False,
) -> dict:
    """The manifest of copies that the cache test found complete (the caller checks that).

    Raises IncompleteCacheError when something in a copy cannot be manifested faithfully:
    an unreadable file, a FIFO, a symlink leading out of the copy.
    """
    collect = _Collector(roots)
    for copy in copies:
        if copy.kind == "arrow":
            collect.add_tree(copy.path)
        else:
            collect.add_refs(copy.root, copy.revision)
            collect.add_tree(copy.path)
    collect.resolve_links(copies)
    if not collect.problems:
        collect.apply_hashes(hash_files(collect.to_hash, workers=workers, progress=progress))
    if collect.problems:
        from .resolve import incomplete_remedy

        raise IncompleteCacheError(
            f"'{dataset_id}': the copy cannot be manifested ({len(collect.problems)} problem(s))",
            path=str(copies[0].path),
            problems=collect.problems,
            remedy=incomplete_remedy(collect.problems),
        )
    entries = [collect.entries[rel] for rel in sorted(collect.entries)]
    files = [e for e in entries if e["type"] == "file"]
    return {
        "manifest_version": MANIFEST_VERSION,
        "dataset": dataset_id,
        "config": config,
        "revision": copies[0].revision,
        "revision_requested": revision_requested,
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "created_on": socket.gethostname(),
        "created_by": f"hf-cache-manifest (hf_loader {__version__})",
        "source": roots.to_dict(),
        "copies": [
            {"kind": c.kind, "path": roots.rel(c.path), "revision": c.revision} for c in copies
        ],
        "roots": sorted({roots.rel(c.root) for c in copies}),
        "totals": {
            "entries": len(entries),
            "files": len(files),
            "symlinks": len(entries) - len(files),
            "bytes": sum(e["size"] for e in files),
            "hashed_files": sum(1 for e in files if e["sha256_from"] == "content"),
        },
        "entries": entries,
    }


def write_manifest(doc: dict, output, cache_dirs) -> Path:
    """Write atomically (a temp file in the same folder, fsync, rename), outside the caches."""
    from .report import write_atomic

    real = check_output_location(output, cache_dirs)
    try:
        write_atomic(real, json.dumps(doc, indent=1) + "\n", durable=True)
    except OSError as e:
        raise ManifestError(
            f"cannot write the manifest {output}: {e.strerror or e}",
            path=str(output),
            remedy="write it to a folder this user may write (outside the cache)",
        ) from None
    return real


# --------------------------------------------------------------------------- reading


def _has_control(text: str) -> bool:
    """C0 and C1 control characters and DEL: a newline or an escape sequence in a path breaks
    rsync's file lists, logs and terminals, so a manifest never holds one. A name that is not
    UTF-8 (Latin-1 bytes: lone surrogates here) cannot be written to JSON or passed on as text,
    so it is refused the same way."""
    return any(
        ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 or 0xD800 <= ord(ch) < 0xE000 for ch in text
    )


def link_destination(rel: str, target: str) -> str:
    """Where the symlink at manifest path `rel` with `target` leads, as a manifest path."""
    return posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))


def link_leaves(rel: str, target: str, roots: list[str]) -> str:
    """Why a symlink entry may not be seeded ("" when it may): its target must be relative and
    stay inside the dataset folder (a root) that holds the link; seeding publishes links as
    they are, so one leading out would be root-made access to another place."""
    if target.startswith("/"):
        return "its target is absolute"
    home = max((r for r in roots if rel.startswith(r + "/")), key=len, default=None)
    if home is None:
        return "it lies in none of the manifest's roots"
    if not link_destination(rel, target).startswith(home + "/"):
        return f"its target leaves {home}"
    return ""


def _safe_rel(value) -> bool:
    if not isinstance(value, str) or not value or "\\" in value or _has_control(value):
        return False
    parts = PurePosixPath(value).parts
    return (
        not value.startswith("/")
        and len(parts) >= 2
        and parts[0] in PREFIXES
        and not any(p in ("..", ".") for p in parts)
        and PurePosixPath(*parts).as_posix() == value
    )


def manifest_problems(doc) -> list[str]:
    """What makes `doc` unusable as a manifest ([] when nothing)."""
    if not isinstance(doc, dict):
        return [f"the manifest is {type(doc).__name__}, not an object"]
    version = doc.get("manifest_version")
    if not isinstance(version, int) or isinstance(version, bool):
        return ["'manifest_version' missing or not an integer"]
    if version > MANIFEST_VERSION:
        return [
            f"manifest_version {version} is newer than this hf-cache-manifest reads "
            f"({MANIFEST_VERSION})"
        ]
    problems = []
    if not isinstance(doc.get("dataset"), str):
        problems.append("'dataset' missing or not a string")
    entries, roots = doc.get("entries"), doc.get("roots")
    if not isinstance(entries, list):
        return problems + ["'entries' missing or not a list"]
    if not isinstance(roots, list) or not all(_safe_rel(r) for r in roots):
        problems.append("'roots' missing or not a list of relative cache paths")
        roots = None
    seen, files, size = set(), 0, 0
    for i, e in enumerate(entries):
        if isinstance(e, dict) and isinstance(e.get("path"), str) and _has_control(e["path"]):
            problems.append(f"entry {i} path {e['path']!r} holds a control character")
            continue
        if not isinstance(e, dict) or not _safe_rel(e.get("path")):
            problems.append(f"entry {i} has no safe relative 'path' (datasets/... or hub/...)")
            continue
        where = f"entry {e['path']}"
        if e["path"] in seen:
            problems.append(f"{where} is listed twice")
        seen.add(e["path"])
        if e.get("type") == "file":
            count = e.get("size")
            if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                problems.append(f"{where}: 'size' is not a byte count")
            else:
                files, size = files + 1, size + count
            if not isinstance(e.get("sha256"), str) or not _SHA256_RE.match(e["sha256"]):
                problems.append(f"{where}: 'sha256' is not 64 lowercase hex digits")
        elif e.get("type") == "symlink":
            if not isinstance(e.get("target"), str) or not e["target"]:
                problems.append(f"{where}: 'target' missing")
            elif _has_control(e["target"]):
                problems.append(f"{where}: 'target' {e['target']!r} holds a control character")
            elif roots is not None and (why := link_leaves(e["path"], e["target"], roots)):
                problems.append(f"{where}: symlink to {e['target']!r}: {why}")
        else:
            problems.append(f"{where}: 'type' is {e.get('type')!r}, not 'file' or 'symlink'")
    totals = doc.get("totals")
    if not problems and isinstance(totals, dict):
        listed = {"entries": len(entries), "files": files, "bytes": size}
        for key, value in listed.items():
            if totals.get(key) != value:
                problems.append(
                    f"totals.{key} is {totals.get(key)!r} but the entries add up to {value} "
                    "(edited or cut short)"
                )
    elif not isinstance(totals, dict):
        problems.append("'totals' missing")
    return problems


def load_manifest(path) -> dict:
    """The parsed, checked manifest; ManifestError (exit 8) naming the file otherwise."""
    remedy = "pass the manifest written by hf-cache-manifest write (or write it again)"
    try:
        doc = json.loads(read_regular(path).decode("utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"no manifest at {path}", path=str(path), remedy=remedy) from None
    except (OSError, ValueError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else e
        raise ManifestError(
            f"the manifest {path} is unreadable: {reason}", path=str(path), remedy=remedy
        ) from None
    problems = manifest_problems(doc)
    if problems:
        newer = any("newer" in p for p in problems)
        raise ManifestError(
            f"{path} is not a valid manifest: {'; '.join(problems[:5])}"
            + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""),
            path=str(path),
            remedy="use the hf-cache-manifest version that wrote it, or a newer one"
            if newer
            else remedy,
        )
    return doc


# --------------------------------------------------------------------------- verifying

MISMATCH_KINDS = ("missing", "type", "size", "symlink_target", "sha256", "unreadable", "extra")
KIND_WORDS = {
    "missing": "missing",
    "type": "wrong type",
    "size": "wrong size",
    "symlink_target": "wrong symlink target",
    "sha256": "wrong sha256",
    "unreadable": "unreadable",
    "extra": "extra",
}


@dataclass
class Mismatch:
    path: str  # relative, as in the manifest
    kind: str  # one of MISMATCH_KINDS
    message: str
    location: str = ""  # where it is on this machine
    expected: object = None
    found: object = None

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class VerifyReport:
    roots: CacheRoots
    dataset: str
    deep: bool = False
    strict: bool = False
    entries: int = 0
    files: int = 0
    symlinks: int = 0
    bytes: int = 0
    files_hashed: int = 0
    bytes_hashed: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)
    extras: list[Mismatch] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches and not (self.strict and self.extras)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for m in self.mismatches:
            out[m.kind] = out.get(m.kind, 0) + 1
        return out

    def summary(self) -> str:
        checked = (
            f"{self.entries} entries ({self.files} files, {self.symlinks} symlinks, "
            f"{self.bytes} bytes)"
        )
        how = f"sizes and sha256, {self.files_hashed} files hashed" if self.deep else "sizes"
        extra = ""
        if self.extras:
            extra = f"; {len(self.extras)} extra " + (
                "(a failure: --strict)" if self.strict else "(a warning; --strict fails on it)"
            )
        if not self.mismatches:
            return f"{checked} match the manifest ({how}){extra}"
        kinds = ", ".join(f"{n} {KIND_WORDS[k]}" for k, n in sorted(self.counts().items()))
        return f"{len(self.mismatches)} of {checked} do not match the manifest ({kinds}){extra}"

    def to_dict(self) -> dict:
        return {
            "dataset": self.dataset,
            "root": self.roots.to_dict(),
            "deep": self.deep,
            "strict": self.strict,
            "ok": self.ok,
            "checked": {
                "entries": self.entries,
                "files": self.files,
                "symlinks": self.symlinks,
                "bytes": self.bytes,
                "files_hashed": self.files_hashed,
                "bytes_hashed": self.bytes_hashed,
            },
            "summary": self.summary(),
            "mismatches": [m.to_dict() for m in self.mismatches],
            "extras": [m.to_dict() for m in self.extras],
        }

    def raise_for_mismatches(self) -> None:
        """IncompleteCacheError (exit 4) listing every mismatch, when the copy does not match."""
        if self.ok:
            return
        problems = self.mismatches + (self.extras if self.strict else [])
        raise IncompleteCacheError(
            f"the copy of '{self.dataset}' does not match its manifest: {self.summary()}",
            path=str(self.roots.datasets.parent),
            problems=problems,
            remedy=MISMATCH_REMEDY,
        )


MISMATCH_REMEDY = (
    "copy the files named again from the source (rsync -a keeps the symlinks), then verify "
    "again; remove extra files from the copy"
)


def _type_name(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISREG(mode):
        return "a regular file"
    return _FILE_TYPES.get(stat.S_IFMT(mode), "not a regular file")


def verify_manifest(
    doc: dict,
    roots: CacheRoots,
    *,
    deep: bool = False,
    strict: bool = False,
    workers: int | None = None,
    progress: bool = False,
) -> VerifyReport:
    """Check the copy under `roots` against a manifest: O(entries) without `deep`."""
    report = VerifyReport(roots=roots, dataset=doc.get("dataset", ""), deep=deep, strict=strict)

    def bad(rel, kind, message, expected=None, found=None):
        report.mismatches.append(
            Mismatch(rel, kind, message, str(roots.path(rel)), expected, found)
        )

    jobs = []
    entries = {e["path"]: e for e in doc["entries"]}
    for rel, entry in entries.items():
        report.entries += 1
        path = roots.path(rel)
        want_link = entry["type"] == "symlink"
        if want_link:
            report.symlinks += 1
        else:
            report.files += 1
            report.bytes += entry["size"]
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            bad(rel, "missing", "missing")
            continue
        except PermissionError:
            bad(rel, "unreadable", "cannot be looked at: a folder above it is not searchable")
            continue
        if want_link:
            if not stat.S_ISLNK(st.st_mode):
                bad(rel, "type", f"is {_type_name(st.st_mode)}, the manifest records a symlink")
                continue
            target = os.readlink(path)
            if target != entry["target"]:
                bad(
                    rel,
                    "symlink_target",
                    f"symlink to {target}, the manifest records {entry['target']}",
                    entry["target"],
                    target,
                )
            continue
        if not stat.S_ISREG(st.st_mode):
            found = _type_name(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                found += f" to {os.readlink(path)}"
            bad(rel, "type", f"is {found}, the manifest records a regular file")
        elif st.st_size != entry["size"]:
            bad(
                rel,
                "size",
                f"{st.st_size} bytes, the manifest records {entry['size']}",
                entry["size"],
                st.st_size,
            )
        elif deep:
            jobs.append((rel, path, entry["size"]))
    for rel, result in hash_files(jobs, workers=workers, progress=progress).items():
        entry = entries[rel]
        if isinstance(result, PermissionError):
            bad(rel, "unreadable", "not readable by this user (permission denied)")
        elif isinstance(result, NotRegularFileError):
            bad(rel, "type", f"{result}; the manifest records a regular file")
        elif isinstance(result, Exception):
            bad(rel, "unreadable", f"cannot read: {result}")
        else:
            digest, length = result
            report.files_hashed += 1
            report.bytes_hashed += length
            if length != entry["size"]:
                bad(rel, "size", f"{length} bytes read, the manifest records {entry['size']}")
            elif digest != entry["sha256"]:
                bad(
                    rel,
                    "sha256",
                    f"sha256 {digest}, the manifest records {entry['sha256']}",
                    entry["sha256"],
                    digest,
                )
    _find_extras(report, doc, entries)
    report.mismatches.sort(key=lambda m: m.path)
    report.extras.sort(key=lambda m: m.path)
    return report


def _find_extras(report: VerifyReport, doc: dict, entries: dict) -> None:
    """Files under the dataset id's folders that the manifest does not list (a stale
    `*.incomplete` copy, another snapshot): one line per file, one per unlisted folder."""
    needed = {str(PurePosixPath(rel).parent) for rel in entries}
    for rel in list(needed):
        parent = PurePosixPath(rel)
        while len(parent.parts) > 1:
            parent = parent.parent
            needed.add(str(parent))
    roots = report.roots
    stack = [r for r in doc["roots"] if os.path.isdir(roots.path(r))]
    while stack:
        folder = stack.pop()
        try:
            items = list(os.scandir(roots.path(folder)))
        except OSError as e:
            report.mismatches.append(
                Mismatch(folder, "unreadable", f"folder cannot be listed: {e.strerror or e}")
            )
            continue
        for item in items:
            rel = f"{folder}/{item.name}"
            if rel in entries:
                continue
            is_dir = item.is_dir(follow_symlinks=False)
            if is_dir and rel in needed:
                stack.append(rel)
                continue
            if (is_dir and item.name in _BOOKKEEPING_DIRS) or (
                not is_dir and item.name.endswith(_BOOKKEEPING_FILE_SUFFIX)
            ):
                continue
            if is_dir:
                count = sum(len(files) for _, _, files in os.walk(item.path))
                what = f"a folder of {count} files not in the manifest"
            elif item.is_symlink():
                what = f"a symlink to {os.readlink(item.path)} not in the manifest"
            else:
                size = item.stat(follow_symlinks=False).st_size
                what = f"a file of {size} bytes not in the manifest"
            report.extras.append(Mismatch(rel, "extra", what, item.path))
