"""hf_loader_* filters: the hf_loader role's decisions, from module_utils/hf_loader."""

from __future__ import annotations

from ansible_collections.gpu_fleet.common.plugins.module_utils.filter_errors import prefixed
from ansible_collections.gpu_fleet.common.plugins.module_utils.hf_loader.checkpoints import (
    checkpoint_dir,
    checkpoint_problems,
)
from ansible_collections.gpu_fleet.common.plugins.module_utils.hf_loader.interpreter import python
from ansible_collections.gpu_fleet.common.plugins.module_utils.hf_loader.pins import missing_pins
from ansible_collections.gpu_fleet.common.plugins.module_utils.hf_loader.wheelhouse import same_wheels


class FilterModule:
    """Filters for the hf_loader role (prefix hf_loader_)."""

    def filters(self):
        return prefixed("hf_loader_", (missing_pins, same_wheels, checkpoint_dir, checkpoint_problems, python))
