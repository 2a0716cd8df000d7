"""slurm_* filters of the Slurm roles: version compatibility and the node's slurm.conf and gres.conf
lines, from module_utils/slurm."""

from __future__ import annotations

from ansible_collections.gpu_fleet.common.plugins.module_utils.filter_errors import prefixed
from ansible_collections.gpu_fleet.common.plugins.module_utils.slurm.node_conf import node_conf
from ansible_collections.gpu_fleet.common.plugins.module_utils.slurm.versions import debian_versions, version_problems


class FilterModule:
    """Filters for the Slurm roles (prefix slurm_)."""

    def filters(self):
        return prefixed("slurm_", (version_problems, debian_versions, node_conf))
