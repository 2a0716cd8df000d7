"""What the roles decide about paths: the folders above a path, and which wanted paths differ from
what gpu_fleet.common.path_state observed. plugins/filter/paths.py maps the path_parents,
wanted_paths and paths_to_fix filters to these functions."""

from __future__ import annotations

import re
from pathlib import PurePosixPath

OCTAL_MODE = re.compile(r"^0?[0-7]{3,4}$")


def path_parents(path: str) -> list[str]:
    """'/data/hf/hub' -> ['/data/hf', '/data', '/']: the folders above an absolute path, nearest first."""
    return [str(parent) for parent in PurePosixPath(path).parents]


def _differs(observed: dict, wanted: dict) -> bool:
    state = wanted.get("state", "file")
    if state == "absent":
        return observed.get("exists", False)
    if observed.get("kind") != state:
        return True
    for key in ("owner", "group"):
        if key in wanted and str(wanted[key]) != observed.get(key):
            return True
    if "mode" in wanted:
        mode = str(wanted["mode"])
        # A symbolic mode (u=rw) is left to the file module: it is never taken as equal.
        if not OCTAL_MODE.match(mode) or int(mode, 8) != int(observed.get("mode") or "0", 8):
            return True
    if "mode_set" in wanted:
        # Bits that must be set whatever the others are (the file module's g+rwx).
        bits = int(str(wanted["mode_set"]), 8)
        if int(observed.get("mode") or "0", 8) & bits != bits:
            return True
    if state == "link":
        return "src" in wanted and wanted["src"] != observed.get("target")
    return state == "file" and "sha1" in wanted and wanted["sha1"] != observed.get("sha1")


def wanted_paths(entries: list, state: str, **attributes) -> list[dict]:
    """Paths, or [path, sha1] pairs for files and [path, src] pairs for links, to paths_to_fix's
    wanted entries, each with the same attributes."""
    wanted = []
    for entry in entries:
        path, detail = (entry, None) if isinstance(entry, str) else entry
        key = "src" if state == "link" else "sha1"
        wanted.append({"path": path, "state": state, **attributes, **({key: detail} if detail is not None else {})})
    return wanted


def paths_to_fix(observed: dict, wanted: list[dict]) -> list[str]:
    """The paths of the wanted entries whose observed state (gpu_fleet.common.path_state's `paths`) differs.

    Each wanted entry: path, state (file, directory, link or absent; file by default) and any of
    owner, group, mode, mode_set (octal bits that must be set, the others left alone), a file's
    sha1 and a link's src. What is not given is not compared. A path that was
    not observed, or that is a link where a file or folder is wanted, differs: the role's own
    file task then decides, as it did before there was a probe.
    """
    return [item["path"] for item in wanted if item["path"] not in observed or _differs(observed[item["path"]], item)]
