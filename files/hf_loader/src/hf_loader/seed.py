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
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import datetime
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from . import manifest as mf
from .errors import EnvironmentMisconfiguredError, HFLoaderError, TransferError, UpstreamError
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


class SeedRoot:
    """The seeding folders of one cache root."""

    def __init__(self, root) -> None:
        self.root = Path(root)
        self.dir = self.root / SEED_DIR
        self.staging = self.dir / "staging"
        self.state_file = self.dir / "state.json"

    def read_state(self) -> State | None:
        try:
            return State.parse(self.state_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError):
            return None  # unreadable or half-understood: as if there were none

    def write_state(self, state: str, mid: str, message: str = "") -> State:
        where = "." if state == "published" else f"{SEED_DIR}/staging"
        st = State(state, mid, where, _now(), message)
        self.dir.mkdir(mode=0o755, exist_ok=True)
        write_atomic(self.state_file, json.dumps(asdict(st), indent=1) + "\n", durable=True)
        return st

    def verify_published(self, doc: dict, *, deep: bool = False) -> mf.VerifyReport:
        return mf.verify_manifest(doc, mf.CacheRoots.under(self.root), deep=deep)

    def verify_staging(self, doc: dict, *, deep: bool = False) -> mf.VerifyReport:
        return mf.verify_manifest(doc, mf.CacheRoots.under(self.staging), deep=deep)

    def prepare(self, doc: dict) -> None:
        """Staging for this manifest: a different manifest's leftovers removed (they are
        only ever seeding's own files), the published folders hard-linked in, state
        `receiving`."""
        if not self.root.is_dir():
            raise EnvironmentMisconfiguredError(
                f"the cache root {self.root} is not a folder",
                path=str(self.root),
                remedy="mount the dataset volume there first (site.yml --tags volume)",
            )
        mid = manifest_id(doc)
        current = self.read_state()
        if current and current.manifest_id != mid and self.staging.exists():
            shutil.rmtree(self.staging)
        for sub in (self.dir, self.staging):
            sub.mkdir(mode=0o755, exist_ok=True)
        for top in doc["roots"]:
            published, staged = self.root / top, self.staging / top
            if published.is_dir() and not staged.exists():
                staged.parent.mkdir(parents=True, exist_ok=True)
                # Hard links: no data copied; rsync replaces a file by renaming a new one
                # over its name, so the published file itself is never written.
                subprocess.run(["cp", "-al", str(published), str(staged)], check=True)
        if not current or current.manifest_id != mid or current.state != "receiving":
            self.write_state("receiving", mid)

    def publish(self, doc: dict) -> list[str]:
        """Move the verified staging folders into the root; the folders published."""
        mid = manifest_id(doc)
        current = self.read_state()
        if not current or current.manifest_id != mid or current.state != "verified":
            raise UpstreamError(
                f"{self.staging} holds no verified copy of this manifest to publish",
                path=str(self.state_file),
                remedy="run `hf-cache-seed pull` (or push) and let it finish first",
            )
        published = []
        # hub first: a reader that finds the Arrow folder finds the hub files it was made from.
        for top in sorted(doc["roots"], key=lambda t: not t.startswith("hub/")):
            staged, target = self.staging / top, self.root / top
            for leftover in staged.rglob(PARTIAL_DIR):  # of files completed from elsewhere
                shutil.rmtree(leftover)
            _read_only_tree(staged)
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                exchange(staged, target)
                shutil.rmtree(staged)  # the replaced folder: hard links and replaced files
            else:
                os.rename(staged, target)
            published.append(top)
        self.write_state("published", mid)
        shutil.rmtree(self.staging, ignore_errors=True)
        return published


def _read_only_tree(top: Path) -> None:
    """Owned by root and not writable by anyone else: the training user only reads."""
    is_root = os.geteuid() == 0
    for dirpath, dirnames, filenames in os.walk(top):
        for name in [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if is_root and (st.st_uid or st.st_gid):
                os.lchown(path, 0, 0)
            if not os.path.islink(path):
                os.chmod(path, 0o755 if os.path.isdir(path) else 0o644)
    if is_root:
        os.chown(top, 0, 0)
    os.chmod(top, 0o755)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange(a: Path, b: Path) -> None:
    """Swap two paths in one step (renameat2 RENAME_EXCHANGE); on a filesystem without it,
    two renames with the old folder set aside for the moment between them."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is not None:
        rc = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
        if rc == 0:
            return
    aside = b.with_name(b.name + ".hf-seed-old")
    os.rename(b, aside)
    os.rename(a, b)
    os.rename(aside, a)


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
    fd, name = tempfile.mkstemp(prefix="hf-seed-files.", text=True)
    with os.fdopen(fd, "w") as f:
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
    # list holds only files that do not match, same size and mtime or not.
    return [
        "-a",
        "--no-owner",
        "--no-group",
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
            result.count(proc, "Total bytes received")
            before = len(todo)
            todo = _todo(seed.verify_staging(doc))
            if len(todo) < before:
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
