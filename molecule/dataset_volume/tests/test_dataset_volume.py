"""Verify dataset_volume on the running containers: real loop devices, real mounts.

prepare.yml attached three images per container (devices.json): blank (the
role formats it: ext4 on bookworm, xfs on trixie), data (ext4 that already
holds a cache, with checksums taken before the role ran) and ptable (a DOS
partition table and nothing else).
"""

import json
from pathlib import Path

import pytest
from verify_helpers import (
    check_mode_changes_nothing,
    every_tag_check_mode_test,
    host_runner,
    is_trixie,
    refused_before_any_change,
)

testinfra_hosts = ["ansible://all"]

STATE = "/var/lib/dataset-volume-molecule"
SCENARIO = Path(__file__).resolve().parents[1]
# The YAML callback folds long messages over lines: compare with the whitespace collapsed.
run_converge = host_runner(SCENARIO / "converge.yml", fold_whitespace=True)
run_bad_inputs = host_runner(SCENARIO / "bad_inputs.yml", timeout=600)
EBS_LINK = "/srv/fake-by-id/nvme-Amazon_Elastic_Block_Store_vol0123456789abcdef0"


def devices(host):
    return json.loads(host.file(f"{STATE}/devices.json").content_string)


def custom(**role_vars):
    """Extra variables that apply the role once with only these variables (the converge's 'custom' case)."""
    return json.dumps({"molecule_cases": ["custom"], **{f"dataset_volume_{k}": v for k, v in role_vars.items()}})


def run_custom(host, *extra_args, **role_vars):
    return run_converge(host, *extra_args, "-e", custom(**role_vars))


def mounted(host, target):
    """findmnt's view of a mount point, or None."""
    result = host.run(f"findmnt --json --output TARGET,SOURCE,FSTYPE,OPTIONS --mountpoint {target}")
    return json.loads(result.stdout)["filesystems"][0] if result.rc == 0 else None


def snapshot(host):
    """Everything a refused run must leave as it was: fstab, mounts, every signature on our devices."""
    signatures = {
        name: host.run(f"blkid --probe --output export {dev}").stdout
        for name, dev in devices(host).items()
        if name != "data_uuid"
    }
    return {
        "fstab": host.file("/etc/fstab").content_string,
        "mounts": host.check_output("findmnt --raw --noheadings --output TARGET,SOURCE,FSTYPE,OPTIONS"),
        "signatures": signatures,
        "data": host.check_output("ls -1 /data"),
    }


def fstab_entry(host, target):
    for line in host.file("/etc/fstab").content_string.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[1] == target:
            return fields
    return None


# --- the blank image: formatted and mounted -----------------------------------------------------


def test_blank_image_was_formatted_and_mounted(host):
    fstype = "xfs" if is_trixie(host) else "ext4"
    found = mounted(host, "/data/cache")
    assert found is not None
    assert found["source"] == devices(host)["blank"]
    assert found["fstype"] == fstype
    assert "rw" in found["options"].split(",")


def test_mount_point_is_roots_and_the_training_user_only_reads(host):
    root = host.file("/data/cache")
    assert root.user == "root" and root.group == "trainer"
    assert root.mode == 0o750
    host.check_output("runuser -u trainer -- ls /data/cache")
    # A real attempt as the training user: no file, and no seeding state for root to act on.
    for attempt in ("touch /data/cache/written-by-trainer", "mkdir /data/cache/.hf-seed"):
        done = host.run(f"runuser -u trainer -- {attempt}")
        assert done.rc != 0 and "Permission denied" in done.stderr, (attempt, done.stdout, done.stderr)
    assert not host.file("/data/cache/written-by-trainer").exists
    assert not host.file("/data/cache/.hf-seed").exists
    # The parent the role created is not given away.
    parent = host.file("/data")
    assert parent.user == "root" and parent.mode == 0o755


