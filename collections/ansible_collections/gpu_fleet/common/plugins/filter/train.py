"""train_* filters of playbooks/train.yml: the launcher's choice, from module_utils/slurm/job.py."""

from __future__ import annotations

from ansible_collections.gpu_fleet.common.plugins.module_utils.filter_errors import prefixed
from ansible_collections.gpu_fleet.common.plugins.module_utils.slurm.job import launcher_problems


class FilterModule:
    """Filters for playbooks/train.yml (prefix train_)."""

    def filters(self):
        return prefixed("train_", (launcher_problems,))
