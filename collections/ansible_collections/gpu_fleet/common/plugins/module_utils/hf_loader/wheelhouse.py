"""Whether a host's wheelhouse is in step with the controller's: the same wheel names, sizes and
whole-second modification times (rsync's own quick check; the sync preserves times)."""

from __future__ import annotations

from pathlib import PurePosixPath


def same_wheels(host_files: list[dict], controller_wheels: list[dict]) -> bool:
    """Whether a host's `find` result (path, size, mtime) lists exactly the controller's wheels.

    `controller_wheels` is what the gpu_fleet.common.hf_loader_wheels lookup returns (name, size, mtime).
    """
    host = sorted((PurePosixPath(f["path"]).name, int(f["size"]), int(f["mtime"])) for f in host_files)
    return host == sorted((w["name"], int(w["size"]), int(w["mtime"])) for w in controller_wheels)
