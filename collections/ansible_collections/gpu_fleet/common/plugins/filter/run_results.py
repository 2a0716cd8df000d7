"""The state_counts filter of the runbooks' summaries, from module_utils/run_results.py."""

from __future__ import annotations

from ansible_collections.gpu_fleet.common.plugins.module_utils.filter_errors import prefixed
from ansible_collections.gpu_fleet.common.plugins.module_utils.run_results import state_counts


class FilterModule:
    """Filters for the runbooks' summaries (no prefix)."""

    def filters(self):
        return prefixed("", (state_counts,))
