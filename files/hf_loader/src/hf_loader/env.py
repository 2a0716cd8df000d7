"""Environment: cache locations and offline mode.

Offline mode is *forced on* in this process before `datasets` or `huggingface_hub`
are imported, because both read the variables at import time. It is never switched
off and no token is ever used.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

OFFLINE_VARS = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
_TRUE = {"1", "ON", "YES", "TRUE"}


class OfflineForcedWarning(UserWarning):
    """The user's environment switched offline mode off; it was forced back on."""


def _truthy(value: str | None) -> bool:
    return value is not None and value.strip().upper() in _TRUE


def user_offline_settings(environ: dict | None = None) -> dict[str, str | None]:
    env = os.environ if environ is None else environ
    return {name: env.get(name) for name in OFFLINE_VARS}


def offline_disabled_by_user(environ: dict | None = None) -> list[str]:
    """Names of offline variables that the user set, non-empty, to a value outside _TRUE.

    `HF_DATASETS_OFFLINE` wins over `HF_HUB_OFFLINE` inside `datasets`, so either one set
    false is enough to send `datasets` to the network.
    """
    settings = user_offline_settings(environ)
    return [n for n, v in settings.items() if v is not None and v.strip() and not _truthy(v)]


_FORCED = False


def force_offline() -> list[str]:
    """Set both offline variables to 1 in this process; warn about any the user had disabled.

    Must run before `datasets`/`huggingface_hub` are imported; if they already are, their
    module-level flags are patched too. Returns the names the user had disabled.
    """
    global _FORCED
    disabled = offline_disabled_by_user()
    if disabled:
        shown = ", ".join(f"{n}={os.environ.get(n)}" for n in disabled)
        warnings.warn(
            f"{shown} in the environment switches offline mode off; hf_loader forces it on "
            "(HF_DATASETS_OFFLINE=1, HF_HUB_OFFLINE=1) for this process. Offline-first loading "
            "never needs the network or a token. Fix: remove the variable or set it to 1 in the "
            "host environment (e.g. /etc/environment) so other tools do not hang on the network.",
            OfflineForcedWarning,
            stacklevel=2,
        )
    for name in OFFLINE_VARS:
        os.environ[name] = "1"
    _patch_imported_modules()
    _FORCED = True
    return disabled


def _patch_imported_modules() -> None:
    hub_constants = sys.modules.get("huggingface_hub.constants")
    if hub_constants is not None and hasattr(hub_constants, "HF_HUB_OFFLINE"):
        hub_constants.HF_HUB_OFFLINE = True
    ds_config = sys.modules.get("datasets.config")
    if ds_config is not None:
        for attr in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
            if hasattr(ds_config, attr):
                setattr(ds_config, attr, True)


_SCRATCH: Path | None = None
_SCRATCH_PROBE = b"hf-loader scratch probe\n" * 64  # a few KiB: a full tmpfs refuses it


def scratch_candidates(environ: dict | None = None) -> list[tuple[str, str]]:
    """Where scratch space may be made, as (folder, what names it): TMPDIR (TEMP, TMP) when
    set, else /tmp and /var/tmp. Never the working folder, which Python's `tempfile` falls
    back to when the others are full: a reader started in the cache would write there."""
    env = os.environ if environ is None else environ
    for var in ("TMPDIR", "TEMP", "TMP"):
        if env.get(var):
            return [(env[var], var)]
    return [("/tmp", "default"), ("/var/tmp", "default")]


