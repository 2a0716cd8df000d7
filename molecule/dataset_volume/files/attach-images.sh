#!/bin/bash
# Create the test images and attach them to loop devices, inside the test
# container. Loop devices belong to the host kernel: every device attached
# here is recorded in $DIR/loops at once, and cleanup.yml detaches exactly
# those (and only while they still hold our image file).
set -euo pipefail
DIR=/var/lib/dataset-volume-molecule
mkdir -p "$DIR"
if [ -s "$DIR/devices.json" ]; then exit 0; fi

# The data that must survive: a small hub and Arrow cache.
SRC="$DIR/data-src"
rm -rf "$SRC"
mkdir -p "$SRC/hub/datasets--ns--name/snapshots/0123abc" "$SRC/datasets/ns___name/default/0.0.0/4567def"
head -c 3145728 /dev/urandom >"$SRC/datasets/ns___name/default/0.0.0/4567def/name-train.arrow"
echo '{"builder_name": "name", "splits": {"train": {"num_examples": 3}}}' \
    >"$SRC/datasets/ns___name/default/0.0.0/4567def/dataset_info.json"
head -c 1048576 /dev/urandom >"$SRC/hub/datasets--ns--name/snapshots/0123abc/train-00000-of-00001.parquet"
(cd "$SRC" && find . -type f -print0 | sort -z | xargs -0 sha256sum) >"$DIR/data.sha256"

rm -f "$DIR"/*.img
# blank: what the role formats (xfs needs at least 300 MiB).
truncate -s 320M "$DIR/blank.img"
# data: an ext4 filesystem that already holds the cache.
truncate -s 64M "$DIR/data.img"
# The containers share the host kernel and see each other's loop devices:
# the label carries the Debian major version to stay unique.
label="dvdata-$(cut -d. -f1 /etc/debian_version)"
mkfs.ext4 -q -F -L "$label" -d "$SRC" "$DIR/data.img"
# ptable: a DOS partition table and nothing else.
truncate -s 16M "$DIR/ptable.img"
# (the verify puts it back with the same helper after the override test)
cat >"$DIR/write-ptable.py" <<'PY'
import struct
import sys

with open(sys.argv[1], "r+b") as target:
    target.seek(446)
    target.write(bytes([0, 0, 0, 0, 0x83, 0, 0, 0]) + struct.pack("<II", 2048, 30720))
    target.seek(510)
    target.write(b"\x55\xaa")
PY
python3 "$DIR/write-ptable.py" "$DIR/ptable.img"

attach() {
    local dev
    if ! dev=$(losetup --find --show "$1" 2>/dev/null); then
        # The kernel may hand out a loop device created after this container
        # started, whose node is then missing here: create the node, retry.
        # losetup names such a device "/dev/loopN (lost)": keep the path.
        dev=$(losetup --find 2>/dev/null)
        dev=${dev%% *}
        [ -e "$dev" ] || mknod -m 0660 "$dev" b 7 "${dev#/dev/loop}"
        dev=$(losetup --find --show "$1")
    fi
    echo "$dev $1" >>"$DIR/loops"
    echo "$dev"
}
blank=$(attach "$DIR/blank.img")
data=$(attach "$DIR/data.img")
ptable=$(attach "$DIR/ptable.img")
uuid=$(blkid --probe --match-tag UUID --output value "$data")

# A fake /dev/disk/by-id with the links an EBS volume has on a Nitro host.
rm -rf /srv/fake-by-id
mkdir -p /srv/fake-by-id
ln -s "$data" /srv/fake-by-id/nvme-Amazon_Elastic_Block_Store_vol0123456789abcdef0
ln -s "$ptable" /srv/fake-by-id/nvme-Amazon_Elastic_Block_Store_vol0fedcba9876543210
ln -s "$blank" /srv/fake-by-id/nvme-Amazon_EC2_NVMe_Instance_Storage_AWS1234567890ABCDEF

printf '{"blank": "%s", "data": "%s", "ptable": "%s", "data_uuid": "%s", "data_label": "%s"}\n' \
    "$blank" "$data" "$ptable" "$uuid" "$label" >"$DIR/devices.json"
