"""Path filters the roles share."""

from __future__ import annotations

from pathlib import PurePosixPath


def path_parents(path: str) -> list[str]:
    """'/data/hf/hub' -> ['/data/hf', '/data', '/']: the folders above an absolute path, nearest first."""
    return [str(parent) for parent in PurePosixPath(path).parents]


class FilterModule:
    def filters(self):
        return {"path_parents": path_parents}
