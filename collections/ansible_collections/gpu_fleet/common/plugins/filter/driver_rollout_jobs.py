"""driver_rollout_* filters about training jobs: the rollout's job decisions, from module_utils/driver_rollout."""

from __future__ import annotations

from ansible_collections.gpu_fleet.common.plugins.module_utils.driver_rollout.drains import job_drains, job_restarts
from ansible_collections.gpu_fleet.common.plugins.module_utils.driver_rollout.job_records import job_records
from ansible_collections.gpu_fleet.common.plugins.module_utils.driver_rollout.schedule import (
    budget_errors,
    budget_stop,
    schedule,
)
from ansible_collections.gpu_fleet.common.plugins.module_utils.driver_rollout.slurm_jobs import slurm_jobs
from ansible_collections.gpu_fleet.common.plugins.module_utils.filter_errors import prefixed


class FilterModule:
    """Job-aware filters for playbooks/upgrade-driver.yml (prefix driver_rollout_)."""

    def filters(self):
        return prefixed(
            "driver_rollout_", (job_records, budget_errors, schedule, budget_stop, job_drains, job_restarts, slurm_jobs)
        )
