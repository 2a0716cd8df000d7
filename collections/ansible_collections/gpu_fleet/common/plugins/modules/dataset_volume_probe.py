"""Read-only probe of a dataset volume source and its mount point."""

from __future__ import annotations

DOCUMENTATION = r"""
module: dataset_volume_probe
short_description: Resolve a dataset volume source and probe it and its mount point, read-only
description:
  - Resolves a block device source (path, by-id, UUID=, LABEL=, EBS volume id) to its /dev path and
    probes it with C(blkid -p), C(wipefs --no-act), C(lsblk) and a comparison of its first MiB with
    C(/dev/zero). Describes the mount point (C(findmnt), its owner and mode, its fstab entries), what a
    mount would hide, a bind source and the accounts. Never writes anything.
options:
  source: {type: str, required: true, description: The source as configured.}
  type: {type: str, required: true, choices: [block, nfs, bind], description: Kind of source.}
  mount_point: {type: path, required: true, description: The mount point.}
  by_id_dir: {type: path, default: /dev/disk/by-id, description: Where EBS volume links are looked up.}
  expected_dirs: {type: list, elements: str, default: [], description: Folders looked for under the mount point.}
  owner: {type: str, default: root, description: Account that must exist.}
  group: {type: str, default: root, description: Group that must exist.}
  fstab: {type: path, default: /etc/fstab, description: The fstab whose entries for the mount point are returned.}
author: gpu-fleet maintainers
"""

EXAMPLES = r"""
- name: Probe
  gpu_fleet.common.dataset_volume_probe:
    source: vol-0123456789abcdef0
    type: block
    mount_point: /data
"""

RETURN = r"""
device: {description: The resolved /dev path; empty when the source was not found., type: str, returned: always}
probe:
  description: Raw output of the device probes, for the gpu_fleet.common.dataset_volume_assess filter.
  type: dict
  returned: always
mounted:
  description: What findmnt reports at the mount point; empty when nothing is mounted there.
  type: dict
  returned: always
fstab_entries:
  description: The fstab lines for the mount point, each as src, fstype, opts, dump and passno.
  type: list
  returned: always
"""

import grp
import json
import os
import pwd
import stat
from pathlib import Path

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.gpu_fleet.common.plugins.module_utils.accounts import exists, ownership
from ansible_collections.gpu_fleet.common.plugins.module_utils.dataset_volume_logic import (
    EBS_BY_ID_PREFIXES,
    ebs_by_id_matches,
    ebs_serial,
    source_kind,
)

FINDMNT_COLUMNS = "TARGET,SOURCE,FSTYPE,OPTIONS,FSROOT,MAJ:MIN,SIZE,AVAIL"


def describe(path):
    """Also in the shape of gpu_fleet.common.path_state (kind, owner, group, mode) for paths_to_fix."""
    try:
        info = Path(path).stat() if path else None
    except OSError:
        info = None
    if info is None:
        return {"exists": False, "isdir": False, "dev": None, "inode": None, "kind": "absent", "owner": "", "group": "",
                "mode": ""}  # fmt: skip
    isdir = stat.S_ISDIR(info.st_mode)
    return {
        "exists": True,
        "isdir": isdir,
        "dev": info.st_dev,
        "inode": info.st_ino,
        "kind": "directory" if isdir else "other",
        **ownership(info),
    }


def fstab_entries(fstab, mount_point):
    """The entries for mount_point as ansible.posix.mount compares them (its fields, octal escapes undone)."""
    try:
        lines = Path(fstab).read_text().splitlines()
    except OSError:
        return []
    entries = []
    for line in lines:
        fields = line.split()
        if len(fields) < 4 or fields[0].startswith("#"):
            continue
        if fields[1].replace("\\040", " ") != mount_point:
            continue
        dump, passno = [*fields[4:6], "0", "0"][:2]
        entries.append({"src": fields[0], "fstype": fields[2], "opts": fields[3], "dump": dump, "passno": passno})
    return entries


