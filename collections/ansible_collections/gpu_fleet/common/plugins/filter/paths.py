"""Path filters the roles share (no prefix), from module_utils/paths.py."""

from __future__ import annotations

from ansible_collections.gpu_fleet.common.plugins.module_utils.filter_errors import prefixed
from ansible_collections.gpu_fleet.common.plugins.module_utils.paths import path_parents, paths_to_fix, wanted_paths


class FilterModule:
    """Path filters (no prefix)."""

    def filters(self):
        return prefixed("", (path_parents, paths_to_fix, wanted_paths))
