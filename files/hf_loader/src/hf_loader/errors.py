"""Typed errors. Each carries the path it is about, the remedy and the CLI exit code."""

from __future__ import annotations

# Exit codes of `hf-cache-test` and `hf-cache-manifest` (documented in README.md).
EXIT_READY = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_NOT_CACHED = 3
EXIT_INCOMPLETE = 4
EXIT_ENVIRONMENT = 5
EXIT_LOADING = 6
EXIT_GATE_CLOSED = 7  # --require-ready: no valid report, or the last test was not ready
EXIT_MANIFEST = 8  # hf-cache-manifest: the manifest file is missing/invalid or cannot be written
EXIT_TRANSFER = 9  # hf-cache-seed: rsync failed, or no progress for too long
EXIT_UPSTREAM = 10  # hf-cache-seed: the upstream copy failed or is of another manifest


class HFLoaderError(Exception):
    """Base class: a problem with a path and a remedy."""

    exit_code = EXIT_INTERNAL
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


class EnvironmentMisconfiguredError(HFLoaderError):
    """The dataset volume is not mounted (--require-mount), cache variables point nowhere or to
    unreadable folders, or offline mode is switched off."""

    exit_code = EXIT_ENVIRONMENT
    kind = "environment"


class NotCachedError(HFLoaderError):
    """No usable copy of the dataset in any cache. Lists every place looked and near misses."""

    exit_code = EXIT_NOT_CACHED
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

    exit_code = EXIT_INCOMPLETE
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

    exit_code = EXIT_LOADING
    kind = "loading"


class ConfigError(HFLoaderError):
    """A bad config file or flag (usage error)."""

    exit_code = EXIT_USAGE
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

    exit_code = EXIT_MANIFEST
    kind = "manifest"


class ManifestLocationError(ConfigError):
    """A manifest named inside a cache folder (a reader never writes there), or a folder."""


class TransferError(HFLoaderError):
    """hf-cache-seed: rsync failed, or the copy made no progress for too long."""

    exit_code = EXIT_TRANSFER
    kind = "transfer"


class UpstreamError(HFLoaderError):
    """hf-cache-seed: the upstream copy failed, or holds another manifest's copy."""

    exit_code = EXIT_UPSTREAM
    kind = "upstream"


class UnsafeSeedPathError(EnvironmentMisconfiguredError):
    """hf-cache-seed: a folder it writes into (the cache root, its seeding folder, staging, a
    dataset folder) is a symlink, not owned by the user running it (root), or writable by
    others; or staging holds a symlink leading out of its dataset folder, or a device or FIFO.
    Refused before anything is changed: root never follows another account's links."""

    kind = "unsafe_path"
