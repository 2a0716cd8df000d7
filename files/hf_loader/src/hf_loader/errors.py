"""Typed errors. Each carries the path it is about, the remedy and the CLI exit code."""

from __future__ import annotations

import errno

from .cli.exitcodes import SIGNAL_EXIT_BASE, ExitCode


class HFLoaderError(Exception):
    """Base class: a problem with a path and a remedy."""

    exit_code = ExitCode.INTERNAL
    kind = "error"

    def __init__(self, message: str, *, path: str | None = None, remedy: str = "") -> None:
        self.message = message
        self.path = path
        self.remedy = remedy
        super().__init__(self.__str__())

    def __str__(self) -> str:
        parts = [self.message]
        if self.path:
            parts.append(f"path: {self.path}")
        if self.remedy:
            parts.append(f"fix: {self.remedy}")
        return "\n".join(parts)

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "exit_code": self.exit_code,
            "message": self.message,
            "path": self.path,
            "remedy": self.remedy,
        }


class InternalError(HFLoaderError):
    """An exception no stage expected, not caused by the host: a bug to report. Its record
    (to_dict) is what failed, no path or remedy: the shape hf-cache-seed's JSON has always had."""

    kind = "internal"

    def __init__(self, message: str, *, remedy: str = "report this with the full output") -> None:
        super().__init__(message, remedy=remedy)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "message": self.message}


class EnvironmentMisconfiguredError(HFLoaderError):
    """The dataset volume is not mounted (--require-mount), cache variables point nowhere or to
    unreadable folders, or offline mode is switched off."""

    exit_code = ExitCode.ENVIRONMENT
    kind = "environment"


