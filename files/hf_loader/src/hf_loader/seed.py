"""Seeding a cache root with a verified copy: rsync into staging, verify, publish by rename.

A cache root R is an HF_HOME-style folder (R/datasets, R/hub: the layout of a manifest's
paths). Seeding writes only under R/.hf-seed until the copy is verified:

    R/.hf-seed/staging/{datasets,hub}/...   the copy being received: complete files only
                                            (rsync writes each file to a temp name and
                                            renames it when its checksum matched)
    R/.hf-seed/staging/.../.hf-seed-partial/  rsync's partial files beside the files they
                                            belong to, the basis of a resume (rsync leaves
                                            them out of every transfer and removes them
                                            once the file is complete)
    R/.hf-seed/state.json                   where this host stands (`State`)

States: `receiving` (staging is being filled), `verified` (staging matches the manifest),
`published` (R itself holds the verified copy), `failed` (the last transfer gave up).
A host that is receiving already serves the files it has: a downstream host pulls what is
complete from the upstream's staging again and again until the upstream is verified,
then once more, so a chain or tree of hosts copies at the same time (pipelined fan-out).

Publishing moves each of the manifest's dataset folders (`datasets/ns___name`,
`hub/datasets--ns--name`) from staging into R with one rename each (an atomic exchange
where R already has that folder), so a reader of R sees the old folder or the whole new
one, never half of a copy. A folder being replaced is first hard-linked into staging, so
its other files (other configs, revisions) are kept and only the files that differ are
transferred.

Trust: the cache root, R/.hf-seed and everything under it are root's (the user running the
tool); each is checked with lstat before it is written into, and a symlink, another owner
or a folder writable by others is refused (UnsafeSeedPathError) rather than followed.
Walks and mode changes go through folder descriptors opened with O_NOFOLLOW, so no link
in staging can make root touch a file outside it. `publish` trusts no state file: it walks
staging itself and checks every file's size and sha256 and every symlink's target against
the manifest before one rename. Every file received from a peer is hashed when it arrives
(a same-size poisoned file is refused and the peer named); so a received file is hashed
twice (on arrival, and by publish), a hard-linked one once (by publish).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import datetime
import errno
import hashlib
import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from . import manifest as mf
from .errors import (
    EnvironmentMisconfiguredError,
    HFLoaderError,
    TransferError,
    UnsafeSeedPathError,
    UpstreamError,
)
from .report import write_atomic

SEED_DIR = ".hf-seed"
STATES = ("receiving", "verified", "published", "failed")
COMPLETE = ("verified", "published")
# rsync's exit codes that mean "some files were not there (yet)": normal while pulling from
# an upstream that is still receiving.
RSYNC_PARTIAL = (23, 24)


def manifest_id(doc: dict) -> str:
    """What the copy is (dataset, config, revision, every entry), not when it was listed."""
    what = {k: doc.get(k) for k in ("dataset", "config", "revision", "entries")}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class State:
    state: str
    manifest_id: str
    # Where a downstream host reads the copy, relative to the cache root.
    where: str
    updated_at: str = ""
    message: str = ""

    @classmethod
    def parse(cls, text: str) -> State:
        doc = json.loads(text)
        if doc.get("state") not in STATES:
            raise ValueError(f"unknown state {doc.get('state')!r}")
        return cls(**{k: str(doc.get(k, "")) for k in cls.__dataclass_fields__})


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# Folder descriptors never follow a symlink: a link where a folder belongs is an error.
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO opens at once (and is then refused by its type) instead of waiting.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# Where the two-renames fallback of `exchange` sets the old folder aside, beside it.
ASIDE_SUFFIX = ".hf-seed-old"

_ROOT_REMEDY = (
    "the cache root and everything in it are root's, readers only read: chown root:root "
    "{path} && chmod 0755 {path} (site.yml --tags volume,env does it)"
)
_SEED_REMEDY = (
    "{path} is seeding's scratch space and may have been planted: remove it as root "
    "(rm -rf -- {path}) and rerun the seed, which recreates it root-owned, mode 0700"
)


def _check_folder(st: os.stat_result, path, what: str, remedy: str) -> None:
    """A folder root may write into: a real folder (lstat), of this user, not writable by
    group or others. Anything else is refused, naming the path and the fix."""
    fix = remedy.format(path=path)
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeSeedPathError(
            f"{what} {path} is a symlink: it is never followed", path=str(path), remedy=fix
        )
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeSeedPathError(f"{what} {path} is not a folder", path=str(path), remedy=fix)
    if st.st_uid != os.geteuid():
        raise UnsafeSeedPathError(
            f"{what} {path} is owned by uid {st.st_uid}, not by uid {os.geteuid()} "
            "(another account could steer what root writes there)",
            path=str(path),
            remedy=fix,
        )
    if st.st_mode & 0o022:
        raise UnsafeSeedPathError(
            f"{what} {path} is writable by group or others (mode {st.st_mode & 0o7777:04o})",
            path=str(path),
            remedy=fix,
        )


def _open_folder(
    name: str, dir_fd: int, path, what: str, remedy: str, *, create: int | None = None
) -> int:
    """A descriptor of the folder `name` in dir_fd, checked (_check_folder) with lstat and
    again on the descriptor; created with mode `create` when missing and create is set."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        if create is None:
            raise
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, create, dir_fd=dir_fd)
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    _check_folder(st, path, what, remedy)
    fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    if not os.path.samestat(st, os.fstat(fd)):
        os.close(fd)
        raise UnsafeSeedPathError(
            f"{what} {path} changed while it was checked", path=str(path), remedy=remedy
        )
    return fd


