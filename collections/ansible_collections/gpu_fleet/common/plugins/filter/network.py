"""Network filters the roles share (no prefix), from module_utils/host_address.py."""

from __future__ import annotations

from ansible_collections.gpu_fleet.common.plugins.module_utils.filter_errors import prefixed
from ansible_collections.gpu_fleet.common.plugins.module_utils.host_address import is_host_address


class FilterModule:
    """Network filters (no prefix)."""

    def filters(self):
        return prefixed("", (is_host_address,))
