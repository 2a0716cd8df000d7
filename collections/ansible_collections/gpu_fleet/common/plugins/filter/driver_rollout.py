"""driver_rollout_* filters of the rolling driver upgrade (playbooks/upgrade-driver.yml): each host's
plan, its outcome, the batch verdict and the report, from module_utils/driver_rollout."""

from __future__ import annotations

from ansible_collections.gpu_fleet.common.plugins.module_utils.driver_rollout.outcome import batch_verdict, outcome
from ansible_collections.gpu_fleet.common.plugins.module_utils.driver_rollout.plan import (
    host_plan,
    loaded_version,
    target_errors,
    valid_serial,
)
from ansible_collections.gpu_fleet.common.plugins.module_utils.driver_rollout.report import report, report_markdown
from ansible_collections.gpu_fleet.common.plugins.module_utils.filter_errors import prefixed


class FilterModule:
    """Filters for playbooks/upgrade-driver.yml (prefix driver_rollout_)."""

    def filters(self):
        return prefixed(
            "driver_rollout_",
            (valid_serial, target_errors, loaded_version, host_plan, batch_verdict, outcome, report, report_markdown),
        )