def _open_chain(base_fd: int, parts: list[str]) -> int:
    """A descriptor of base/parts[0]/parts[1]/..., every step a real folder (O_NOFOLLOW)."""
    fd = os.dup(base_fd)
    try:
        for part in parts:
            nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def _lstat_or_none(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _inside(rel: str, target: str, top: str) -> bool:
    """Whether the symlink `rel` (a manifest path) pointing to `target` stays in folder `top`."""
    if not target or target.startswith("/"):
        return False
    return mf.link_destination(rel, target).startswith(top + "/")


class SeedRoot:
    """The seeding folders of one cache root."""

    def __init__(self, root) -> None:
        self.root = Path(root)
        self.dir = self.root / SEED_DIR
        self.staging = self.dir / "staging"
        self.state_file = self.dir / "state.json"

    def require_folder(self) -> None:
        """The cache root is a folder (a reader's check: who owns it does not matter)."""
        if not self.root.is_dir():
            raise EnvironmentMisconfiguredError(
                f"the cache root {self.root} is not a folder",
                path=str(self.root),
                remedy="mount the dataset volume there first (site.yml --tags volume)",
            )

    def read_only(self) -> bool:
        """Whether the cache root lies on a read-only mount (a read-only volume or bind)."""
        return bool(os.statvfs(self.root).f_flag & os.ST_RDONLY)

    def _require_writable(self, root_fd: int) -> None:
        if os.fstatvfs(root_fd).f_flag & os.ST_RDONLY:
            raise EnvironmentMisconfiguredError(
                f"the cache root {self.root} is on a read-only mount: nothing can be seeded "
                "into it",
                path=str(self.root),
                remedy="mount the dataset volume read-write for the seed "
                "(dataset_volume_read_only: false, or mount -o remount,rw), or seed another root",
            )

    # ----------------------------------------------------------------- checked descriptors

    @contextlib.contextmanager
    def _root_fd(self) -> Iterator[int]:
        """The cache root (as the operator named it), checked: root's, not writable by others."""
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            raise EnvironmentMisconfiguredError(
                f"the cache root {self.root} is not a folder",
                path=str(self.root),
                remedy="mount the dataset volume there first (site.yml --tags volume)",
            ) from None
        try:
            _check_folder(os.fstat(fd), self.root, "the cache root", _ROOT_REMEDY)
            yield fd
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _seed_fd(self, *, create: bool) -> Iterator[tuple[int, int | None]]:
        """(the root's descriptor, R/.hf-seed's or None when it is missing and not created).
        Created 0700; an existing one is accepted root-owned and not writable by others (the
        role makes it 0750 for the seed account's group, which serves it to the next host)."""
        with self._root_fd() as root_fd:
            if create:
                self._require_writable(root_fd)
            try:
                fd = _open_folder(
                    SEED_DIR,
                    root_fd,
                    self.dir,
                    "the seeding folder",
                    _SEED_REMEDY,
                    create=0o700 if create else None,
                )
            except FileNotFoundError:
                yield root_fd, None
                return
            try:
                yield root_fd, fd
            finally:
                os.close(fd)

    def _staging_fd(self, seed_fd: int, *, create: bool) -> int:
        return _open_folder(
            "staging",
            seed_fd,
            self.staging,
            "the staging folder",
            _SEED_REMEDY.replace("{path}", str(self.dir)),
            create=0o755 if create else None,
        )

    # ----------------------------------------------------------------- state

    def read_state(self) -> State | None:
        """This host's recorded state: for display and for the hosts downstream, never a
        reason to publish."""
        with self._seed_fd(create=False) as (_root, fd):
            if fd is None:
                return None
            try:
                sfd = os.open("state.json", _FILE_FLAGS, dir_fd=fd)
            except OSError:
                return None  # missing, or a link where the file belongs: as if there were none
            try:
                with os.fdopen(sfd, "rb") as f:
                    if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                        return None
                    return State.parse(f.read().decode("utf-8"))
            except (OSError, ValueError, TypeError):
                return None  # unreadable or half-understood: as if there were none

    def write_state(self, state: str, mid: str, message: str = "") -> State:
        where = "." if state == "published" else f"{SEED_DIR}/staging"
        st = State(state, mid, where, _now(), message)
        # The folder is checked (root's, not a link); the file is replaced by rename in it.
        with self._seed_fd(create=True):
            write_atomic(self.state_file, json.dumps(asdict(st), indent=1) + "\n", durable=True)
        return st

    def verify_published(self, doc: dict, *, deep: bool = False) -> mf.VerifyReport:
        return mf.verify_manifest(doc, mf.CacheRoots.under(self.root), deep=deep)

    def verify_staging(self, doc: dict, *, deep: bool = False) -> mf.VerifyReport:
        return mf.verify_manifest(doc, mf.CacheRoots.under(self.staging), deep=deep)

    # ----------------------------------------------------------------- recovery

    def recover(self, doc: dict) -> list[str]:
        """Undo a publish that stopped between the two renames of `exchange`'s fallback: a
        dataset folder that is missing with its old copy set aside gets it back; an aside
        left beside a published folder is removed. The dataset folders recovered."""
        recovered = []
        with self._root_fd() as root_fd:
            for top in doc["roots"]:
                *parents, name = top.split("/")
                try:
                    parent_fd = _open_chain(root_fd, parents)
                except FileNotFoundError:
                    continue
                try:
                    aside = name + ASIDE_SUFFIX
                    st = _lstat_or_none(aside, parent_fd)
                    if st is None:
                        continue
                    _check_folder(
                        st, self.root / f"{top}{ASIDE_SUFFIX}", "the set-aside copy", _ROOT_REMEDY
                    )
                    if _lstat_or_none(name, parent_fd) is None:
                        os.rename(aside, name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
                        recovered.append(top)
                    else:  # the new folder is in place: the aside is the replaced one
                        shutil.rmtree(aside, dir_fd=parent_fd)
                finally:
                    os.close(parent_fd)
        return recovered

    # ----------------------------------------------------------------- prepare, publish

    def prepare(self, doc: dict) -> None:
        """Staging for this manifest: a different manifest's leftovers removed (they are
        only ever seeding's own files), the published folders hard-linked in, state
        `receiving`."""
        mid = manifest_id(doc)
        with self._seed_fd(create=True) as (root_fd, seed_fd):
            self.recover(doc)
            current = self.read_state()
            if current and current.manifest_id != mid and _lstat_or_none("staging", seed_fd):
                shutil.rmtree("staging", dir_fd=seed_fd)
            staging_fd = self._staging_fd(seed_fd, create=True)
            try:
                for top in doc["roots"]:
                    _clear_non_folders(staging_fd, top)
            finally:
                os.close(staging_fd)
            for top in doc["roots"]:
                published, staged = self.root / top, self.staging / top
                if _is_folder_beneath(root_fd, top) and not os.path.lexists(staged):
                    staged.parent.mkdir(parents=True, exist_ok=True)
                    # Hard links: no data copied; rsync replaces a file by renaming a new one
                    # over its name, so the published file itself is never written.
                    subprocess.run(
                        [
                            "cp",
                            "-a",
                            "--link",
                            "--no-dereference",
                            "--",
                            str(published),
                            str(staged),
                        ],
                        check=True,
                    )
        if not current or current.manifest_id != mid or current.state != "receiving":
            self.write_state("receiving", mid)

    def publish(self, doc: dict, *, workers: int | None = None) -> list[str]:
        """Move the staging folders into the root once they match the manifest; the folders
        published. Checks everything itself (sizes, sha256, symlink targets inside the
        folder, no device or FIFO) through descriptors that never follow a link; the state
        file is not consulted. Files that do not match are removed from staging (a rerun
        copies them again) and nothing is published."""
        mid = manifest_id(doc)
        no_copy = UpstreamError(
            f"{self.staging} holds no copy of this manifest to publish",
            path=str(self.staging),
            remedy="run `hf-cache-seed pull` (or push) and let it finish first",
        )
        # hub first: a reader that finds the Arrow folder finds the hub files it was made from.
        tops = sorted(doc["roots"], key=lambda t: not t.startswith("hub/"))
        with self._seed_fd(create=False) as (root_fd, seed_fd):
            if seed_fd is None or _lstat_or_none("staging", seed_fd) is None:
                raise no_copy
            self._require_writable(root_fd)
            self.recover(doc)
            staging_fd = self._staging_fd(seed_fd, create=False)
            try:
                entries = {e["path"]: e for e in doc["entries"]}
                for top in tops:
                    if not _is_folder_beneath(staging_fd, top, refuse_link=self.staging / top):
                        raise no_copy
                _verify_staged(self.staging, staging_fd, tops, entries, workers)
                published = []
                for top in tops:
                    self._publish_one(root_fd, staging_fd, top)
                    published.append(top)
            finally:
                os.close(staging_fd)
            self.write_state("published", mid)
            shutil.rmtree("staging", dir_fd=seed_fd, ignore_errors=True)
        return published

    def _publish_one(self, root_fd: int, staging_fd: int, top: str) -> None:
        *parents, name = top.split("/")
        src_fd = _open_chain(staging_fd, parents)
        dst_fd = os.dup(root_fd)
        try:
            path = self.root
            for part in parents:  # datasets/, hub/: root's, created when missing
                path = path / part
                nxt = _open_folder(
                    part, dst_fd, path, "the cache folder", _ROOT_REMEDY, create=0o755
                )
                os.close(dst_fd)
                dst_fd = nxt
            _read_only_tree(src_fd, name)
            target = _lstat_or_none(name, dst_fd)
            if target is None:
                os.rename(name, name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
            else:
                _check_folder(target, self.root / top, "the dataset folder", _ROOT_REMEDY)
                exchange(src_fd, name, dst_fd, name)
                # the replaced folder: hard links and replaced files
                shutil.rmtree(name, dir_fd=src_fd)
        finally:
            os.close(src_fd)
            os.close(dst_fd)


def _clear_non_folders(base_fd: int, rel: str) -> bool:
    """Remove whatever stands in staging where a folder of rel belongs (a symlink, a file):
    rsync and `cp` would write through a link. Whether something was removed."""
    fd = os.dup(base_fd)
    try:
        for part in rel.split("/"):
            st = _lstat_or_none(part, fd)
            if st is None:
                return False
            if not stat.S_ISDIR(st.st_mode):
                os.unlink(part, dir_fd=fd)
                return True
            nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nxt
        return False
    finally:
        os.close(fd)


def _is_folder_beneath(base_fd: int, rel: str, *, refuse_link=None) -> bool:
    """Whether base/rel is a real folder, no component a symlink. With refuse_link (its
    path, for the message) a symlink on the way is refused instead of answering False."""
    *parents, name = rel.split("/")
    try:
        fd = _open_chain(base_fd, parents)
    except FileNotFoundError:
        return False
    except OSError:  # ELOOP/ENOTDIR: a link or a file where a folder belongs
        if refuse_link is not None:
            _clear_non_folders(base_fd, rel)
            raise UnsafeSeedPathError(
                f"{refuse_link}: a symlink or file stands where a folder belongs above it",
                path=str(refuse_link),
                remedy=_SEED_REMEDY.format(path=Path(refuse_link).parents[len(parents)]),
            ) from None
        return False
    try:
        st = _lstat_or_none(name, fd)
    finally:
        os.close(fd)
    if st is not None and stat.S_ISLNK(st.st_mode) and refuse_link is not None:
        _clear_non_folders(base_fd, rel)
        raise UnsafeSeedPathError(
            f"{refuse_link} is a symlink: it is never published or followed",
            path=str(refuse_link),
            remedy="rerun the seed: staging is filled again from the manifest",
        )
    return st is not None and stat.S_ISDIR(st.st_mode)


def _verify_staged(
    staging: Path, staging_fd: int, tops: list[str], entries: dict, workers: int | None
) -> None:
    """Staging's dataset folders against the manifest, by walking them through descriptors
    (os.fwalk, no link followed): every listed file present with its size and sha256,
    every listed symlink with its target, no symlink leading out of its folder, no device,
    FIFO or socket. Files not listed (another config kept from the published folder) stay.
    What does not match is removed from staging; then the publish is refused."""
    problems: list[str] = []
    unsafe: list[str] = []
    bad: list[str] = []  # manifest-relative paths to remove from staging
    jobs: list[tuple[str, dict]] = []
    for top in tops:
        *parents, name = top.split("/")
        expected = {rel: e for rel, e in entries.items() if rel.startswith(top + "/")}
        seen: set[str] = set()
        parent_fd = _open_chain(staging_fd, parents)
        try:
            walk = os.fwalk(name, dir_fd=parent_fd, follow_symlinks=False)
            for dirpath, dirnames, filenames, dfd in walk:
                base = "/".join([*parents, dirpath])
                if PARTIAL_DIR in dirnames:  # rsync's leftovers of files completed elsewhere
                    shutil.rmtree(PARTIAL_DIR, dir_fd=dfd)
                    dirnames.remove(PARTIAL_DIR)
                real_dirs = []
                for item in [*dirnames, *filenames]:
                    rel = f"{base}/{item}"
                    st = os.stat(item, dir_fd=dfd, follow_symlinks=False)
                    entry = expected.get(rel)
                    if entry is not None:
                        seen.add(rel)
                    if stat.S_ISDIR(st.st_mode):
                        real_dirs.append(item)
                        if entry is not None:
                            problems.append(
                                f"{rel}: a folder, the manifest records a {entry['type']}"
                            )
                    elif stat.S_ISLNK(st.st_mode):
                        target = os.readlink(item, dir_fd=dfd)
                        if not _inside(rel, target, top):
                            unsafe.append(f"{rel}: a symlink to {target}, out of {top}")
                            bad.append(rel)
                        elif entry is not None and entry["type"] != "symlink":
                            problems.append(f"{rel}: a symlink, the manifest records a file")
                            bad.append(rel)
                        elif entry is not None and target != entry["target"]:
                            wanted = entry["target"]
                            problems.append(f"{rel}: a symlink to {target}, not {wanted}")
                            bad.append(rel)
                    elif stat.S_ISREG(st.st_mode):
                        if entry is None:
                            continue
                        if entry["type"] != "file":
                            problems.append(
                                f"{rel}: a regular file, the manifest records a symlink"
                            )
                            bad.append(rel)
                        elif st.st_size != entry["size"]:
                            problems.append(
                                f"{rel}: {st.st_size} bytes, the manifest records {entry['size']}"
                            )
                            bad.append(rel)
                        else:
                            jobs.append((rel, entry))
                    else:
                        what = mf._type_name(st.st_mode)
                        unsafe.append(f"{rel}: {what}, never published")
                        bad.append(rel)
                # Descend into real folders only (fwalk would open a linked one to compare it).
                dirnames[:] = [d for d in dirnames if d in real_dirs]
        finally:
            os.close(parent_fd)
        problems.extend(f"{rel}: missing" for rel in sorted(expected.keys() - seen))

    def digest(job: tuple[str, dict]) -> tuple[str, dict, str | Exception]:
        rel, entry = job
        try:
            return rel, entry, _sha256_beneath(staging_fd, rel)
        except OSError as e:
            return rel, entry, e

    with ThreadPoolExecutor(max_workers=workers or mf.default_workers()) as pool:
        for rel, entry, result in pool.map(digest, sorted(jobs, key=lambda j: -j[1]["size"])):
            if isinstance(result, Exception):
                problems.append(f"{rel}: cannot be read: {result}")
                bad.append(rel)
            elif result != entry["sha256"]:
                problems.append(f"{rel}: sha256 {result}, the manifest records {entry['sha256']}")
                bad.append(rel)
    for rel in bad:
        _unlink_beneath(staging_fd, rel)
    if unsafe:
        raise UnsafeSeedPathError(
            f"{staging} holds what is never published, so nothing was ({len(unsafe)}): "
            + "; ".join(unsafe[:5]),
            path=str(staging),
            remedy="those entries were removed from staging: rerun the seed, which copies "
            "the files named again (an upstream that sent them is not to be trusted)",
        )
    if problems:
        raise UpstreamError(
            f"{staging} does not match the manifest, so nothing was published "
            f"({len(problems)}): " + "; ".join(problems[:5]),
            path=str(staging),
            remedy="the files named were removed from staging: rerun the seed, which copies "
            "them again",
        )


def _sha256_beneath(base_fd: int, rel: str) -> str:
    """sha256 of the regular file base/rel, opened with no link followed on the way."""
    *parents, name = rel.split("/")
    dfd = _open_chain(base_fd, parents)
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dfd)
    finally:
        os.close(dfd)
    with os.fdopen(fd, "rb", buffering=0) as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{rel} is not a regular file")
        os.set_blocking(fd, True)
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        digest = hashlib.sha256()
        buffer = bytearray(mf.HASH_BUFFER)
        view = memoryview(buffer)
        while n := f.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


def _unlink_beneath(base_fd: int, rel: str) -> None:
    """Remove base/rel (a file or a link, never what a link points to)."""
    *parents, name = rel.split("/")
    with contextlib.suppress(OSError):
        dfd = _open_chain(base_fd, parents)
        try:
            os.unlink(name, dir_fd=dfd)
        finally:
            os.close(dfd)


def _read_only_tree(parent_fd: int, name: str) -> None:
    """Owned by root and not writable by anyone else: the training user only reads. Through
    descriptors: a symlink gets its own owner changed (lchown) and nothing else; what it
    points to, and what lies behind a linked folder, is never touched."""
    is_root = os.geteuid() == 0
    for _dirpath, dirnames, filenames, dfd in os.fwalk(
        name, dir_fd=parent_fd, follow_symlinks=False
    ):
        st = os.fstat(dfd)
        if is_root and (st.st_uid or st.st_gid):
            os.fchown(dfd, 0, 0)
        os.fchmod(dfd, 0o755)
        real_dirs = []
        for item in [*dirnames, *filenames]:
            st = os.stat(item, dir_fd=dfd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                real_dirs.append(item)
            elif stat.S_ISLNK(st.st_mode):
                if is_root and (st.st_uid or st.st_gid):
                    os.chown(item, 0, 0, dir_fd=dfd, follow_symlinks=False)
            elif stat.S_ISREG(st.st_mode):
                fd = os.open(item, _FILE_FLAGS, dir_fd=dfd)
                try:
                    if not os.path.samestat(st, os.fstat(fd)):
                        raise UnsafeSeedPathError(f"{item} changed while it was made read-only")
                    if is_root and (st.st_uid or st.st_gid):
                        os.fchown(fd, 0, 0)
                    os.fchmod(fd, 0o644)
                finally:
                    os.close(fd)
            else:
                raise UnsafeSeedPathError(f"{item}: {mf._type_name(st.st_mode)}, never published")
        dirnames[:] = [d for d in dirnames if d in real_dirs]


_RENAME_EXCHANGE = 2


def _exchange_in_one_step(a_dir: int, a: str, b_dir: int, b: str) -> bool:
    """renameat2(RENAME_EXCHANGE); False where the C library or the filesystem lacks it."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    rc = renameat2(a_dir, os.fsencode(a), b_dir, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), b)


def exchange(a_dir: int, a: str, b_dir: int, b: str) -> None:
    """Swap a (in folder a_dir) and b (in b_dir) in one step; on a filesystem without it,
    two renames with the old b set aside beside it (b + ASIDE_SUFFIX) for the moment
    between them. A crash in that moment leaves the aside, which `SeedRoot.recover` (at the
    next prepare or publish) renames back: the dataset folder is never left missing."""
    if _exchange_in_one_step(a_dir, a, b_dir, b):
        return
    aside = b + ASIDE_SUFFIX
    os.rename(b, aside, src_dir_fd=b_dir, dst_dir_fd=b_dir)
    os.rename(a, b, src_dir_fd=a_dir, dst_dir_fd=b_dir)
    os.rename(aside, a, src_dir_fd=b_dir, dst_dir_fd=a_dir)


# --------------------------------------------------------------------------- transfers


@dataclass
class Upstream:
    """Where a copy is read from: `base` is prefixed to paths relative to its cache root
    ("hf-seed@10.0.0.7:" through rrsync, or a local folder such as an NFS mount)."""

    base: str
    rsh: str = ""
    bwlimit_kbps: int = 0
    timeout: int = 60

    @property
    def label(self) -> str:
        return self.base.rstrip(":/") or "."

    @property
    def remote(self) -> bool:
        """rsync's own rule: HOST:PATH (a colon before any slash) or rsync://... is remote."""
        head = self.base.split("/", 1)[0]
        return ":" in head or self.base.startswith("rsync://")

    def rsync(self, *args: str) -> subprocess.CompletedProcess:
        cmd = ["rsync", f"--timeout={self.timeout}"]
        if self.rsh:
            cmd.append(f"--rsh={self.rsh}")
        if self.bwlimit_kbps:
            cmd.append(f"--bwlimit={self.bwlimit_kbps}")
        return run_to_the_end([*cmd, *args])

    def copy(self, paths: list[str], src: str, dest: str, *extra: str):
        """rsync exactly `paths` (relative to src) from src into dest."""
        listing = _files_from(paths)
        try:
            return self.rsync(*rsync_args(listing), *extra, src, dest)
        finally:
            os.unlink(listing)

    def state(self) -> State | None:
        """The upstream's state.json; None when it has none (a plain source folder)."""
        with tempfile.TemporaryDirectory(prefix="hf-seed-state.") as tmp:
            proc = self.rsync(f"{self.base}{SEED_DIR}/state.json", tmp + "/")
            local = Path(tmp) / "state.json"
            if proc.returncode == 0 and local.exists():
                try:
                    return State.parse(local.read_text(encoding="utf-8"))
                except (ValueError, TypeError) as e:
                    raise UpstreamError(
                        f"{self.label}: its {SEED_DIR}/state.json cannot be read: {e}",
                        remedy="rerun the seed on that host, or use another source",
                    ) from None
            if proc.returncode in RSYNC_PARTIAL:
                return None
            raise TransferError(
                f"{self.label}: cannot reach the copy (rsync exit {proc.returncode}): "
                + _last_line(proc.stderr),
                remedy="check that the host is up, that rsync and sshd run there, and the "
                "seed key (see playbooks/seed.yml)",
            )


def run_to_the_end(argv: list[str]) -> subprocess.CompletedProcess:
    """Run rsync; when this process is interrupted (SIGINT, SIGTERM), rsync is interrupted as
    by Ctrl-C and waited for (never killed outright), so it keeps the partial file a rerun
    resumes from."""
    # Its own process group: rsync forks (a receiver, a generator, ssh), and Ctrl-C reaches
    # all of them at once; that is the interruption after which rsync keeps a partial file.
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    ) as p:
        try:
            out, err = p.communicate()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGINT)
            p.wait(timeout=60)
            raise
    return subprocess.CompletedProcess(argv, p.returncode, out, err)


def _last_line(text: str) -> str:
    """rsync's first specific complaint (the file and why) and its closing summary."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return "no message"
    first = next((line for line in lines if not line.startswith("rsync error:")), None)
    return lines[-1] if first in (None, lines[-1]) else f"{first} ... {lines[-1]}"


def _files_from(paths: list[str]) -> str:
    # Manifest names are UTF-8 without control characters (load_manifest refuses others), so
    # one name a line is exact; never the locale's encoding.
    fd, name = tempfile.mkstemp(prefix="hf-seed-files.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("".join(p + "\n" for p in paths))
    return name


def _todo(report: mf.VerifyReport) -> list[str]:
    return sorted({m.path for m in report.mismatches})


@dataclass
class PullResult:
    manifest_id: str
    upstream: str
    passes: int = 0
    files_transferred: int = 0
    bytes_received: int = 0
    seconds: float = 0.0

    def count(self, proc: subprocess.CompletedProcess, bytes_label: str) -> None:
        """Add one rsync pass, from its --stats."""
        self.passes += 1
        self.files_transferred += _stat(proc.stdout, "Number of regular files transferred")
        self.bytes_received += _stat(proc.stdout, bytes_label)


# Relative: a folder beside each file. rsync 3.2.7 (Debian 12) fails the checksum of a file
# resumed from an absolute --partial-dir when the sender is remote ("failed verification --
# update put into partial-dir"), every time; a relative one resumes (found in the hf_seed
# Molecule scenario, rsync 3.2.7 on both ends).
PARTIAL_DIR = ".hf-seed-partial"


def rsync_args(files_from: str) -> list[str]:
    # -a without owner and group: the receiver (root) owns the copy; --ignore-times: the
    # list holds only files that do not match, same size and mtime or not. A peer may be
    # compromised, so the receiver (this one, or the host's on a push: the options travel
    # to it) creates no device or special file, acts as no super-user (--no-super: no
    # chown, no mknod, whatever the peer's list says) and keeps no symlink that leads out of
    # the copy (--safe-links); what it writes is read-only for the others (--chmod).
    return [
        "-a",
        "--no-owner",
        "--no-group",
        "--no-devices",
        "--no-specials",
        "--no-super",
        "--safe-links",
        "--chmod=D755,F644",
        "--ignore-times",
        f"--partial-dir={PARTIAL_DIR}",
        f"--files-from={files_from}",
        "--stats",
    ]


def _stat(stdout: str, label: str) -> int:
    for line in stdout.splitlines():
        if line.startswith(label + ":"):
            digits = "".join(ch for ch in line.split(":", 1)[1].split("(")[0] if ch.isdigit())
            return int(digits or 0)
    return 0


def pull(
    seed: SeedRoot,
    doc: dict,
    upstream: Upstream,
    *,
    deep: bool = False,
    poll: float = 2.0,
    stall_timeout: float = 600.0,
    attempts: int = 3,
    log: Callable[[str], None] = lambda _m: None,
) -> PullResult:
    """Fill staging from `upstream` until it matches the manifest; state `verified`.

    While the upstream is still receiving, each pass takes the files it has completed;
    once it is verified (or a plain complete source), one last pass takes the rest.
    """
    mid = manifest_id(doc)
    result = PullResult(mid, upstream.label)
    started = last_progress = time.monotonic()
    seed.prepare(doc)
    # The first look may hash (deep): a flipped byte in a hard-linked file is found here.
    todo = _todo(seed.verify_staging(doc, deep=deep))
    failures = 0
    try:
        while todo:
            st = upstream.state()
            if st is not None and st.manifest_id != mid:
                raise UpstreamError(
                    f"{upstream.label} holds another copy (manifest {st.manifest_id}, "
                    f"this one is {mid})",
                    remedy="seed from a source with this manifest's copy",
                )
            if st is not None and st.state == "failed":
                raise UpstreamError(
                    f"{upstream.label} failed its own copy: {st.message or 'no message'}",
                    remedy="the seed retries this host from another source",
                )
            complete = st is None or st.state in COMPLETE
            where = st.where if st is not None else "."
            proc = upstream.copy(todo, f"{upstream.base}{where.rstrip('/')}/", f"{seed.staging}/")
            # What came from the upstream, rsync's own protocol included. Locally this process
            # is rsync's sender (its "received" is only the receiver's replies).
            result.count(proc, "Total bytes received" if upstream.remote else "Total bytes sent")
            before = todo
            todo = _todo(seed.verify_staging(doc))
            arrived = sorted(set(before) - set(todo))
            todo = sorted({*todo, *_check_received(seed, doc, arrived, upstream, complete, log)})
            if len(todo) < len(before):
                last_progress = time.monotonic()
            log(f"pass {result.passes}: rsync exit {proc.returncode}, {len(todo)} to go")
            # From a complete upstream a pass must end the copy (a file it lacks is a failure).
            if proc.returncode not in (0, *RSYNC_PARTIAL) or (
                complete and (proc.returncode or todo)
            ):
                failures += 1
                if failures >= attempts:
                    raise TransferError(
                        f"rsync from {upstream.label} failed {failures} times "
                        f"(exit {proc.returncode}): {_last_line(proc.stderr)}",
                        path=str(seed.staging),
                        remedy="rerun the seed: it resumes from the partial files",
                    )
            if todo and not complete:
                if time.monotonic() - last_progress > stall_timeout:
                    raise TransferError(
                        f"no file arrived from {upstream.label} for {stall_timeout:.0f} s",
                        path=str(seed.staging),
                        remedy="check the upstream host; the seed retries from another source",
                    )
                time.sleep(poll)
        final = seed.verify_staging(doc, deep=deep)
        if not final.ok:
            raise TransferError(
                f"the received copy does not match the manifest: {final.summary()}",
                path=str(seed.staging),
                remedy="rerun the seed (the files named are copied again)",
            )
    except HFLoaderError as e:
        seed.write_state("failed", mid, e.message)
        raise
    seed.write_state("verified", mid)
    result.seconds = round(time.monotonic() - started, 3)
    return result


def _check_received(
    seed: SeedRoot,
    doc: dict,
    arrived: list[str],
    upstream: Upstream,
    complete: bool,
    log: Callable[[str], None],
) -> list[str]:
    """Hash each file that arrived in this pass against the manifest: a peer may send a
    same-size file with other bytes (compromised, or its disk). Such a file is removed from
    staging. From a complete upstream that refuses the upstream, naming both (the role
    retries from another source); from one still receiving it may be a file of its old copy
    not replaced yet (a ref has the same size in every revision), so it is fetched again
    in a later pass (the paths returned) and the stall timeout ends a peer that never
    sends the right bytes."""
    entries = {e["path"]: e for e in doc["entries"]}
    files = [entries[rel] for rel in arrived if entries[rel]["type"] == "file"]
    if not files:
        return []
    # "roots" left empty: the files named only, not a walk of the folders for extras.
    report = mf.verify_manifest(
        {**doc, "entries": files, "roots": []}, mf.CacheRoots.under(seed.staging), deep=True
    )
    if report.ok:
        return []
    for m in report.mismatches:
        with contextlib.suppress(OSError):
            os.unlink(seed.staging / m.path)
    names = ", ".join(f"{m.path} ({m.message})" for m in report.mismatches[:5])
    if not complete:
        log(f"{upstream.label} is still receiving and sent {names}: fetched again later")
        return [m.path for m in report.mismatches]
    raise UpstreamError(
        f"{upstream.label} sent {len(report.mismatches)} file(s) that do not match the "
        f"manifest's sha256: {names}",
        path=str(seed.staging),
        remedy="those files were removed from staging; the seed retries this host from "
        "another source. Check that upstream's copy (hf-cache-seed status --deep there)",
    )


def finish(seed: SeedRoot, doc: dict, *, deep: bool = False) -> mf.VerifyReport:
    """After a push: verify staging and record `verified`, or `failed` naming the files."""
    mid = manifest_id(doc)
    report = seed.verify_staging(doc, deep=deep)
    if report.ok:
        seed.write_state("verified", mid)
    else:
        seed.write_state("failed", mid, report.summary())
    return report


def mark_failed(seed: SeedRoot, doc: dict, message: str) -> None:
    with contextlib.suppress(OSError):
        seed.write_state("failed", manifest_id(doc), message)


@dataclass
class Remote:
    """A host the controller reaches over SSH, running hf-cache-seed with sudo there."""

    dest: str  # user@address
    rsh: str  # the ssh command line (port, key, options), or `docker exec -i`
    root: str  # the cache root on that host
    manifest: str  # the manifest's path on that host
    command: str = "sudo -n hf-cache-seed"
    rsync_path: str = "sudo -n rsync"

    def seed(self, *args: str) -> dict:
        """Run `hf-cache-seed ARGS --manifest M --root R --json` there; its JSON object."""
        remote = f"{self.command} {shlex.join(args)} --manifest {shlex.quote(self.manifest)} "
        remote += f"--root {shlex.quote(self.root)} --json"
        rsh = shlex.split(self.rsh)
        # ssh hands one command line to the remote shell; `docker exec` (Molecule's
        # containers) runs an argv, so the line goes to sh -c.
        shell = ["sh", "-c"] if Path(rsh[0]).name in ("docker", "podman") else []
        proc = subprocess.run([*rsh, self.dest, *shell, remote], capture_output=True, text=True)
        try:
            return json.loads(proc.stdout)
        except ValueError:
            raise TransferError(
                f"{self.dest}: `hf-cache-seed {args[0]}` gave no answer "
                f"(exit {proc.returncode}): {_last_line(proc.stderr)}",
                remedy="check SSH and sudo to the host, and that the loader is installed "
                "there (site.yml --tags loader)",
            ) from None


def push(
    doc: dict,
    source: Path,
    remote: Remote,
    *,
    bwlimit_kbps: int = 0,
    deep: bool = False,
    attempts: int = 3,
    log: Callable[[str], None] = lambda _m: None,
) -> PullResult:
    """From a complete copy on this machine into a host's staging, then verified there."""
    started = time.monotonic()
    result = PullResult(manifest_id(doc), str(source))
    prepared = remote.seed("prepare", *(["--deep"] if deep else []))
    if prepared.get("exit_code"):
        raise TransferError(
            f"{remote.dest}: cannot prepare the staging folder: "
            f"{(prepared.get('error') or {}).get('message', prepared)}",
            remedy="see the message; rerun the seed",
        )
    todo = prepared["todo"]
    sender = Upstream(f"{source}/", remote.rsh, bwlimit_kbps)
    staging = f"{remote.root}/{SEED_DIR}/staging/"
    failures = 0
    while todo:
        proc = sender.copy(
            todo, f"{source}/", f"{remote.dest}:{staging}", f"--rsync-path={remote.rsync_path}"
        )
        result.count(proc, "Total bytes sent")  # what the host received
        log(f"pass {result.passes}: rsync exit {proc.returncode}")
        if proc.returncode == 0:
            break
        failures += 1
        if failures >= attempts:
            message = f"rsync to {remote.dest} failed {failures} times (exit {proc.returncode})"
            remote.seed("fail", "--message", message)
            raise TransferError(
                f"{message}: {_last_line(proc.stderr)}",
                remedy="rerun the seed: it resumes from the partial files",
            )
    finished = remote.seed("finish", *(["--deep"] if deep else []))
    if finished.get("exit_code"):
        raise TransferError(
            f"{remote.dest}: the pushed copy does not match the manifest: "
            f"{(finished.get('verify') or {}).get('summary', finished)}",
            remedy="rerun the seed (the files named are copied again)",
        )
    result.seconds = round(time.monotonic() - started, 3)
    return result
