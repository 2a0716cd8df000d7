"""Read-only: what a list of paths, folders and read-only commands show on the host, in one call."""

from __future__ import annotations

DOCUMENTATION = r"""
module: path_state
short_description: Describe many paths in one call, read-only
description:
  - For each path, whether it exists, its kind, owner, group and mode, and the SHA-1 of a regular
    file's content. Links are described, not followed. Never writes anything.
  - A role observes the folders and files it manages with one call, decides on the controller with
    the C(gpu_fleet.common.paths_to_fix) filter, and runs its file tasks only for what differs.
  - Also says whether accounts and groups exist, lists folders and runs the read-only commands a
    role names (a package query, a venv's contents), so that a role observes its host in one call.
options:
  paths: {type: list, elements: path, default: [], description: Absolute paths to describe.}
  users: {type: list, elements: str, default: [], description: Account names looked up (a role's owner).}
  groups: {type: list, elements: str, default: [], description: Group names looked up.}
  listings:
    type: list
    elements: path
    default: []
    description: Folders whose regular files are listed (not recursively), as C(ansible.builtin.find) lists them.
  commands:
    type: dict
    default: {}
    description: >-
      Name to argv of commands that only read (dpkg-query, a venv's Python listing its packages).
      Each is run without a shell; a command that fails or is missing is reported, not an error.
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
users:
  description: >-
    Each name in I(users) to exists, and for an account that exists its home, shell and primary
    group (empty strings otherwise), as the user module compares them.
  type: dict
  returned: always
groups: {description: Each name in I(groups) to whether the group exists., type: dict, returned: always}
listings:
  description: Each folder to its regular files (path, size, mtime); a missing folder lists none.
  type: dict
  returned: always
commands:
  description: Each command's name to its rc and stdout_lines (rc 127 when the program is missing).
  type: dict
  returned: always
"""

import grp
import hashlib
import os
import pwd
import shutil
import stat
from pathlib import Path

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.gpu_fleet.common.plugins.module_utils.accounts import account_name, exists, ownership

KINDS = ((stat.S_ISREG, "file"), (stat.S_ISDIR, "directory"), (stat.S_ISLNK, "link"))


def account(name):
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return {"exists": False, "home": "", "shell": "", "group": ""}
    group = account_name(grp.getgrgid, entry.pw_gid)
    return {"exists": True, "home": entry.pw_dir, "shell": entry.pw_shell, "group": group}


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
        **ownership(info),
        "sha1": content_sha1(path) if kind == "file" else "",
        # Path.readlink needs Python 3.9; the hosts may run 3.8.
        "target": os.readlink(path) if kind == "link" else "",
    }


def listing(folder):
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError:
        return []
    return [
        {"path": entry.path, "size": info.st_size, "mtime": info.st_mtime}
        for entry in entries
        if entry.is_file(follow_symlinks=False)
        for info in [entry.stat(follow_symlinks=False)]
    ]


def run_read_only(module, argv):
    # run_command fails the module on a missing program; a venv not yet made is an observation.
    if not argv or shutil.which(str(argv[0])) is None:
        return {"rc": 127, "stdout_lines": []}
    rc, out, _ = module.run_command([str(word) for word in argv], environ_update={"LC_ALL": "C"})
    return {"rc": rc, "stdout_lines": out.splitlines()}


def main():
    module = AnsibleModule(
        argument_spec={
            "paths": {"type": "list", "elements": "path", "default": []},
            "users": {"type": "list", "elements": "str", "default": []},
            "groups": {"type": "list", "elements": "str", "default": []},
            "listings": {"type": "list", "elements": "path", "default": []},
            "commands": {"type": "dict", "default": {}},
        },
        supports_check_mode=True,
    )
    relative = [path for path in module.params["paths"] + module.params["listings"] if not Path(path).is_absolute()]
    if relative:
        module.fail_json(msg=f"path_state needs absolute paths; got {', '.join(relative)}")
    module.exit_json(
        changed=False,
        paths={path: describe(path) for path in module.params["paths"]},
        users={name: account(name) for name in module.params["users"]},
        groups={name: exists(grp.getgrnam, name) for name in module.params["groups"]},
        listings={folder: listing(folder) for folder in module.params["listings"]},
        commands={name: run_read_only(module, argv) for name, argv in module.params["commands"].items()},
    )


if __name__ == "__main__":
    main()
