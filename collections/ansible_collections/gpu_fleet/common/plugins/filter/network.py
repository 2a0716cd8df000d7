"""Network filters the roles share."""

from __future__ import annotations

from ansible_collections.gpu_fleet.common.plugins.module_utils.host_address import is_host_address


class FilterModule:
    def filters(self):
        return {"is_host_address": is_host_address}