def _within(folder: str, path: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _make_scratch(base: str, avoid: list[str]) -> Path:
    """A private folder in `base` that holds a few KiB (mkdir alone succeeds on a full tmpfs)."""
    real = os.path.realpath(base)
    inside = next((a for a in avoid if _within(os.path.realpath(a), real)), None)
    if inside:
        raise OSError(f"it is inside the cache folder {inside}, which a reader never writes")
    folder = Path(tempfile.mkdtemp(prefix="hf-loader-", dir=base))
    try:
        with open(folder / ".probe", "wb") as f:
            f.write(_SCRATCH_PROBE)
            f.flush()
            os.fsync(f.fileno())
        os.unlink(folder / ".probe")
    except OSError:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder


def scratch_dir(avoid: list | tuple = ()) -> Path:
    """This process's own writable folder for the libraries' locks and temporary files.

    `datasets` takes a FileLock in its cache folder even to stream a hub snapshot; on a
    read-only or foreign cache that is EROFS/EACCES. Readers give it this folder instead
    (under TMPDIR, private per unit with PrivateTmp), so they never write into a cache.
    It also becomes `tempfile`'s folder in this process and its children (DataLoader workers,
    multiprocessing), so nothing falls back to the working folder. `avoid`: cache folders it
    must not lie in. Removed when the process exits. ScratchSpaceError (exit 5) when no
    candidate works, naming each and why.
    """
    global _SCRATCH
    if _SCRATCH is not None and _SCRATCH.is_dir():
        return _SCRATCH
    from .errors import ScratchSpaceError

    refused = []
    for base, source in scratch_candidates():
        try:
            _SCRATCH = _make_scratch(base, [str(a) for a in avoid])
        except OSError as e:
            why = e.strerror or str(e)
            refused.append(f"{base} ({source}): {why}")
            continue
        atexit.register(shutil.rmtree, _SCRATCH, ignore_errors=True)
        tempfile.tempdir = str(_SCRATCH)
        os.environ["TMPDIR"] = str(_SCRATCH)
        return _SCRATCH
    raise ScratchSpaceError(
        "no usable scratch space for the libraries' locks and temporary files: "
        + "; ".join(refused),
        path=scratch_candidates()[0][0],
        remedy="point TMPDIR at a writable folder with free space outside the cache (the units "
        "have a private /tmp), or free space in it; the loader never falls back to the "
        "working folder",
    )


def _expand(text: str, var: str) -> Path:
    """`~` expanded; a user with no home folder (no HOME, no passwd entry) is exit 5."""
    path = os.path.expanduser(text)
    if path.startswith("~"):
        from .errors import EnvironmentMisconfiguredError

        raise EnvironmentMisconfiguredError(
            f"{var} is {text!r}, but this user (uid {os.getuid()}) has no home folder to "
            "expand '~' to (no HOME, no passwd entry)",
            path=text,
            remedy="set HF_HOME (or HF_DATASETS_CACHE and HF_HUB_CACHE) to the cache folder "
            "as an absolute path",
        )
    return Path(path)


def _hf_home(environ: dict) -> Path:
    if environ.get("HF_HOME"):
        return _expand(environ["HF_HOME"], "HF_HOME")
    xdg = environ.get("XDG_CACHE_HOME")
    if xdg:
        return _expand(xdg, "XDG_CACHE_HOME") / "huggingface"
    return _expand("~/.cache/huggingface", "HF_HOME (unset, so the default)")


@dataclass
class CachePaths:
    """Where the libraries look, computed the same way they do, without importing them."""

    hf_home: Path
    datasets_cache: Path
    hub_cache: Path
    sources: dict = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: dict | None = None) -> CachePaths:
        env = os.environ if environ is None else environ
        home = _hf_home(env)
        sources = {"HF_HOME": "HF_HOME" if env.get("HF_HOME") else "default"}
        if env.get("HF_DATASETS_CACHE"):
            ds = _expand(env["HF_DATASETS_CACHE"], "HF_DATASETS_CACHE")
            sources["datasets_cache"] = "HF_DATASETS_CACHE"
        else:
            ds = home / "datasets"
            sources["datasets_cache"] = "HF_HOME" if env.get("HF_HOME") else "default"
        hub_var = next((v for v in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE") if env.get(v)), None)
        if hub_var:
            hub = _expand(env[hub_var], hub_var)
            sources["hub_cache"] = hub_var
        else:
            hub = home / "hub"
            sources["hub_cache"] = "HF_HOME" if env.get("HF_HOME") else "default"
        return cls(hf_home=home, datasets_cache=ds, hub_cache=hub, sources=sources)

    def to_dict(self) -> dict:
        return {
            "hf_home": str(self.hf_home),
            "datasets_cache": str(self.datasets_cache),
            "hub_cache": str(self.hub_cache),
            "sources": dict(self.sources),
        }


# --------------------------------------------------------------------------- mounts

MOUNTINFO = "/proc/self/mountinfo"
# What systemd keeps in a unit name as it is (its VALID_CHARS less '-' and '\\').
_UNIT_NAME_PLAIN = frozenset(b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ:_.")


def systemd_escape_path(path: str) -> str:
    """The path as `systemd-escape --path` writes it: /data/hf -> data-hf, / -> -.

    Repeated and trailing slashes and '.' components go; '/' becomes '-'; every byte outside
    [A-Za-z0-9:_.], and a leading '.', becomes \\xNN. '..' is refused, as systemd refuses it.
    """
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"{path!r} is not a normalized path (it holds '..')")
    if not parts:
        return "-"
    out = []
    for i, byte in enumerate(os.fsencode("/".join(parts))):
        if byte == ord("/"):
            out.append("-")
        elif byte in _UNIT_NAME_PLAIN and not (i == 0 and byte == ord(".")):
            out.append(chr(byte))
        else:
            out.append(f"\\x{byte:02x}")
    return "".join(out)


def mount_unit_name(path: str) -> str:
    """systemd's mount unit for a mount point: /data/hf -> data-hf.mount."""
    return systemd_escape_path(path) + ".mount"


@dataclass(frozen=True)
class Mount:
    """One line of /proc/self/mountinfo (proc(5))."""

    mount_id: int
    parent_id: int
    majmin: str
    root: str  # the folder of the filesystem mounted here: "/" for a whole volume
    mount_point: str
    fstype: str
    source: str


def _unescape_mountinfo(field_text: str) -> str:
    # The kernel writes space, tab, newline and backslash in paths as \040, \011, \012, \134.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_text)


def parse_mountinfo(text: str) -> list[Mount]:
    """The mounts, in the kernel's order (a later mount at the same point is on top)."""
    mounts = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            dash = fields.index("-", 6)  # optional fields end at the lone "-"
            mounts.append(
                Mount(
                    mount_id=int(fields[0]),
                    parent_id=int(fields[1]),
                    majmin=fields[2],
                    root=_unescape_mountinfo(fields[3]),
                    mount_point=_unescape_mountinfo(fields[4]),
                    fstype=fields[dash + 1],
                    source=_unescape_mountinfo(fields[dash + 2]),
                )
            )
        except (ValueError, IndexError):
            continue  # not a mountinfo line
    return mounts


def read_mounts(path: str = MOUNTINFO) -> list[Mount] | None:
    """This process's mounts, or None where there is no readable mountinfo (not Linux)."""
    try:
        with open(path, "rb") as f:
            return parse_mountinfo(os.fsdecode(f.read()))
    except OSError:
        return None


def _is_self_bind(mount: Mount, mounts: list[Mount]) -> bool:
    """A folder bind-mounted onto itself: the same filesystem and folder as beneath it.

    systemd does this for each ReadOnlyPaths= folder that is not a mount point (so it can
    make it read-only); it is no volume. A bind mount of another folder is one.
    """
    parent = next((m for m in mounts if m.mount_id == mount.parent_id), None)
    if parent is None or parent is mount or parent.majmin != mount.majmin:
        return False
    below = os.path.relpath(mount.mount_point, parent.mount_point)
    return os.path.normpath(os.path.join(parent.root, below)) == os.path.normpath(mount.root)


def mounted_at(path: str, mounts: list[Mount] | None = None) -> tuple[bool, Mount | None]:
    """Whether something is mounted at the folder `path` (symlinks resolved), and its entry.

    From mountinfo where there is one: the mount on top at that point, unless it is the folder
    bind-mounted onto itself (what a sandbox's ReadOnlyPaths= does to a plain folder). Else
    os.path.ismount (another device than the parent's). Reads, never writes.
    """
    real = os.path.realpath(path)
    if mounts is None:
        mounts = read_mounts()
    if mounts:
        here = [m for m in mounts if m.mount_point == real]
        if here:
            top = here[-1]
            return (not _is_self_bind(top, mounts)), top
        if any(m.mount_point == "/" for m in mounts):
            return False, None
    return os.path.ismount(real), None


def filesystem_of(path: str, mounts: list[Mount] | None = None) -> str | None:
    """The mount point of the filesystem holding `path` ('/' for the root filesystem),
    looking through self-binds; None when mountinfo cannot say."""
    real = os.path.realpath(path)
    if mounts is None:
        mounts = read_mounts()
    if not mounts:
        return None
    best = None
    for m in mounts:
        inside = real == m.mount_point or real.startswith(m.mount_point.rstrip("/") + "/")
        if inside and (best is None or len(m.mount_point) >= len(best.mount_point)):
            best = m
    by_id = {m.mount_id: m for m in mounts}
    seen = set()
    while best is not None and best.mount_id not in seen and _is_self_bind(best, mounts):
        seen.add(best.mount_id)
        best = by_id.get(best.parent_id)
    return best.mount_point if best else None
