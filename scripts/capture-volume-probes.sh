#!/usr/bin/env bash
# Capture, in full, what the tools of gpu_fleet.common.dataset_volume_probe print for
# real loop devices on each Debian release the dataset_volume role supports, so that
# tests/test_dataset_volume_logic.py decides on real output and not on shortened copies.
#
#   bash scripts/capture-volume-probes.sh            # both releases
#   bash scripts/capture-volume-probes.sh trixie     # one
#
# For each release it starts a privileged local/debian-systemd:<release> container
# (the tools are the release's own), installs what a case needs and is missing, then
# for each case attaches a sparse file as a loop device, prepares it (mkfs, sfdisk,
# mount, ...) and runs the probe's exact commands (same argv, LC_ALL=C). Each case
# becomes tests/fixtures/dataset_volume/captured_<release>_<case>.json: every
# command's argv, exit status, stdout and stderr byte for byte, how the device was
# made, the package versions and the date. Device names are recorded as the kernel
# gave them (loop numbers differ from run to run); the tests read them from the file.
#
# Loop devices live in the host kernel and outlive a container, so the backing files
# lie in a folder of this run shared with the container, and the exit trap here
# detaches every loop device backed by a file in it, whatever happened inside.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
OUT_DIR=${CAPTURE_OUT_DIR:-$REPO/tests/fixtures/dataset_volume}
IMAGE_REPO=${ENGINE_IMAGE_REPO:-local/debian-systemd}
# What the cases need beyond the probe's own tools (util-linux, diffutils).
PACKAGES="util-linux fdisk e2fsprogs xfsprogs lvm2 diffutils mount"
# Large enough for mkfs.xfs of every release (300 MiB minimum since xfsprogs 5.19).
DEVICE_SIZE=512M

log() { printf '[capture] %s\n' "$*" >&2; }
die() { printf '[capture] ERROR: %s\n' "$*" >&2; exit 1; }

# --- inside the container ---------------------------------------------------------

# run_tool DIR NAME ARGV...: runs a probe command and keeps everything it printed.
run_tool() {
    local dir=$1 name=$2 rc=0
    shift 2
    printf '%s\0' "$@" >"$dir/$name.argv"
    "$@" >"$dir/$name.out" 2>"$dir/$name.err" || rc=$?
    printf '%s\n' "$rc" >"$dir/$name.rc"
}

# step DIR ARGV...: a preparation command, recorded as the case's recipe.
step() {
    local dir=$1
    shift
    printf '%s\n' "$*" >>"$dir/recipe"
    "$@" >>"$dir/recipe.log" 2>&1 || die "$* failed: $(tail -n 5 "$dir/recipe.log")"
}

# The probe's commands, as dataset_volume_probe.py runs them for a block device.
probe_device() {
    local dir=$1 device=$2
    run_tool "$dir" blkid blkid --probe --output export "$device"
    run_tool "$dir" wipefs wipefs --no-act --json "$device"
    run_tool "$dir" lsblk lsblk --json --bytes --paths --output NAME,PATH,TYPE,FSTYPE,MOUNTPOINT,SIZE,MAJ:MIN "$device"
    run_tool "$dir" cmp cmp --quiet --bytes=1048576 "$device" /dev/zero
}

# ... and for the mount point.
probe_mount_point() {
    local dir=$1 name=$2 mount_point=$3
    run_tool "$dir" "$name" findmnt --json --bytes --output TARGET,SOURCE,FSTYPE,OPTIONS,FSROOT,MAJ:MIN,SIZE,AVAIL \
        --mountpoint "$mount_point"
}

attach() {
    local file=$1
    truncate --size "$DEVICE_SIZE" "$file"
    losetup --find --show --partscan "$file"
}

# One function per case: prepare DEVICE, probe it. $1 = case folder, $2 = device.
case_blank() { probe_device "$1" "$2"; }

case_random_first_mib() {
    step "$1" dd if=/dev/urandom of="$2" bs=1M count=1 conv=fsync status=none
    probe_device "$1" "$2"
}

case_ext4_labelled() {
    step "$1" mkfs.ext4 -q -L dvdata "$2"
    probe_device "$1" "$2"
    local uuid
    uuid=$(blkid --probe --output value --match-tag UUID "$2")
    # How the probe resolves a UUID= source.
    run_tool "$1" blkid_match_uuid blkid --cache-file /dev/null --output device --match-token "UUID=$uuid"
}

