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
  contents:
    type: list
    elements: path
    default: []
    description:
      - Absolute paths of files whose text is read (UTF-8, undecodable bytes replaced). A missing path reads
        as null. The caller sets C(no_log) where a file holds a secret.
      - Only a regular file is read; a symbolic link (never followed), a folder, a FIFO or a device fails the
        call naming the path, so that an account that owns the folder cannot point root at another file.
  contents_max_bytes:
    type: int
    default: 1048576
    description: >-
      The largest file read for O(contents) or O(listing_contents); a larger one fails the call, naming the
      path and this option (an observation holds what a role decides on, not bulk data).
  listing_contents:
    type: bool
    default: false
    description:
      - Each file of O(listings) also gets its text, read as for O(contents) (a listed file replaced by a
        symbolic link before it is read fails the call).
  listing_match:
    type: str
    default: ''
    description: >-
      A regular expression each listed file's name must match whole (Python C(re.fullmatch)); empty lists
      every regular file. Files that do not match are neither listed nor read.
author: gpu-fleet maintainers
"""

EXAMPLES = r"""
- name: Observe the managed paths
  gpu_fleet.common.path_state:
    paths: [/etc/hf, /etc/hf/hf.env]
    contents: [/etc/hf/hf.env]
  register: observed
  check_mode: false
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
  description: >-
    Each folder to its regular files (path, size, mtime, and text with I(listing_contents)); a missing
    folder lists none.
  type: dict
  returned: always
commands:
  description: Each command's name to its rc and stdout_lines (rc 127 when the program is missing).
  type: dict
  returned: always
contents:
  description: Each path in I(contents) to its text (null where the path is missing).
  type: dict
  returned: always
"""

import errno
import grp
import hashlib
import os
import pwd
import re
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


class TooLarge(Exception):
    """A file asked for by contents or listing_contents is larger than contents_max_bytes."""

    def __init__(self, path, size, max_bytes):
        super().__init__(
            f"path_state: {path} holds {size} bytes, more than contents_max_bytes ({max_bytes}); "
            "raise contents_max_bytes for this call or do not read the file's text"
        )


def text(path, max_bytes):
    """The file's text, or None where the path is missing; a file over max_bytes raises TooLarge.

    Only a regular file is read, never through a symbolic link, and opening never blocks: the files
    read are often another account's (the cache test's report is the training user's), and root
    reading where a link points, or waiting on a FIFO, would hand that account another file's text
    or stall the run."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as error:
        reason = "a symbolic link, which is not followed" if error.errno == errno.ELOOP else error.strerror
        raise OSError(error.errno, reason, str(path)) from error
    info = os.fstat(descriptor)
    if not stat.S_ISREG(info.st_mode):
        os.close(descriptor)
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    with os.fdopen(descriptor, "rb") as stream:
        # Read one byte past the cap: the size from stat can lie (a file still growing).
        data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise TooLarge(path, max(info.st_size, len(data)), max_bytes)
    return data.decode("utf-8", errors="replace")


def listing(folder, max_bytes=None, match=""):
    """The folder's regular files whose names match whole; with max_bytes, each also with its text."""
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError:
        return []
    files = [
        {"path": entry.path, "size": info.st_size, "mtime": info.st_mtime}
        for entry in entries
        if entry.is_file(follow_symlinks=False) and (not match or re.fullmatch(match, entry.name))
        for info in [entry.stat(follow_symlinks=False)]
    ]
    if max_bytes is not None:
        for entry in files:
            entry["text"] = text(entry["path"], max_bytes)
    return files


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
            "contents": {"type": "list", "elements": "path", "default": []},
            "contents_max_bytes": {"type": "int", "default": 1048576},
            "listing_contents": {"type": "bool", "default": False},
            "listing_match": {"type": "str", "default": ""},
        },
        supports_check_mode=True,
    )
    params = module.params
    named = params["paths"] + params["listings"] + params["contents"]
    relative = [path for path in named if not Path(path).is_absolute()]
    if relative:
        module.fail_json(msg=f"path_state needs absolute paths; got {', '.join(relative)}")
    try:
        re.compile(params["listing_match"])
    except re.error as error:
        module.fail_json(msg=f"path_state: listing_match is not a regular expression ({error})")
    max_bytes = params["contents_max_bytes"]
    try:
        contents = {path: text(path, max_bytes) for path in params["contents"]}
        listed_text = max_bytes if params["listing_contents"] else None
        listings = {folder: listing(folder, listed_text, params["listing_match"]) for folder in params["listings"]}
    except TooLarge as error:
        module.fail_json(msg=str(error))
    except OSError as error:
        # A folder or an unreadable file where text is asked for: the role asked for the wrong path.
        module.fail_json(msg=f"path_state cannot read {error.filename}: {error.strerror}")
    module.exit_json(
        changed=False,
        paths={path: describe(path) for path in params["paths"]},
        users={name: account(name) for name in params["users"]},
        groups={name: exists(grp.getgrnam, name) for name in params["groups"]},
        listings=listings,
        commands={name: run_read_only(module, argv) for name, argv in params["commands"].items()},
        contents=contents,
    )


if __name__ == "__main__":
    main()
