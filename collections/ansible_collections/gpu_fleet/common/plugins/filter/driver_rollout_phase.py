"""driver_rollout_* filters of the rollout's phases (upgrade_driver_phase), from
module_utils/driver_rollout/phase.py."""

from __future__ import annotations

from ansible_collections.gpu_fleet.common.plugins.module_utils.driver_rollout.phase import (
    canary_mark,
    phase_errors,
    phase_schedule,
    rest_gate,
)
from ansible_collections.gpu_fleet.common.plugins.module_utils.filter_errors import prefixed


class FilterModule:
    """Phase filters for playbooks/upgrade-driver.yml (prefix driver_rollout_)."""

    def filters(self):
        return prefixed("driver_rollout_", (phase_errors, phase_schedule, canary_mark, rest_gate))