def test_a_device_node_on_the_volume_cannot_be_opened(host):
    """nodev: root makes /dev/null's twin on the volume (as a peer's rsync or a foreign volume could
    bring one); opening it fails even for root."""
    host.check_output("rm -f /data/cache/null-twin && mknod -m 0666 /data/cache/null-twin c 1 3")
    try:
        done = host.run("head -c 1 /data/cache/null-twin")
        assert done.rc != 0 and "Permission denied" in done.stderr, (done.stdout, done.stderr)
        assert host.run("head -c 1 /dev/null").rc == 0
    finally:
        host.check_output("rm -f /data/cache/null-twin")


def test_a_setuid_binary_on_the_volume_does_not_elevate(host):
    """nosuid: a root-owned setuid copy of id on the volume, run by the training user, still runs as
    the training user (the same copy outside the volume would say uid 0)."""
    host.check_output("install -o root -g root -m 4755 /usr/bin/id /data/cache/id-setuid")
    try:
        assert host.file("/data/cache/id-setuid").mode == 0o4755
        uid = host.check_output("runuser -u trainer -- /data/cache/id-setuid -u")
        assert uid == host.check_output("id -u trainer") and uid != "0"
    finally:
        host.check_output("rm -f /data/cache/id-setuid")


def test_fstab_entry_is_by_uuid_with_nofail_and_timeout(host):
    uuid = host.check_output(f"blkid --probe --match-tag UUID --output value {devices(host)['blank']}")
    fields = fstab_entry(host, "/data/cache")
    assert fields[0] == f"UUID={uuid}"
    assert fields[2] == ("xfs" if is_trixie(host) else "ext4")
    options = fields[3].split(",")
    assert "nofail" in options
    assert "x-systemd.device-timeout=45s" in options
    assert "noatime" in options
    assert options[:2] == ["nodev", "nosuid"]


def test_fstab_entry_mounts_again_after_unmount(host):
    host.check_output("umount /data/cache")
    assert mounted(host, "/data/cache") is None
    # What boot does for local filesystems: mount everything not marked _netdev.
    host.check_output("mount -a -O no_netdev")
    found = mounted(host, "/data/cache")
    assert found is not None and found["source"] == devices(host)["blank"]
    host.check_output("umount /data/cache")
    host.check_output("mount /data/cache")
    assert mounted(host, "/data/cache")["source"] == devices(host)["blank"]


# --- the image with data: mounted as it is, even with format: true -----------------------------


def test_data_image_is_mounted_and_its_data_unchanged(host):
    found = mounted(host, "/data/preloaded")
    assert found is not None and found["source"] == devices(host)["data"]
    assert found["fstype"] == "ext4"
    # The same filesystem (not a new one) and the same bytes in every file.
    uuid = host.check_output(f"blkid --probe --match-tag UUID --output value {devices(host)['data']}")
    assert uuid == devices(host)["data_uuid"]
    assert host.run(f"cd /data/preloaded && sha256sum --check --strict --quiet {STATE}/data.sha256").rc == 0


def test_data_image_found_by_its_ebs_volume_id_or_uuid(host):
    fields = fstab_entry(host, "/data/preloaded")
    assert fields[0] == f"UUID={devices(host)['data_uuid']}"
    assert host.file(EBS_LINK).linked_to == devices(host)["data"]


def test_read_only_mount_is_read_only(host):
    options = mounted(host, "/data/preloaded")["options"].split(",")
    if is_trixie(host):
        assert "ro" in options
        assert "ro" in fstab_entry(host, "/data/preloaded")[3].split(",")
        assert host.run("touch /data/preloaded/x").rc != 0
        # Ownership is left alone on a read-only mount.
        assert host.file("/data/preloaded").user == "root"
    else:
        assert "rw" in options
        assert host.file("/data/preloaded").user == "root"


# --- bind and NFS ------------------------------------------------------------------------------


