"""dataset_volume_* filters: the role's decision logic, from module_utils."""

import importlib.util
from pathlib import Path

_LOGIC_PATH = Path(__file__).resolve().parent.parent / "module_utils" / "dataset_volume_logic.py"
_SPEC = importlib.util.spec_from_file_location("dataset_volume_logic", _LOGIC_PATH)
logic = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(logic)


class FilterModule:
    """Filters of the dataset_volume role."""

    def filters(self):
        return {
            "dataset_volume_source_kind": logic.source_kind,
            "dataset_volume_ebs_serial": logic.ebs_serial,
            "dataset_volume_ebs_by_id_matches": logic.ebs_by_id_matches,
            "dataset_volume_assess": logic.assess,
            "dataset_volume_mount_options": logic.mount_options,
        }
