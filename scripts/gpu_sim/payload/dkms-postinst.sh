#!/bin/sh
# postinst of the simulated nvidia-kernel-open-dkms (scripts/gpu_sim/build.py). It does
# what DKMS does for the real package, without DKMS and without a compiler: for every
# kernel that has /lib/modules/<kernel>/build (its headers), install this version's
# nvidia.ko into /lib/modules/<kernel>/updates/dkms/ and run depmod for that kernel.
set -e
VERSION=@VERSION@
if [ "$1" = configure ]; then
    for build in /lib/modules/*/build; do
        [ -d "$build" ] || continue
        kernel=${build%/build}
        kernel=${kernel##*/}
        install -D -m 0644 "/usr/src/nvidia-$VERSION/nvidia.ko" "/lib/modules/$kernel/updates/dkms/nvidia.ko"
        depmod "$kernel"
        echo "nvidia/$VERSION, $kernel, x86_64: installed (lab stand-in for DKMS)"
    done
fi
exit 0