def test_bind_mount_shows_the_folder_read_only(host):
    found = mounted(host, "/data/shared")
    assert found is not None and "ro" in found["options"].split(",")
    assert host.file("/data/shared/hub/marker").content_string == "shared\n"
    assert host.run("touch /data/shared/x").rc != 0
    assert fstab_entry(host, "/data/shared")[:3] == ["/srv/shared-cache", "/data/shared", "none"]
    assert fstab_entry(host, "/data/shared")[3].startswith("bind,nodev,nosuid,")
    assert {"nodev", "nosuid"} <= set(found["options"].split(","))


@pytest.mark.parametrize("target", ["/data/cache", "/data/preloaded", "/data/shared"])
def test_every_mount_is_nodev_nosuid(host, target):
    assert {"nodev", "nosuid"} <= set(mounted(host, target)["options"].split(","))


def test_a_mount_without_nodev_nosuid_is_remounted_in_place(host):
    """A volume mounted before this role set nodev,nosuid (entry and mount without them), and one
    remounted by hand with dev,suid under a right entry: one converge remounts both in place
    (no unmount, the same files), a second changes nothing."""
    fields = fstab_entry(host, "/data/cache")
    old_options = ",".join(o for o in fields[3].split(",") if o not in ("nodev", "nosuid"))
    host.check_output(f"sed -i 's#{fields[3]}#{old_options}#' /etc/fstab")
    host.check_output("mount -o remount,dev,suid /data/cache && mount -o remount,dev,suid /data/preloaded")
    host.check_output("echo kept >/data/cache/kept-across-remount")
    assert "nodev" not in mounted(host, "/data/cache")["options"].split(",")
    try:
        rc, output = run_converge(host)
        assert rc == 0, output
        assert "changed=0" not in output
        for target in ("/data/cache", "/data/preloaded"):
            assert {"nodev", "nosuid"} <= set(mounted(host, target)["options"].split(",")), target
        assert fstab_entry(host, "/data/cache")[3] == fields[3]
        assert host.file("/data/cache/kept-across-remount").content_string == "kept\n"
        assert host.run(f"cd /data/preloaded && sha256sum --check --strict --quiet {STATE}/data.sha256").rc == 0
        rc, output = run_converge(host)
        assert rc == 0 and "changed=0" in output, output
    finally:
        host.check_output("rm -f /data/cache/kept-across-remount")


def test_nfs_entry_has_the_v41_options(host):
    # No NFS in this kernel: the entry is written (state present), not mounted.
    fields = fstab_entry(host, "/data/nfs")
    assert fields[:3] == ["nfs.example.internal:/export/hf", "/data/nfs", "nfs4"]
    options = fields[3].split(",")
    for option in ["nfsvers=4.1", "hard", "proto=tcp", "ro", "nodev", "nosuid", "_netdev", "nofail"]:
        assert option in options
    assert fields[4:] == ["0", "0"]
    assert mounted(host, "/data/nfs") is None


# --- check mode, --diff, other source forms ----------------------------------------------------


def test_check_mode_diff_of_the_converge_changes_nothing(host):
    output = check_mode_changes_nothing(host, run_converge, snapshot)
    assert "changed=0" in output


# On the converged hosts every volume is formatted and mounted: the probe leaves format.yml
# and mount.yml out (the first converge and the single-case tests run them).
test_every_documented_tag_runs_alone_in_check_mode = every_tag_check_mode_test(
    "dataset_volume",
    run_converge,
    snapshot,
    nothing_to_do={
        "dataset_volume_format": "converged: no volume is blank, so format.yml is not included",
    },
)


@pytest.mark.parametrize(
    "source",
    [
        "LABEL",  # LABEL=dvdata-<Debian major version>, unique across the containers
        EBS_LINK,  # a by-id path
        "vol-0123456789abcdef0",
    ],
)
def test_other_source_forms_resolve_to_the_data_image(host, source):
    if source == "LABEL":
        source = f"LABEL={devices(host)['data_label']}"
    before = snapshot(host)
    rc, output = run_custom(
        host, "--check", "--diff", source=source, mount_point="/data/other", format=True, by_id_dir="/srv/fake-by-id"
    )
    assert rc == 0, output
    assert f"{devices(host)['data']} already holds ext4" in output
    assert snapshot(host) == before


