"""hf_loader_* filters: the hf_loader role's decisions, from module_utils/hf_loader."""

from __future__ import annotations

from ansible_collections.gpu_fleet.common.plugins.module_utils.hf_loader.checkpoints import (
    checkpoint_dir,
    checkpoint_problems,
)
from ansible_collections.gpu_fleet.common.plugins.module_utils.hf_loader.interpreter import python_choice
from ansible_collections.gpu_fleet.common.plugins.module_utils.hf_loader.pins import missing_pins
from ansible_collections.gpu_fleet.common.plugins.module_utils.hf_loader.wheelhouse import same_wheels


class FilterModule:
    def filters(self):
        return {
            "hf_loader_missing_pins": missing_pins,
            "hf_loader_same_wheels": same_wheels,
            "hf_loader_checkpoint_dir": checkpoint_dir,
            "hf_loader_checkpoint_problems": checkpoint_problems,
            "hf_loader_python": python_choice,
        }
