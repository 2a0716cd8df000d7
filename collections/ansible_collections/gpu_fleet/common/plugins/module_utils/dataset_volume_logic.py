"""Pure decision logic of the dataset_volume role, kept testable outside Ansible.

The probe module (gpu_fleet.common.dataset_volume_probe) runs the system's tools
on the target (blkid -p, wipefs, lsblk, cmp against /dev/zero) and the filters
(plugins/filter/dataset_volume.py) classify their output on the controller.
Nothing here touches a device or imports Ansible.
"""

from __future__ import annotations

import json
import re

from ansible_collections.gpu_fleet.common.plugins.module_utils.preflight import PATH_UNSAFE, path_problem

EBS_VOLUME_ID = re.compile(r"^vol-(?P<hex>[0-9a-f]{8}|[0-9a-f]{17})$")
# Amazon's NVMe driver exposes the volume id without its dash as the serial.
EBS_BY_ID_PREFIXES = ("nvme-Amazon_Elastic_Block_Store_",)
# udev adds a namespace suffix on newer systems: ..._1 or ...-ns-1.
EBS_NAMESPACE_SUFFIX = re.compile(r"^(?:_1|-ns-1)?$")
FILESYSTEMS = ("ext4", "xfs")


def source_kind(source, volume_type="block"):
    """Classify a source: path, uuid, label, ebs (block); nfs; bind; or invalid."""
    if not isinstance(source, str) or not source or source != source.strip():
        return "invalid"
    if PATH_UNSAFE.search(source):
        return "invalid"
    if volume_type == "nfs":
        return "nfs" if re.match(r"^[A-Za-z0-9.\-]+:/[^:]*$|^\[[0-9A-Fa-f:]+\]:/[^:]*$", source) else "invalid"
    if volume_type == "bind":
        return "invalid" if path_problem(source) else "bind"
    if volume_type != "block":
        return "invalid"
    if source.startswith("/"):
        return "invalid" if path_problem(source) else "path"
    if re.match(r"^UUID=[0-9A-Fa-f-]{8,36}$", source):
        return "uuid"
    if re.match(r"^LABEL=[^/]{1,64}$", source):
        return "label"
    if EBS_VOLUME_ID.match(source):
        return "ebs"
    return "invalid"


def ebs_serial(volume_id):
    """vol-0123... -> vol0123..., the NVMe serial of an EBS volume."""
    match = EBS_VOLUME_ID.match(volume_id or "")
    if not match:
        raise ValueError(f"{volume_id!r} is not an EBS volume id (vol- and 8 or 17 hex digits)")
    return "vol" + match.group("hex")


def ebs_by_id_matches(names, volume_id):
    """Names (basenames or paths) under /dev/disk/by-id that point to this EBS volume.

    Partition links (-partN) are left out: the role works on whole disks.
    Exact names sort first, namespace-suffixed ones after.
    """
    serial = ebs_serial(volume_id)
    found = []
    for name in names or []:
        base = str(name).rstrip("/").rsplit("/", 1)[-1]
        for prefix in EBS_BY_ID_PREFIXES:
            if base.startswith(prefix + serial) and EBS_NAMESPACE_SUFFIX.match(base[len(prefix + serial) :]):
                found.append(str(name))
    return sorted(found, key=lambda item: (len(item), item))


def parse_blkid_export(text):
    """blkid -p -o export output -> dict of KEY=value lines."""
    result = {}
    for line in (text or "").splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            result[key.strip()] = value.strip()
    return result


def _json(text, default):
    if isinstance(text, (dict, list)):
        return text
    try:
        return json.loads(text) if text and text.strip() else default
    except ValueError:
        return default


def _children(device):
    return device.get("children") or []


def _mountpoints(device):
    points = [point for point in (device.get("mountpoints") or []) if point]
    if device.get("mountpoint"):
        points.append(device["mountpoint"])
    for child in _children(device):
        points.extend(_mountpoints(child))
    return sorted(set(points))