class NotCachedError(HFLoaderError):
    """No usable copy of the dataset in any cache. Lists every place looked and near misses."""

    exit_code = ExitCode.NOT_CACHED
    kind = "not_cached"

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        remedy: str = "",
        looked: list[str] | None = None,
        near_misses: list[str] | None = None,
    ) -> None:
        self.looked = list(looked or [])
        self.near_misses = list(near_misses or [])
        super().__init__(message, path=path, remedy=remedy)

    def __str__(self) -> str:
        lines = [self.message]
        if self.looked:
            lines.append("looked in:")
            lines.extend(f"  - {p}" for p in self.looked)
        if self.near_misses:
            lines.append("near misses (cached under another id):")
            lines.extend(f"  - {p}" for p in self.near_misses)
        if self.remedy:
            lines.append(f"fix: {self.remedy}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        d = super().to_dict()
        d["looked"] = self.looked
        d["near_misses"] = self.near_misses
        return d


class IncompleteCacheError(HFLoaderError):
    """A cached copy exists but files are missing, truncated, dangling or unreadable."""

    exit_code = ExitCode.INCOMPLETE
    kind = "incomplete"

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        remedy: str = "",
        problems: list | None = None,
    ) -> None:
        self.problems = list(problems or [])
        super().__init__(message, path=path, remedy=remedy)

    def __str__(self) -> str:
        lines = [self.message]
        if self.path:
            lines.append(f"path: {self.path}")
        for p in self.problems[:20]:
            lines.append(f"  - {p}")
        if len(self.problems) > 20:
            lines.append(f"  ... and {len(self.problems) - 20} more")
        if self.remedy:
            lines.append(f"fix: {self.remedy}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        d = super().to_dict()
        d["problems"] = [str(p) for p in self.problems]
        return d


class LoadingFailedError(HFLoaderError):
    """The cache looked complete but reading batches through the DataLoader failed."""

    exit_code = ExitCode.LOADING
    kind = "loading"


class ConfigError(HFLoaderError):
    """A bad config file or flag (usage error)."""

    exit_code = ExitCode.USAGE
    kind = "usage"


class InvalidDatasetIdError(ConfigError):
    """The dataset id cannot be a Hub id at all; suggests a cached id that looks like it."""

    def __init__(
        self, message: str, *, remedy: str = "", near_misses: list[str] | None = None
    ) -> None:
        self.near_misses = list(near_misses or [])
        super().__init__(message, remedy=remedy)

    def to_dict(self) -> dict:
        d = super().to_dict()
        d["near_misses"] = self.near_misses
        return d


class InvalidRevisionError(ConfigError):
    """A --revision that cannot name a ref file (absolute, '..', control characters)."""


class ScratchSpaceError(EnvironmentMisconfiguredError):
    """No usable scratch folder (TMPDIR full, missing or read-only): a reader never falls back
    to the working folder, which may be the cache."""


class OutputLocationError(ConfigError):
    """--report or --metrics-dir names a folder that is missing, not writable, or in a cache."""


class ManifestError(HFLoaderError):
    """A manifest file that is missing, unreadable, not a valid manifest, or not writable."""

    exit_code = ExitCode.MANIFEST
    kind = "manifest"


class ManifestLocationError(ConfigError):
    """A manifest named inside a cache folder (a reader never writes there), or a folder."""


class TransferError(HFLoaderError):
    """hf-cache-seed: rsync failed, or the copy made no progress for too long."""

    exit_code = ExitCode.TRANSFER
    kind = "transfer"


class UpstreamError(HFLoaderError):
    """hf-cache-seed: the upstream copy failed, or holds another manifest's copy."""

    exit_code = ExitCode.UPSTREAM
    kind = "upstream"


class UnsafeSeedPathError(EnvironmentMisconfiguredError):
    """hf-cache-seed: a folder it writes into (the cache root, its seeding folder, staging, a
    dataset folder) is a symlink, not owned by the user running it (root), or writable by
    others; or staging holds a symlink leading out of its dataset folder, or a device or FIFO.
    Refused before anything is changed: root never follows another account's links."""

    kind = "unsafe_path"


class StoppedError(HFLoaderError):
    """hf-cache-seed was stopped by a signal (Ctrl-C, SIGTERM): rsync was interrupted as by
    Ctrl-C and waited for, so a rerun resumes from its partial files."""

    kind = "stopped"

    def __init__(self, signal_name: str, signal_number: int, *, path: str | None = None) -> None:
        self.exit_code = SIGNAL_EXIT_BASE + signal_number
        super().__init__(
            f"stopped by {signal_name}",
            path=path,
            remedy="rerun the same command: it resumes from the files and partial files kept",
        )


# What the operating system says about the place, not about the program: a full or read-only
# filesystem, a missing permission, a failing disk. Each is exit 5 naming the path, never 1;
# the remedy for each errno.
_ENVIRONMENT_ERRNOS = {
    errno.EROFS: "the filesystem is mounted read-only: remount it read-write "
    "(mount -o remount,rw MOUNTPOINT) or use a writable folder",
    errno.ENOSPC: "the filesystem is full: free space on it or grow the volume, then rerun",
    errno.EDQUOT: "the disk quota is used up: free space or raise the quota, then rerun",
    errno.EACCES: "permission denied: run as the account that owns it (root for a cache root) "
    "or fix its owner and mode",
    errno.EPERM: "operation not permitted: run as root, and check that the file is not "
    "immutable (lsattr) or on a filesystem that forbids it",
    errno.EIO: "an I/O error: the disk or the network filesystem is failing; check the kernel "
    "log (journalctl -k) before rerunning",
}


def environment_error(e: OSError, within=None) -> EnvironmentMisconfiguredError:
    """The environment finding (exit 5) for an OSError no stage expected: the host refused an
    operation (permissions, free space, the mount, the disk), which is not a bug. `within`:
    the folder named when the error names no file (a write to an open file names none)."""
    where = e.filename if e.filename is not None else within
    return EnvironmentMisconfiguredError(
        f"the host refused an operation on {where or '(no path given)'}: {e.strerror or e}",
        path=None if where is None else str(where),
        remedy=_ENVIRONMENT_ERRNOS.get(
            e.errno or 0,
            "fix what the error names (permissions, free space, the mount), then rerun; if it "
            "names nothing of this host, report it with the full output",
        ),
    )
