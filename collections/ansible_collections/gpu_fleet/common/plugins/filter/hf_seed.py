"""The seed_plan filter of the hf_seed role (which host copies from which source), from
module_utils/hf_seed.py."""

from __future__ import annotations

from ansible_collections.gpu_fleet.common.plugins.module_utils.filter_errors import prefixed
from ansible_collections.gpu_fleet.common.plugins.module_utils.hf_seed import seed_plan


class FilterModule:
    """The hf_seed role's filter (no prefix)."""

    def filters(self):
        return prefixed("", (seed_plan,))