case_ext4_with_files() {
    step "$1" mkfs.ext4 -q -L hfcache "$2"
    step "$1" mkdir -p /mnt/fill
    step "$1" mount "$2" /mnt/fill
    step "$1" mkdir -p /mnt/fill/datasets/ns___name /mnt/fill/hub
    step "$1" dd if=/dev/urandom of=/mnt/fill/datasets/ns___name/data-00000-of-00001.arrow bs=1M count=8 status=none
    step "$1" umount /mnt/fill
    probe_device "$1" "$2"
}

case_ext4_mounted() {
    step "$1" mkfs.ext4 -q "$2"
    step "$1" mkdir -p /mnt/old /mnt/bound
    step "$1" mount "$2" /mnt/old
    step "$1" mkdir -p /mnt/old/srv
    step "$1" mount --bind /mnt/old/srv /mnt/bound
    probe_device "$1" "$2"
    probe_mount_point "$1" findmnt /mnt/old
    # A folder of the same device bind-mounted elsewhere: same major:minor, another root.
    probe_mount_point "$1" findmnt_bind /mnt/bound
    probe_mount_point "$1" findmnt_nothing /mnt/fill
    step "$1" umount /mnt/bound
    step "$1" umount /mnt/old
}

case_xfs() {
    step "$1" mkfs.xfs -q "$2"
    probe_device "$1" "$2"
}

case_xfs_mounted() {
    step "$1" mkfs.xfs -q "$2"
    step "$1" mkdir -p /data
    step "$1" mount "$2" /data
    probe_device "$1" "$2"
    step "$1" umount /data
}

case_dos() {
    printf 'label: dos\n,,L\n' >"$1/sfdisk.in"
    step "$1" sfdisk --quiet "$2" <"$1/sfdisk.in"
    printf 'sfdisk input: %s\n' "$(tr '\n' ';' <"$1/sfdisk.in")" >>"$1/recipe"
    # On a host the kernel shows the new partitions; here BLKRRPART leaves them out
    # (it answers 0 and adds nothing), so they are added with BLKPG, as partx does.
    step "$1" partx --add "$2"
    probe_device "$1" "$2"
}

case_gpt() {
    printf 'label: gpt\n,,L\n' >"$1/sfdisk.in"
    step "$1" sfdisk --quiet "$2" <"$1/sfdisk.in"
    printf 'sfdisk input: %s\n' "$(tr '\n' ';' <"$1/sfdisk.in")" >>"$1/recipe"
    # On a host the kernel shows the new partitions; here BLKRRPART leaves them out
    # (it answers 0 and adds nothing), so they are added with BLKPG, as partx does.
    step "$1" partx --add "$2"
    probe_device "$1" "$2"
}

case_swap() {
    step "$1" mkswap "$2"
    probe_device "$1" "$2"
}

# A partition table written over a filesystem without wiping it (sfdisk --wipe never):
# both signatures remain.
case_ext4_then_dos() {
    step "$1" mkfs.ext4 -q -L dvdata "$2"
    printf 'label: dos\n,,L\n' >"$1/sfdisk.in"
    step "$1" sfdisk --quiet --wipe never "$2" <"$1/sfdisk.in"
    printf 'sfdisk input: %s\n' "$(tr '\n' ';' <"$1/sfdisk.in")" >>"$1/recipe"
    # On a host the kernel shows the new partitions; here BLKRRPART leaves them out
    # (it answers 0 and adds nothing), so they are added with BLKPG, as partx does.
    step "$1" partx --add "$2"
    probe_device "$1" "$2"
}

# Two filesystems' superblocks on one device (an xfs over an old ext4 whose superblock
# was never wiped): blkid -p cannot tell which one holds.
case_xfs_over_ext4() {
    step "$1" mkfs.xfs -q "$2"
    # In the case folder, so that the recipe names no path of this run.
    cd "$1"
    step "$1" mkfs.ext4 -q -F ext4.img "$DEVICE_SIZE"
    # Only ext4's superblock (bytes 1024-2047); the xfs superblock at 0 stays.
    step "$1" dd if=ext4.img of="$2" bs=1024 skip=1 seek=1 count=1 conv=notrunc,fsync status=none
    rm -f ext4.img
    cd /
    probe_device "$1" "$2"
}

case_lvm() {
    # No udev in the container: LVM reads the devices itself.
    step "$1" pvcreate --quiet --config 'devices { obtain_device_list_from_udev = 0 }' "$2"
    probe_device "$1" "$2"
}

CASES="blank random_first_mib ext4_labelled ext4_with_files ext4_mounted xfs xfs_mounted dos gpt swap ext4_then_dos xfs_over_ext4 lvm"

