#!/bin/bash
# Undo attach-images.sh: unmount and detach the loop devices recorded there,
# each only while it is still attached to our own image file.
set -uo pipefail
DIR=/var/lib/dataset-volume-molecule
[ -f "$DIR/loops" ] || exit 0
while read -r dev image; do
    if losetup --noheadings --output NAME --associated "$image" 2>/dev/null | grep -qx "$dev"; then
        findmnt --raw --noheadings --source "$dev" --output TARGET | sort -r | while read -r target; do
            umount "$target" && echo "unmounted $target"
        done
        losetup --detach "$dev" && echo "detached $dev ($image)"
    fi
done <"$DIR/loops"
rm -f "$DIR/loops" "$DIR/devices.json"