# --- bad inputs fail before any change ---------------------------------------------------------


def bad_inputs(host):
    """(name, role variables, words the refusal must contain)."""
    dev = devices(host)
    other_fs = "ext4" if is_trixie(host) else "xfs"  # what the blank image, formatted, does not hold
    x = {"mount_point": "/data/x"}
    return [
        ("no such path", {"source": "/dev/disk/by-id/nvme-no-such-disk", **x}, ["was not found", dev["blank"]]),
        (
            "EBS volume not attached",
            {"source": "vol-0aaaaaaaaaaaaaaaa", "by_id_dir": "/srv/fake-by-id", **x},
            ["was not found", "vol0123456789abcdef0"],
        ),
        ("no such UUID", {"source": "UUID=00000000-0000-0000-0000-000000000000", **x}, ["was not found"]),
        ("wrong fstype", {"source": dev["data"], "fstype": "xfs", "format": True, **x}, ["ext4 filesystem", "not xfs"]),
        ("wrong fstype 2", {"source": dev["blank"], "fstype": other_fs, **x}, ["not " + other_fs]),
        (
            "partition table",
            {"source": dev["ptable"], "format": True, **x},
            ["dos partition table", "Nothing was changed"],
        ),
        (
            "confirmation names another device",
            {"source": dev["ptable"], "format": True, "format_confirm_device": dev["blank"], **x},
            ["dos partition table"],
        ),
        ("mount point busy", {"source": dev["data"], "mount_point": "/data/cache"}, ["is busy", dev["blank"]]),
        (
            "mounted device, confirmed",
            {"source": dev["blank"], "fstype": other_fs, "format": True, "format_confirm_device": dev["blank"], **x},
            ["in use"],
        ),
        (
            "too small device",
            {"source": dev["data"], "min_size_mib": 100000, **x},
            ["less than dataset_volume_min_size_mib"],
        ),
        ("relative source", {"source": "relative/disk", **x}, ["dataset_volume_source", "not a valid block source"]),
        (
            "relative mount point",
            {"source": dev["data"], "mount_point": "data/relative"},
            ["dataset_volume_mount_point"],
        ),
        ("relative bind source", {"type": "bind", "source": "srv/shared-cache", **x}, ["not a valid bind source"]),
        ("missing bind source", {"type": "bind", "source": "/srv/no-such-folder", **x}, ["not an existing directory"]),
        ("system folder", {"source": dev["data"], "mount_point": "/etc"}, ["system folder"]),
        ("system folder 2", {"source": dev["data"], "mount_point": "/srv/"}, ["system folder"]),
        ("mount point holds files", {"source": dev["data"], "mount_point": "/srv/shared-cache"}, ["would hide"]),
        ("no such owner", {"source": dev["data"], "owner": "nosuchuser", **x}, ["dataset_volume_owner"]),
        (
            "the training user owns the cache root",
            {"source": dev["data"], "owner": "trainer", **x},
            ["dataset_volume_owner", "must be root's", "dataset_volume_owner: root"],
        ),
        (
            "the group may write the cache root",
            {"source": dev["data"], "group": "trainer", "mode": "0775", **x},
            ["dataset_volume_mode", "without group or other write"],
        ),
        (
            "setuid asked for",
            {"source": dev["data"], "mount_options": ["noatime", "suid"], **x},
            ["dataset_volume_mount_options", "nodev,nosuid", "Remove them"],
        ),
        ("nfs without export", {"type": "nfs", "source": "no-export-path", **x}, ["server:/export"]),
        ("unknown type", {"type": "lvm", "source": dev["data"], **x}, ["dataset_volume_type"]),
        (
            "confirmation without format",
            {"source": dev["data"], "format_confirm_device": dev["data"], **x},
            ["only together"],
        ),
    ]


