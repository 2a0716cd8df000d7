"""dataset_volume_* filters: the dataset_volume role's decision logic, from
module_utils/dataset_volume_logic.py."""

from __future__ import annotations

from ansible_collections.gpu_fleet.common.plugins.module_utils.dataset_volume_logic import (
    assess,
    fstab_in_place,
    mount_options,
    mounted_is_ours,
    source_kind,
)
from ansible_collections.gpu_fleet.common.plugins.module_utils.filter_errors import prefixed


class FilterModule:
    """Filters for the dataset_volume role (prefix dataset_volume_)."""

    def filters(self):
        return prefixed("dataset_volume_", (source_kind, assess, mount_options, mounted_is_ours, fstab_in_place))
