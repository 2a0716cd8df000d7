"""cordon_* filters: the cordon's checks, its files read and named, from module_utils/cordon.py."""

from __future__ import annotations

from ansible_collections.gpu_fleet.common.plugins.module_utils.cordon import errors, owned_by, parse, record, text
from ansible_collections.gpu_fleet.common.plugins.module_utils.filter_errors import prefixed


class FilterModule:
    """Filters for the cordon (prefix cordon_)."""

    def filters(self):
        return prefixed("cordon_", (errors, record, parse, text, owned_by))
