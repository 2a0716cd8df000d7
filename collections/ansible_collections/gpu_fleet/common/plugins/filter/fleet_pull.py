"""Filters of pull mode's cloud-config (roles/fleet_pull, tasks/user_data.yml)."""

from __future__ import annotations

import base64
import gzip

import yaml

# EC2 refuses user-data over 16 KiB (before its own base64); other clouds allow more.
USER_DATA_LIMIT = 16384


def gzip_b64(text: str) -> str:
    """cloud-init's `encoding: gz+b64`: the same bytes for the same text (no timestamp in the header)."""
    return base64.b64encode(gzip.compress(text.encode("utf-8"), compresslevel=9, mtime=0)).decode("ascii")


def cloud_config(files: list[dict], commands: list[list[str]]) -> str:
    """A #cloud-config document that writes `files` (path, mode, content) and then runs `commands`."""
    # Ansible hands over tagged str subclasses, which yaml.safe_dump refuses: plain str here.
    document = {
        "write_files": [
            {
                "path": str(f["path"]),
                "owner": "root:root",
                "permissions": str(f["mode"]),
                "encoding": "gz+b64",
                "content": gzip_b64(str(f["content"])),
            }
            for f in files
        ],
        "runcmd": [[str(word) for word in command] for command in commands],
    }
    return "#cloud-config\n" + yaml.safe_dump(document, sort_keys=False, width=1 << 20)


class FilterModule:
    def filters(self):
        return {"fleet_pull_gzip_b64": gzip_b64, "fleet_pull_cloud_config": cloud_config}
