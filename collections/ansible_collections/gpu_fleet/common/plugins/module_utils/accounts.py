"""Owners, groups and modes as the read-only modules report them (path_state, dataset_volume_probe)."""

from __future__ import annotations

import grp
import pwd
import stat


def account_name(lookup, number):
    """The name of a uid or gid (pwd.getpwuid, grp.getgrgid), or the number where it has none."""
    try:
        return lookup(number)[0]
    except KeyError:
        return str(number)


def exists(lookup, name):
    """Whether an account or group of that name exists (pwd.getpwnam, grp.getgrnam)."""
    try:
        lookup(name)
    except KeyError:
        return False
    return True


def ownership(info):
    """A stat result's owner, group (names) and mode (four octal digits), as paths_to_fix compares them."""
    return {
        "owner": account_name(pwd.getpwuid, info.st_uid),
        "group": account_name(grp.getgrgid, info.st_gid),
        "mode": f"{stat.S_IMODE(info.st_mode):04o}",
    }