def main():
    module = AnsibleModule(
        argument_spec={
            "source": {"type": "str", "required": True},
            "type": {"type": "str", "required": True, "choices": ["block", "nfs", "bind"]},
            "mount_point": {"type": "path", "required": True},
            "by_id_dir": {"type": "path", "default": "/dev/disk/by-id"},
            "expected_dirs": {"type": "list", "elements": "str", "default": []},
            "owner": {"type": "str", "default": "root"},
            "group": {"type": "str", "default": "root"},
            "fstab": {"type": "path", "default": "/etc/fstab"},
        },
        supports_check_mode=True,
    )
    params = module.params
    source, kind_of_volume, mount_point = params["source"], params["type"], params["mount_point"]
    kind = source_kind(source, kind_of_volume)
    result = {
        "changed": False,
        "kind": kind,
        "device": "",
        "resolve_error": "",
        "by_id_names": [],
        "block_devices": "",
        "isblk": False,
        "probe": {},
        "majmin": "",
        "size_bytes": 0,
        "ambiguous": [],
        "owner_exists": exists(pwd.getpwnam, params["owner"]),
        "group_exists": exists(grp.getgrnam, params["group"]),
    }

    def run(argv):
        return module.run_command(argv, environ_update={"LC_ALL": "C"})

    if kind_of_volume == "block" and kind != "invalid":
        path = source
        if kind in ("uuid", "label"):
            # Every device that carries the tag, probed afresh (no blkid cache):
            # a copied disk or a reused label must not pick one at random.
            rc, out, err = run(["blkid", "--cache-file", "/dev/null", "--output", "device", "--match-token", source])
            found = sorted(set(out.split())) if rc == 0 else []
            path = found[0] if len(found) == 1 else ""
            if len(found) > 1:
                result["ambiguous"] = found
            result["resolve_error"] = (
                f"{source} is carried by {len(found)} devices: {', '.join(found)}"
                if len(found) > 1
                else (err.strip() or f"no device carries {source}")
            )
        elif kind == "ebs":
            try:
                names = sorted(entry.name for entry in Path(params["by_id_dir"]).iterdir())
            except OSError as error:
                names = []
                result["resolve_error"] = f"{params['by_id_dir']}: {error.strerror}"
            result["by_id_names"] = names
            matches = ebs_by_id_matches(names, source)
            name = matches[0] if matches else EBS_BY_ID_PREFIXES[0] + ebs_serial(source)
            path = str(Path(params["by_id_dir"]) / name)
        if path and Path(path).exists():
            result["device"] = os.path.realpath(path)
            result["resolve_error"] = ""
        elif not result["resolve_error"]:
            result["resolve_error"] = f"{path}: no such file or device"
        if result["device"]:
            result["isblk"] = stat.S_ISBLK(Path(result["device"]).stat().st_mode)
        if result["isblk"]:
            device = result["device"]
            blkid_rc, blkid_out, _ = run(["blkid", "--probe", "--output", "export", device])
            rc, wipefs_out, err = run(["wipefs", "--no-act", "--json", device])
            if rc != 0:
                module.fail_json(msg=f"wipefs --no-act {device} failed: {err.strip()}", **result)
            rc, lsblk_out, err = run(
                [
                    "lsblk",
                    "--json",
                    "--bytes",
                    "--paths",
                    "--output",
                    "NAME,PATH,TYPE,FSTYPE,MOUNTPOINT,SIZE,MAJ:MIN",
                    device,
                ]
            )
            if rc != 0:
                module.fail_json(msg=f"lsblk {device} failed: {err.strip()}", **result)
            zero_rc, _, _ = run(["cmp", "--quiet", "--bytes=1048576", device, "/dev/zero"])
            result["probe"] = {
                "device": device,
                "blkid": blkid_out,
                "blkid_rc": blkid_rc,
                "wipefs": wipefs_out,
                "lsblk": lsblk_out,
                "zero_rc": zero_rc,
            }
            disk = (json.loads(lsblk_out).get("blockdevices") or [{}])[0]
            result["majmin"] = disk.get("maj:min", "")
            result["size_bytes"] = int(disk.get("size") or 0)
        elif not result["device"]:
            _, listing, _ = run(["lsblk", "--paths", "--output", "NAME,SIZE,TYPE,FSTYPE,LABEL,SERIAL,MODEL,MOUNTPOINT"])
            result["block_devices"] = listing

    result["source_dir"] = describe(source) if kind_of_volume == "bind" and kind == "bind" else describe("")
    point = describe(mount_point)
    rc, out, _ = run(["findmnt", "--json", "--bytes", "--output", FINDMNT_COLUMNS, "--mountpoint", mount_point])
    mounted = (json.loads(out).get("filesystems") or [{}])[0] if rc == 0 and out.strip() else {}
    entries = []
    if point["isdir"] and not mounted:
        entries = sorted(entry.name for entry in Path(mount_point).iterdir())[:20]
    missing = []
    if mounted:
        missing = [name for name in params["expected_dirs"] if not (Path(mount_point) / name).is_dir()]
    result.update(
        mount_point=point,
        mounted=mounted,
        mount_point_entries=entries,
        expected_missing=missing,
        fstab_entries=fstab_entries(params["fstab"], mount_point),
    )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
