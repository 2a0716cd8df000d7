# The action plugin of the same name does the work; this file documents it.
from __future__ import annotations

DOCUMENTATION = r"""
module: preflight
short_description: Check a role's variables before it changes anything
description:
  - Runs on the controller, also in check mode. Fails with every failing message joined, in this order -
    variables named C(<role>_...) that the role's C(meta/argument_specs.yml) does not declare (nor O(facts)),
    then bad paths, bad relative paths, values that are not single words, then the failed O(checks).
  - A value in O(paths), O(relative_paths) or O(words) that is a list or a mapping stands for each of its entries.
options:
  role:
    type: str
    required: true
    description: The role's variable prefix (its name); also names the role in the messages.
  facts:
    type: list
    elements: str
    default: []
    description: Variables with the prefix that the role sets itself (facts), accepted beside its options.
  paths:
    type: dict
    default: {}
    description:
      - Variable name to value. Each must be an absolute path without whitespace, quotes, commas, '#', '$',
        '`', '\' or a '.' or '..' segment (it may go unquoted into fstab, units and environment files).
  relative_paths:
    type: dict
    default: {}
    description: Variable name to value, each a relative path under the same rule (not starting with '/').
  words:
    type: dict
    default: {}
    description: Variable name to value, each one word (no list or mapping) without whitespace, quotes, '$', '`' or '\'.
  checks:
    type: list
    elements: dict
    default: []
    description: The role's own checks, each C(ok) (a boolean) and C(msg) (said when C(ok) is false).
  success_msg:
    type: str
    description:
      - The result's message when every check passes, shown in the run's output without C(-v), as
        C(ansible.builtin.assert) shows its C(success_msg).
      - Without it, "The <role> variables passed every check." (shown with C(-v) only). Pass C(omit) to keep
        a check quiet where the old assert was C(quiet).
author: gpu-fleet maintainers
"""

EXAMPLES = r"""
- name: Check the variables
  gpu_fleet.common.preflight:
    role: hf_env
    paths:
      hf_env_cache_root: "{{ hf_env_cache_root }}"
    checks:
      - ok: "{{ hf_env_offline | bool }}"
        msg: hf_env_offline is false, which this project does not support.

- name: Check what was observed (a post-check, no variables of its own)
  gpu_fleet.common.preflight:
    role: hf_env
    checks:
      - ok: "{{ __hf_env_observed.users[hf_env_owner].exists }}"
        msg: hf_env_owner {{ hf_env_owner }} does not exist on the host.
    success_msg: The owner exists.
"""

RETURN = r"""
msg:
  description: Every failing message, joined; or O(success_msg), or that every check passed.
  type: str
  returned: always
"""
