"""health_gate_* filters: the health gate's decision logic, from module_utils/health_gate."""

from __future__ import annotations

from ansible_collections.gpu_fleet.common.plugins.module_utils.filter_errors import INPUT_ERRORS, prefixed
from ansible_collections.gpu_fleet.common.plugins.module_utils.health_gate.cuda import cuda_problems, cuda_report
from ansible_collections.gpu_fleet.common.plugins.module_utils.health_gate.dcgm import dcgmi_parse, dcgmi_problems
from ansible_collections.gpu_fleet.common.plugins.module_utils.health_gate.fabric import fabric_parse, fabric_problems
from ansible_collections.gpu_fleet.common.plugins.module_utils.health_gate.problems import verdict
from ansible_collections.gpu_fleet.common.plugins.module_utils.health_gate.settings import (
    fabric_needed,
    settings_errors,
)


class FilterModule:
    """Filters for the health gate (prefix health_gate_)."""

    def filters(self):
        return prefixed(
            "health_gate_",
            (
                settings_errors,
                fabric_needed,
                cuda_problems,
                cuda_report,
                dcgmi_parse,
                dcgmi_problems,
                fabric_parse,
                fabric_problems,
                verdict,
            ),
            (*INPUT_ERRORS, AttributeError),
        )