write_json() {
    local dir=$1 release=$2 case_name=$3 device=$4
    python3 - "$dir" "$release" "$case_name" "$device" <<'PY'
import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

folder, release, case, device = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
packages = ["util-linux", "fdisk", "e2fsprogs", "xfsprogs", "lvm2", "diffutils", "mount"]
versions = {}
for package in packages:
    done = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
    versions[package] = done.stdout.strip()
tools = {}
for argv_file in sorted(folder.glob("*.argv")):
    name = argv_file.stem
    tools[name] = {
        "argv": argv_file.read_text().split("\0")[:-1],
        "rc": int((folder / f"{name}.rc").read_text()),
        "stdout": (folder / f"{name}.out").read_text(),
        "stderr": (folder / f"{name}.err").read_text(),
    }
recipe = folder / "recipe"
capture = {
    "release": release,
    "debian_version": Path("/etc/debian_version").read_text().strip(),
    "packages": versions,
    # Major.minor only: the kernel decides what lsblk sees of loop partitions.
    "kernel": ".".join(subprocess.run(["uname", "-r"], capture_output=True, text=True).stdout.split(".")[:2]),
    "captured_on": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
    "captured_by": "scripts/capture-volume-probes.sh",
    "case": case,
    "device": device,
    "made_with": recipe.read_text().splitlines() if recipe.exists() else [],
    "environment": {"LC_ALL": "C"},
    "tools": tools,
}
out = Path("/capture-out") / f"captured_{release}_{case}.json"
out.write_text(json.dumps(capture, indent=2, ensure_ascii=False) + "\n")
PY
}

inside() {
    local release=$1 work=$2
    export LC_ALL=C
    local missing=() package
    for package in $PACKAGES; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
    done
    if ((${#missing[@]})); then
        log "$release: installing ${missing[*]}"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -qq -y --no-install-recommends "${missing[@]}" >/dev/null
    fi
    local devices=()
    # shellcheck disable=SC2317  # called by the trap
    release_devices() {
        mountpoint -q /mnt/bound && umount /mnt/bound
        mountpoint -q /mnt/old && umount /mnt/old
        mountpoint -q /mnt/fill && umount /mnt/fill
        mountpoint -q /data && umount /data
        local device
        for device in "${devices[@]}"; do losetup --detach "$device" 2>/dev/null || true; done
        devices=()
    }
    trap release_devices EXIT
    local case_name dir device
    for case_name in $CASES; do
        dir=$work/$release/$case_name
        mkdir -p "$dir"
        device=$(attach "$work/$release-$case_name.img")
        devices+=("$device")
        "case_$case_name" "$dir" "$device"
        write_json "$dir" "$release" "$case_name" "$device"
        release_devices
        rm -f "$work/$release-$case_name.img"
        log "$release: $case_name captured on $device"
    done
}

# --- on the host ------------------------------------------------------------------

detach_ours() {
    local work=$1 name back
    while read -r name back; do
        [[ $back == "$work"/* ]] && losetup --detach "$name" 2>/dev/null || true
    done < <(losetup --list --noheadings --output NAME,BACK-FILE 2>/dev/null)
}

main() {
    if [[ ${1:-} == --inside ]]; then
        inside "$2" "$3"
        return
    fi
    local releases=("$@")
    ((${#releases[@]})) || releases=(bookworm trixie)
    command -v docker >/dev/null || die "no docker client: start the engine with make engine"
    [[ $(id -u) == 0 ]] || die "loop devices need root: run as root (sudo bash $0)"
    local work
    work=$(mktemp -d "${TMPDIR:-/tmp}/capture-volume-probes.XXXXXX")
    # shellcheck disable=SC2064  # the folder is fixed now
    trap "detach_ours '$work'; rm -rf '$work'" EXIT
    mkdir -p "$OUT_DIR"
    local release
    for release in "${releases[@]}"; do
        docker image inspect "$IMAGE_REPO:$release" >/dev/null 2>&1 ||
            die "no image $IMAGE_REPO:$release: build it with make engine"
        rm -f "$OUT_DIR/captured_${release}_"*.json
        log "$release: capturing in $IMAGE_REPO:$release"
        docker run --rm --privileged \
            --volume "$work:$work" \
            --volume "$OUT_DIR:/capture-out" \
            --volume "$HERE/capture-volume-probes.sh:/capture-volume-probes.sh:ro" \
            --entrypoint /bin/bash \
            "$IMAGE_REPO:$release" /capture-volume-probes.sh --inside "$release" "$work"
    done
    log "written to $OUT_DIR"
}

main "$@"