def assess(probe, fstype, format_requested=False, confirmed=False):
    """Decide what may be done with a block device; never anything that loses data.

    probe: dict with blkid (blkid -p -o export stdout), blkid_rc (0 found,
    2 nothing), wipefs (wipefs --no-act --json stdout), lsblk (lsblk --json
    stdout for the device), zero_rc (cmp of the first MiB against /dev/zero:
    0 all zeros), device (the resolved path).

    Returns a dict: action (mount, format, wipe_and_format, refuse), found (a
    list of what the probes saw, in words), fs_type, uuid, label, reason.
    """
    device = probe.get("device", "the device")
    blkid = parse_blkid_export(probe.get("blkid", "")) if probe.get("blkid_rc", 2) == 0 else {}
    signatures = _json(probe.get("wipefs"), {}).get("signatures") or []
    devices = _json(probe.get("lsblk"), {}).get("blockdevices") or [{}]
    disk = devices[0] if devices else {}
    children = _children(disk)
    mounted = _mountpoints(disk)

    found = []
    if blkid.get("TYPE"):
        usage = {"filesystem": "filesystem", "raid": "RAID member", "crypto": "encrypted volume"}
        words = f"{blkid['TYPE']} {usage.get(blkid.get('USAGE', ''), 'signature')}"
        details = [f"{key}={blkid[key]}" for key in ("UUID", "LABEL") if blkid.get(key)]
        found.append(words + (f" ({', '.join(details)})" if details else ""))
    if blkid.get("PTTYPE"):
        found.append(f"{blkid['PTTYPE']} partition table")
    for signature in signatures:
        kind = signature.get("type", "unknown")
        if kind not in (blkid.get("TYPE"), blkid.get("PTTYPE")):
            found.append(f"{kind} signature at offset {signature.get('offset', '?')}")
    if children:
        names = ", ".join(child.get("path") or child.get("name", "?") for child in children)
        found.append(f"{len(children)} partition(s): {names}")
    if mounted:
        found.append("mounted at " + ", ".join(mounted))
    if probe.get("blkid_rc", 2) not in (0, 2):
        found.append(f"conflicting signatures (blkid -p exit {probe.get('blkid_rc')})")
    if probe.get("zero_rc", 0) != 0 and not found:
        found.append("non-zero data in its first MiB (no known signature)")

    result = {
        "action": "refuse",
        "found": found,
        "fs_type": blkid.get("TYPE", ""),
        "uuid": blkid.get("UUID", ""),
        "label": blkid.get("LABEL", ""),
        "reason": "",
    }
    whole_filesystem = (
        blkid.get("USAGE") == "filesystem" and not blkid.get("PTTYPE") and not children and len(signatures) <= 1
    )
    if whole_filesystem and blkid.get("TYPE") == fstype:
        result["action"] = "mount"
        result["reason"] = f"{device} already holds {fstype} (UUID={result['uuid']}); it is mounted as it is"
        return result
    if not found:
        if format_requested:
            result["action"] = "format"
            result["reason"] = f"{device} is blank (no filesystem, partition table or signature; first MiB zero)"
        else:
            result["reason"] = (
                f"{device} is blank. Set dataset_volume_format: true to create an {fstype} filesystem on it"
            )
        return result
    what = "; ".join(found)
    if whole_filesystem:
        result["reason"] = (
            f"{device} holds {what}, not {fstype}. Set dataset_volume_fstype: {blkid['TYPE']} to mount it as it is"
            if blkid["TYPE"] in FILESYSTEMS
            else f"{device} holds {what}, which this role does not mount"
        )
    else:
        result["reason"] = f"{device} is not blank: it holds {what}"
    if mounted:
        result["reason"] += "; it is in use, so it is never formatted"
    elif confirmed and format_requested:
        result["action"] = "wipe_and_format"
        result["reason"] += f"; wiped and formatted as {fstype} because dataset_volume_format_confirm_device names it"
    else:
        result["reason"] += (
            f". To erase it and create {fstype} instead, set dataset_volume_format: true and"
            f" dataset_volume_format_confirm_device: {device}"
        )
    return result


def _without_trailing_slashes(path):
    return re.sub(r"(?<=.)/+$", "", str(path or ""))


def mounted_is_ours(probe, volume_type, source):
    """Whether what findmnt saw at the mount point (probe['mounted']) is this volume.

    block: the same device (major:minor) from its root; nfs: the same export;
    bind: the mount point is the source folder itself (same device and inode).
    """
    mounted = probe.get("mounted") or {}
    if not mounted:
        return False
    if volume_type == "block":
        return bool(probe.get("majmin")) and mounted.get("maj:min") == probe["majmin"] and mounted.get("fsroot") == "/"
    if volume_type == "nfs":
        return _without_trailing_slashes(mounted.get("source")) == _without_trailing_slashes(source)
    if volume_type == "bind":
        source_dir, point = probe.get("source_dir") or {}, probe.get("mount_point") or {}
        return bool(source_dir.get("exists")) and (source_dir.get("dev"), source_dir.get("inode")) == (
            point.get("dev"),
            point.get("inode"),
        )
    return False


def mount_options(volume_type, read_only=False, extra=None, nfs_options=None, timeout=30):
    """The fstab options, in a stable order: kind-specific, extra, ro, nofail, timeouts."""
    options = []
    if volume_type == "bind":
        options.append("bind")
    if volume_type == "nfs":
        options.extend(nfs_options or [])
    for option in extra or []:
        if option not in options:
            options.append(option)
    options = [option for option in options if option not in ("rw", "ro", "nofail", "defaults")]
    timeouts = ("x-systemd.device-timeout=", "x-systemd.mount-timeout=")
    options = [option for option in options if not option.startswith(timeouts)]
    options.append("ro" if read_only else "rw")
    if volume_type == "nfs" and "_netdev" not in options:
        options.append("_netdev")
    options.append("nofail")
    if volume_type == "block":
        options.append(f"x-systemd.device-timeout={int(timeout)}s")
    else:
        options.append(f"x-systemd.mount-timeout={int(timeout)}s")
    return ",".join(options)


def fstab_in_place(entries, src, fstype, opts, dump, passno):
    """Whether the probe's fstab entries for the mount point are exactly the one line
    ansible.posix.mount would write (the fields compared as text, as the module compares them).

    Several lines for one mount point, or any field that differs, leave the decision to the module.
    """
    wanted = {"src": str(src), "fstype": str(fstype), "opts": str(opts), "dump": str(dump), "passno": str(passno)}
    return len(entries) == 1 and {key: str(entries[0].get(key, "")) for key in wanted} == wanted
