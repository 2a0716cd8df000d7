"""gpu_fleet.common.preflight: a role's variable checks on the controller, every failure in one message."""

from __future__ import annotations

from pathlib import Path

import yaml
from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible_collections.gpu_fleet.common.plugins.module_utils.preflight import failures, unknown_variables

ARGUMENT_SPEC = {
    "role": {"type": "str", "required": True},
    "facts": {"type": "list", "elements": "str", "default": []},
    "paths": {"type": "dict", "default": {}},
    "relative_paths": {"type": "dict", "default": {}},
    "words": {"type": "dict", "default": {}},
    "checks": {
        "type": "list",
        "elements": "dict",
        "default": [],
        "options": {"ok": {"type": "bool", "required": True}, "msg": {"type": "str", "required": True}},
    },
    "success_msg": {"type": "str"},
}


# Every check task reads its role's specs again, on every host: libyaml's loader where PyYAML has
# it (10 times faster on nvidia_driver's, 10 ms a call otherwise), the same safe parse.
SPEC_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def sibling_roles(role_path: str) -> list[str]:
    """The roles next to this one, whose prefixes may extend its own (fleet, fleet_pull)."""
    return [path.name for path in Path(role_path).parent.iterdir() if path.is_dir()]


def role_options(role_path: str) -> list[str]:
    """The variables the role's main entry point declares, in the spec's order."""
    specs = yaml.load((Path(role_path) / "meta" / "argument_specs.yml").read_text(), Loader=SPEC_LOADER)
    return list(specs["argument_specs"]["main"]["options"])


class ActionModule(ActionBase):
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        _, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        if "role_path" not in task_vars:
            raise AnsibleActionFail("gpu_fleet.common.preflight runs in a role's tasks (role_path is not set)")
        known = role_options(task_vars["role_path"]) + args["facts"]
        messages = failures(
            args["role"],
            unknown=unknown_variables(task_vars, args["role"], known, sibling_roles(task_vars["role_path"])),
            known=known,
            paths=args["paths"],
            relative_paths=args["relative_paths"],
            words=args["words"],
            checks=args["checks"],
        )
        result["changed"] = False
        if messages:
            result.update(failed=True, msg=" ".join(messages))
        elif args["success_msg"]:
            # Said in the run's output without -v, as ansible.builtin.assert says its success_msg.
            result.update(msg=args["success_msg"], _ansible_verbose_always=True)
        else:
            result["msg"] = f"The {args['role']} variables passed every check."
        return result
