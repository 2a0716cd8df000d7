#!/bin/sh
# postrm of the simulated nvidia-persistenced: forget the unit's enablement on purge.
set -e
if [ "$1" = purge ]; then
    deb-systemd-helper purge nvidia-persistenced.service >/dev/null || true
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
exit 0
