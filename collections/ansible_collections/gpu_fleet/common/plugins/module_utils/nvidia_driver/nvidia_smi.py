"""nvidia-smi's CSV rows, and the verification of the running driver against what was asked for."""

from __future__ import annotations

from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.versions import (
    version_matches,
)

SMI_FIELDS = [
    "index",
    "pci.bus_id",
    "name",
    "uuid",
    "driver_version",
    "persistence_mode",
    "memory.total",
    "serial",
]


def _smi_value(value: str):
    value = value.strip()
    if value in ("[N/A]", "N/A", "[Not Supported]", "[Unknown Error]", ""):
        return None
    return value


def parse_nvidia_smi_csv(text: str, fields=None) -> list[dict]:
    """Rows of `nvidia-smi --query-gpu=FIELDS --format=csv,noheader,nounits`.

    Names contain no commas; values are stripped; '[N/A]' becomes None.
    """
    fields = list(fields or SMI_FIELDS)
    rows = []
    for number, line in enumerate((text or "").splitlines(), start=1):
        if not line.strip():
            continue
        values = line.split(",")
        if len(values) != len(fields):
            raise ValueError(
                f"nvidia-smi line {number} has {len(values)} values for {len(fields)} fields: {line.strip()!r}"
            )
        rows.append({field: _smi_value(value) for field, value in zip(fields, values, strict=True)})
    return rows


def verify(rows: list[dict], pin="", branch="", expected_count=0) -> dict:
    """Check what nvidia-smi reports against what the role was asked for."""
    problems = []
    versions = sorted({row.get("driver_version") or "" for row in rows})
    if not rows:
        problems.append("nvidia-smi lists no GPU")
    for version in versions:
        if not version_matches(version, pin, branch):
            wanted = f"exactly {pin} (nvidia_driver_version)" if pin else f"branch {branch} (nvidia_driver_branch)"
            problems.append(f"driver {version or 'unknown'} is running, wanted {wanted}")
    if expected_count and len(rows) != int(expected_count):
        problems.append(f"nvidia-smi lists {len(rows)} GPU(s), nvidia_driver_expected_gpu_count is {expected_count}")
    off = [row.get("index") for row in rows if (row.get("persistence_mode") or "").lower() != "enabled"]
    if off:
        problems.append(f"persistence mode is off on GPU(s) {', '.join(str(index) for index in off)}")
    return {
        "verified": not problems,
        "problems": problems,
        "gpu_count": len(rows),
        "driver_version": versions[0] if len(versions) == 1 else ",".join(versions),
        "gpus": [
            {key: row.get(key) for key in ("index", "pci.bus_id", "name", "uuid", "persistence_mode")} for row in rows
        ],
    }
