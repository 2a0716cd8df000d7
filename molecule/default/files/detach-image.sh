#!/bin/bash
# Unmount MOUNT_POINT and detach the loop device attach-image.sh recorded for
# IMAGE, only while that device still holds IMAGE.
set -uo pipefail
image=$1 mount_point=$2
record=${image%.img}.loop
[ -s "$record" ] || exit 0
dev=$(cat "$record")
umount "$mount_point" 2>/dev/null || true
if losetup "$dev" 2>/dev/null | grep -qF "$image"; then losetup -d "$dev"; fi
rm -f "$record"
