"""Config files of the CLIs (`hf-train`, `hf-cache-test`): a YAML or JSON mapping of options."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from .check import read_regular
from .errors import ConfigError


def load_config_file(path: str, known: Iterable[str]) -> dict:
    """The file's mapping; unreadable files, bad syntax and keys not in `known` are ConfigError."""
    p = Path(path)
    try:  # a regular file only: a FIFO would block; not UTF-8 is a usage error, not a crash
        text = read_regular(p).decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(
            f"cannot read config file: {getattr(e, 'strerror', None) or e}",
            path=str(path),
            remedy="pass an existing YAML or JSON file",
        ) from e
    import yaml

    try:
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:
        raise ConfigError(
            f"invalid config file: {e}",
            path=str(path),
            remedy="fix the syntax (a YAML or JSON mapping)",
        ) from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            "config file must hold a mapping",
            path=str(path),
            remedy="write key: value pairs, e.g. 'batch_size: 256'",
        )
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown config keys: {', '.join(map(str, unknown))}",
            path=str(path),
            remedy=f"use only: {', '.join(sorted(known))}",
        )
    return data
