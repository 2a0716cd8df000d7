"""dataset_volume_* filters: the dataset_volume role's decision logic, from module_utils."""

from __future__ import annotations

from ansible_collections.gpu_fleet.common.plugins.module_utils.dataset_volume_logic import (
    assess,
    fstab_in_place,
    mount_options,
    mounted_is_ours,
    source_kind,
)


class FilterModule:
    def filters(self):
        return {
            "dataset_volume_source_kind": source_kind,
            "dataset_volume_assess": assess,
            "dataset_volume_mount_options": mount_options,
            "dataset_volume_mounted_is_ours": mounted_is_ours,
            "dataset_volume_fstab_in_place": fstab_in_place,
        }
