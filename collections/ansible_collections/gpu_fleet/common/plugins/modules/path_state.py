"""Read-only: what a list of paths is on the host, in one call."""

from __future__ import annotations

DOCUMENTATION = r"""
module: path_state
short_description: Describe many paths in one call, read-only
description:
  - For each path, whether it exists, its kind, owner, group and mode, and the SHA-1 of a regular
    file's content. Links are described, not followed. Never writes anything.
  - A role observes the folders and files it manages with one call, decides on the controller with
    the C(gpu_fleet.common.paths_to_fix) filter, and runs its file tasks only for what differs.
  - Also says whether accounts and groups exist, so that a role's preflight needs no other call.
options:
  paths: {type: list, elements: path, required: true, description: Absolute paths to describe.}
  users: {type: list, elements: str, default: [], description: Account names looked up (a role's owner).}
  groups: {type: list, elements: str, default: [], description: Group names looked up.}
author: gpu-fleet maintainers
"""

EXAMPLES = r"""
- name: Observe the managed paths
  gpu_fleet.common.path_state:
    paths: [/etc/hf, /etc/hf/hf.env]
  register: observed
"""

RETURN = r"""
paths:
  description: >-
    Path to its state: exists, kind (file, directory, link, other or absent), owner, group (names,
    or the number where the account has no name), mode (four octal digits), sha1 (regular files
    that could be read; empty otherwise) and target (what a link points to; empty otherwise).
  type: dict
  returned: always
users: {description: Each name in I(users) to whether the account exists., type: dict, returned: always}
groups: {description: Each name in I(groups) to whether the group exists., type: dict, returned: always}
"""

import grp
import hashlib
import os
import pwd
import stat
from pathlib import Path

from ansible.module_utils.basic import AnsibleModule

KINDS = ((stat.S_ISREG, "file"), (stat.S_ISDIR, "directory"), (stat.S_ISLNK, "link"))


def account_name(lookup, number):
    try:
        return lookup(number)[0]
    except KeyError:
        return str(number)


def exists(lookup, name):
    try:
        lookup(name)
    except KeyError:
        return False
    return True


def content_sha1(path):
    digest = hashlib.sha1()
    try:
        with open(path, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return ""
    return digest.hexdigest()


def describe(path):
    try:
        info = Path(path).lstat()
    except FileNotFoundError:
        return {"exists": False, "kind": "absent", "owner": "", "group": "", "mode": "", "sha1": "", "target": ""}
    kind = next((name for test, name in KINDS if test(info.st_mode)), "other")
    return {
        "exists": True,
        "kind": kind,
        "owner": account_name(pwd.getpwuid, info.st_uid),
        "group": account_name(grp.getgrgid, info.st_gid),
        "mode": f"{stat.S_IMODE(info.st_mode):04o}",
        "sha1": content_sha1(path) if kind == "file" else "",
        # Path.readlink needs Python 3.9; the hosts may run 3.8.
        "target": os.readlink(path) if kind == "link" else "",
    }


def main():
    module = AnsibleModule(
        argument_spec={
            "paths": {"type": "list", "elements": "path", "required": True},
            "users": {"type": "list", "elements": "str", "default": []},
            "groups": {"type": "list", "elements": "str", "default": []},
        },
        supports_check_mode=True,
    )
    relative = [path for path in module.params["paths"] if not Path(path).is_absolute()]
    if relative:
        module.fail_json(msg=f"path_state needs absolute paths; got {', '.join(relative)}")
    module.exit_json(
        changed=False,
        paths={path: describe(path) for path in module.params["paths"]},
        users={name: exists(pwd.getpwnam, name) for name in module.params["users"]},
        groups={name: exists(grp.getgrnam, name) for name in module.params["groups"]},
    )


if __name__ == "__main__":
    main()
