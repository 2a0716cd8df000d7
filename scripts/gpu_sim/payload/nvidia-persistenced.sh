#!/bin/sh
# Lab stand-in for NVIDIA's persistence daemon (/usr/bin/nvidia-persistenced of the
# simulated nvidia-persistenced package, scripts/gpu_sim/build.py). It holds no GPU: it
# refuses to start while no driver is loaded, as the real daemon does, and otherwise
# sleeps until stopped; the simulated nvidia-smi reports persistence mode Enabled while
# nvidia-persistenced.service is active. Options (--user, --persistence-mode, --verbose)
# are accepted and ignored.
if [ ! -r /proc/driver/nvidia/version ]; then
    echo "nvidia-persistenced failed to initialize. Check syslog for more details." >&2
    exit 1
fi
version=$(awk '/^NVRM version:/ { for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+[.][0-9]+([.][0-9]+)?$/) { print $i; exit } }' \
    /proc/driver/nvidia/version)
echo "Started (lab stand-in of nvidia-persistenced), driver $version"
exec sleep infinity
