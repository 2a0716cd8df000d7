"""Before anything changes: the rollout's batch size and target checked, and what it does on each host
(host_plan), from what the host runs (its loaded driver, its active training units, its cordons):
nothing (already on the target), skip it (busy, with upgrade_driver_jobs=skip, or cordoned with
skip_rollouts), or drain and upgrade it. Read again when the host's batch starts."""

from __future__ import annotations

import re

from ansible_collections.gpu_fleet.common.plugins.filter.cordon import (
    text as cordon_text,
)
from ansible_collections.gpu_fleet.common.plugins.module_utils.driver_rollout.job_records import (
    JOB_MODES,
)
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.probe import (
    parse_proc_version,
    parse_units,
)
from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.versions import (
    pin_in_branch,
    valid_branch,
    valid_pin,
    version_matches,
)

SERIAL = re.compile(r"^(?:[1-9]\d*|(?:100|[1-9]\d?)%)$")


def valid_serial(value) -> bool:
    """A batch size as `serial` takes it: a host count (>= 1) or a percentage (1-100%)."""
    return isinstance(value, int | str) and not isinstance(value, bool) and bool(SERIAL.match(str(value).strip()))


def target_errors(branch, pin) -> list[str]:
    """What is wrong with the target the rollout was given (empty: a valid target)."""
    if not valid_branch(branch):
        return [f'upgrade_driver_branch must be a driver branch of three digits, quoted, such as "580"; got {branch!r}']
    if pin and not valid_pin(pin):
        return [f'upgrade_driver_version must be an exact driver version such as "{branch}.95.05"; got {pin!r}']
    if pin and not pin_in_branch(pin, branch):
        fix = f"set the branch to {pin.split('.')[0]}"
        return [f"upgrade_driver_version {pin} is not of upgrade_driver_branch {branch}: {fix}"]
    return []


def target_text(branch, pin="") -> str:
    return pin or f"branch {branch} (its newest, for hosts on another branch)"


def loaded_version(proc_version_text: str) -> str:
    """The loaded driver's version from /proc/driver/nvidia/version ('' when none is loaded)."""
    return parse_proc_version(proc_version_text)["version"]


def host_plan(
    proc_version_text: str, units_text: str, branch, pin="", jobs_mode="drain", drained_text="", cordons=None, jobs=None
) -> dict:
    """What the rollout does on one host, from /proc/driver/nvidia/version, its active training
    units, the units an earlier rollout drained there and did not start again (one a line), its
    cordons (gpu_fleet.common.cordon_parse) and its job records
    (gpu_fleet.common.driver_rollout_job_records).

    A cordon with skip_rollouts keeps the host out, whatever it runs ('skip', with the
    cordon's reason). Other cordons do not change the plan; the rollout never lifts one it did
    not set, and keeps the host's training stopped while one is left. A job record that cannot
    be read skips the host: the rollout would not know which hosts its job spans.

    A host whose loaded driver already is the target is only verified again, its training
    left running ('current'); the others are upgraded ('upgrade'), or, with jobs_mode 'skip',
    skipped while a training unit is active. What happens to the jobs (drained whole, waited
    for) is decided for the whole batch (driver_rollout_job_drains): `jobs` lists the recorded
    jobs whose unit is active here or was left stopped by an earlier rollout.
    """
    if jobs_mode not in JOB_MODES:
        raise ValueError(f"upgrade_driver_jobs must be one of {', '.join(JOB_MODES)}; got {jobs_mode!r}")
    jobs = jobs or {"jobs": [], "errors": []}
    loaded = loaded_version(proc_version_text)
    busy = parse_units(units_text)
    left_stopped = sorted({line.strip() for line in (drained_text or "").splitlines() if line.strip()})
    skip_marks = [cordon for cordon in cordons or [] if cordon.get("skip_rollouts")]
    if skip_marks:
        action = "skip"
        reason = f"cordoned out of rollouts: {cordon_text(skip_marks)}"
    elif jobs.get("errors"):
        action = "skip"
        reason = "its job records cannot be read: " + "; ".join(jobs["errors"])
    elif loaded and version_matches(loaded, pin, branch):
        action, reason = "current", f"already runs {loaded}"
        if not pin:
            # As nvidia_driver keeps a host on its branch between runs (no drift), a branch target
            # does not move a host inside the branch; the report says how to.
            reason += f", of branch {branch}: name the version to move inside the branch (upgrade_driver_version)"
    elif busy and jobs_mode == "skip":
        action, reason = "skip", f"training runs ({', '.join(busy)}) and upgrade_driver_jobs is skip"
    else:
        action = "upgrade"
        reason = f"runs {loaded or 'no driver'}, wanted {target_text(branch, pin)}"
    return {
        "action": action,
        "reason": reason,
        "loaded_version": loaded,
        "busy_units": busy,
        "restart_units": left_stopped,
        "jobs": [
            {**job, "active": job["unit"] in busy}
            for job in jobs.get("jobs", [])
            if job["unit"] in busy or job["unit"] in left_stopped
        ],
        "cordons": [cordon.get("owner", "") for cordon in cordons or []],
    }
