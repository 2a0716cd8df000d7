#!/bin/bash
# Attach IMAGE to a loop device and record it in IMAGE's .loop file, so that
# cleanup detaches exactly this device. Loop devices belong to the host kernel.
set -euo pipefail
image=$1
record=${image%.img}.loop
if ! dev=$(losetup --find --show "$image" 2>/dev/null); then
    # A loop device created after this container started has no node here.
    # losetup names such a device "/dev/loopN (lost)": keep the path.
    dev=$(losetup --find 2>/dev/null)
    dev=${dev%% *}
    [ -e "$dev" ] || mknod -m 0660 "$dev" b 7 "${dev#/dev/loop}"
    dev=$(losetup --find --show "$image")
fi
echo "$dev" >"$record"
