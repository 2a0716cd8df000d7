"""slurm_job_* filters of training as a Slurm batch job: its settings checked, its sbatch options
and its stop timeout, from module_utils/slurm/job.py."""

from __future__ import annotations

from ansible_collections.gpu_fleet.common.plugins.module_utils.filter_errors import prefixed
from ansible_collections.gpu_fleet.common.plugins.module_utils.slurm.job import problems, sbatch_options, stop_timeout


class FilterModule:
    """Filters for training as a Slurm batch job (prefix slurm_job_)."""

    def filters(self):
        return prefixed("slurm_job_", (problems, sbatch_options, stop_timeout))
