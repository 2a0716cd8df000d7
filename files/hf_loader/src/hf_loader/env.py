"""Environment: cache locations and offline mode.

Offline mode is *forced on* in this process before `datasets` or `huggingface_hub`
are imported, because both read the variables at import time. It is never switched
off and no token is ever used.
"""

from __future__ import annotations

import atexit
import os
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


def scratch_dir() -> Path:
    """This process's own writable folder for the libraries' locks and temporary files.

    `datasets` takes a FileLock in its cache folder even to stream a hub snapshot; on a
    read-only or foreign cache that is EROFS/EACCES. Readers give it this folder instead
    (under TMPDIR, private per unit with PrivateTmp), so they never write into a cache.
    Removed when the process exits.
    """
    global _SCRATCH
    if _SCRATCH is None or not _SCRATCH.is_dir():
        _SCRATCH = Path(tempfile.mkdtemp(prefix="hf-loader-"))
        atexit.register(shutil.rmtree, _SCRATCH, ignore_errors=True)
    return _SCRATCH


def _hf_home(environ: dict) -> Path:
    if environ.get("HF_HOME"):
        return Path(environ["HF_HOME"]).expanduser()
    xdg = environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface"


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
            ds = Path(env["HF_DATASETS_CACHE"]).expanduser()
            sources["datasets_cache"] = "HF_DATASETS_CACHE"
        else:
            ds = home / "datasets"
            sources["datasets_cache"] = "HF_HOME" if env.get("HF_HOME") else "default"
        hub_var = next((v for v in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE") if env.get(v)), None)
        if hub_var:
            hub = Path(env[hub_var]).expanduser()
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
