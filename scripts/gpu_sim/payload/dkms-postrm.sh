#!/bin/sh
# postrm of the simulated nvidia-kernel-open-dkms (scripts/gpu_sim/build.py): on remove
# and purge, take the module out of every kernel's updates/dkms/ (what `dkms remove`
# does); on upgrade the new version's postinst replaces it.
set -e
case "$1" in
    remove | purge)
        for module in /lib/modules/*/updates/dkms/nvidia.ko; do
            [ -e "$module" ] || continue
            rm -f "$module"
            kernel=${module%/updates/dkms/nvidia.ko}
            depmod "${kernel##*/}"
        done
        ;;
esac
exit 0
