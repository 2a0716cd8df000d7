#!/bin/sh
# prerm of the simulated nvidia-persistenced: stop the daemon before its removal.
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    systemctl stop nvidia-persistenced.service || true
fi
exit 0
