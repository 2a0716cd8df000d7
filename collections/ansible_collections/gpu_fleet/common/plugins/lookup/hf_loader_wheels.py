"""The wheels of a folder on the controller, as rsync compares them: name, size, whole-second mtime.

    query('gpu_fleet.common.hf_loader_wheels', '/path/to/wheelhouse/cp311')
      -> [{'name': 'anyio-4.16.0-py3-none-any.whl', 'size': 134521, 'mtime': 1795644632}, ...]

The role compares this list with a `find` on the host (the filter
gpu_fleet.common.hf_loader_same_wheels) and runs rsync only when they differ: a rerun then costs
one read-only listing a host instead of an rsync (a new SSH connection and a
remote file list). A missing folder gives [].
"""

from __future__ import annotations

from pathlib import Path

from ansible.plugins.lookup import LookupBase


def wheels(folder: str) -> list[dict]:
    path = Path(folder)
    if not path.is_dir():
        return []
    listing = []
    for wheel in sorted(path.glob("*.whl")):
        if wheel.is_file():
            stat = wheel.stat()
            listing.append({"name": wheel.name, "size": stat.st_size, "mtime": int(stat.st_mtime)})
    return listing


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        return [wheels(str(term)) for term in terms]
