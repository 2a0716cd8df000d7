#!/bin/sh
# postinst of the simulated nvidia-persistenced (scripts/gpu_sim/build.py): enable the
# unit (as Debian packaging does) and restart a running daemon after an upgrade. It is
# not started here: without a loaded driver it would fail, and the driver loads at boot.
set -e
if [ "$1" = configure ]; then
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload || true
    fi
    deb-systemd-helper enable nvidia-persistenced.service >/dev/null || true
    if [ -d /run/systemd/system ] && systemctl is-active --quiet nvidia-persistenced.service; then
        systemctl try-restart nvidia-persistenced.service || true
    fi
fi
exit 0