def test_bad_inputs_fail_before_any_change(host, tmp_path):
    """All cases in one run (bad_inputs.yml): each must be refused, none may change anything."""
    cases = bad_inputs(host)
    report = tmp_path / "refusals.json"
    before = snapshot(host)
    variables = {"molecule_cases": [{"name": n, "vars": v} for n, v, _ in cases], "molecule_report": str(report)}
    rc, output = run_bad_inputs(host, "-e", json.dumps(variables))
    assert rc == 0, output[-5000:]
    assert "changed=0" in output, output[-5000:]
    refusals = json.loads(report.read_text())
    for name, _, words in cases:
        for word in words:
            assert word in refusals[name], (name, word, refusals[name])
    assert snapshot(host) == before
    assert not host.file("/data/x").exists
    # Relative paths would land in the remote working directory (root's home).
    assert not host.file("/root/data").exists
    assert not host.file("/data/relative").exists


def test_unknown_variables_are_refused(host):
    variables = custom(source=devices(host)["data"], mount_point="/data/x", fstpye="xfs")
    output = refused_before_any_change(host, run_converge, snapshot, "-e", variables)
    assert "dataset_volume_fstpye" in output


def test_too_small_after_mounting_is_reported(host):
    rc, output = run_custom(
        host, type="bind", source="/srv/shared-cache", read_only=True, mount_point="/data/x", min_size_mib=10**9
    )
    assert rc != 0
    assert "is too small" in output
    host.check_output("umount /data/x && sed -i '\\# /data/x #d' /etc/fstab && rmdir /data/x")


def test_missing_device_lists_the_block_devices(host):
    rc, output = run_custom(host, source="/dev/nonexistent-disk", mount_point="/data/x")
    assert rc != 0
    assert "Block devices on this host" in output
    for name in ("blank", "data", "ptable"):
        assert devices(host)[name] in output


def test_expected_folders_are_checked(host):
    rc, output = run_custom(
        host, type="bind", source="/srv/shared-cache", mount_point="/data/x", expected_dirs=["hub", "datasets"]
    )
    assert rc != 0
    assert "lacks datasets" in output
    host.check_output("umount /data/x && sed -i '\\# /data/x #d' /etc/fstab && rmdir /data/x")


# --- the explicit override erases exactly the named device ------------------------------------


def test_override_with_confirmation_formats_the_named_device(host):
    dev = devices(host)["ptable"]
    # Check mode first: it says it would wipe, and wipes nothing.
    rc, output = run_custom(
        host, "--check", "--diff", source=dev, format=True, format_confirm_device=dev, mount_point="/data/override"
    )
    assert rc == 0, output
    assert "wiped and formatted" in output
    assert "PTTYPE=dos" in host.check_output(f"blkid --probe --output export {dev}")
    try:
        rc, output = run_custom(host, source=dev, format=True, format_confirm_device=dev, mount_point="/data/override")
        assert rc == 0, output
        assert mounted(host, "/data/override")["source"] == dev
        assert "TYPE=ext4" in host.check_output(f"blkid --probe --output export {dev}")
        # Run again with the same variables: the device now holds ext4 and is left alone.
        rc, output = run_custom(host, source=dev, format=True, format_confirm_device=dev, mount_point="/data/override")
        assert rc == 0, output
        assert "changed=0" in output
    finally:
        # Put the partition table back for the next verify.
        host.run("umount /data/override; sed -i '\\# /data/override #d' /etc/fstab; rmdir /data/override")
        host.check_output(f"wipefs --all --quiet {dev}")
        host.check_output(f"python3 {STATE}/write-ptable.py {dev}")
    assert "PTTYPE=dos" in host.check_output(f"blkid --probe --output export {dev}")
