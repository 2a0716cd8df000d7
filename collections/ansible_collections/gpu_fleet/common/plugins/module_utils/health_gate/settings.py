"""The health gate's variables, checked before any command runs, and whether the host needs the fabric check."""

from __future__ import annotations

CHECKS = ("cuda", "dcgm", "fabric")


def _number(value, kind):
    """value as int or float (`-e name=5` gives the text '5'); None when it is not one."""
    if isinstance(value, bool):
        return None
    try:
        number = kind(value)
    except (TypeError, ValueError):
        return None
    return number if kind is float or str(number) == str(value).strip() else None


def settings_errors(settings: dict) -> list[str]:
    """What is wrong with the gate's variables (empty: nothing). Checked before any command runs."""
    problems = []
    report = settings.get("driver_report")
    if not isinstance(report, dict) or "gpu_count" not in report:
        problems.append(
            "hf_loader_driver_report has no gpu_count: pass the nvidia_driver role's report"
            ' (hf_loader_driver_report: "{{ nvidia_driver_report }}"), as site.yml does for the cache test.'
        )
    else:
        try:
            int(report["gpu_count"])
        except (TypeError, ValueError):
            problems.append(f"hf_loader_driver_report.gpu_count {report['gpu_count']!r} is not a number.")
    checks = settings.get("checks")
    if not isinstance(checks, list) or any(check not in CHECKS for check in checks):
        problems.append(f"hf_loader_health_gate_checks {checks!r} must be a list drawn from {list(CHECKS)}.")
    command = settings.get("cuda_command")
    if not isinstance(command, list) or not command or not all(isinstance(word, str) and word for word in command):
        problems.append(
            f"hf_loader_health_gate_cuda_command {command!r} must be a command as a list of words, such as"
            " ['/opt/hf-loader/venv/bin/python', '-m', 'hf_loader.gpu_check']."
        )
    tolerance = _number(settings.get("tolerance"), float)
    if tolerance is None or not 0 < tolerance < 1:
        problems.append(
            f"hf_loader_health_gate_tolerance {settings.get('tolerance')!r} must be a number between 0 and 1,"
            " such as 1e-4."
        )
    for name in ("size", "alloc_mib", "cuda_timeout", "dcgmi_timeout", "fabric_timeout"):
        value = _number(settings.get(name), int)
        if value is None or value < 1:
            problems.append(
                f"hf_loader_health_gate_{name} {settings.get(name)!r} must be a whole number of at least 1."
            )
    level = settings.get("dcgmi_level")
    if _number(level, int) not in (1, 2, 3, 4):
        problems.append(
            f"hf_loader_health_gate_dcgmi_level {level!r} must be 1, 2, 3 or 4 (dcgmi diag -r: 1 takes seconds,"
            " 3 about 15 minutes); leave dcgm out of hf_loader_health_gate_checks to run none."
        )
    for name in ("dcgmi_command", "fabric_manager_service"):
        value = settings.get(name)
        if not isinstance(value, str) or not value.strip() or any(char.isspace() for char in value):
            problems.append(f"hf_loader_health_gate_{name} {value!r} must be one word (a command or a unit name).")
    return problems


def fabric_needed(driver_report: dict) -> bool:
    """NVSwitch (NVLink 4 and older) or NVLink 5 on this host, as the nvidia_driver role found in sysfs."""
    report = driver_report or {}
    try:
        switches = int(report.get("nvswitch_count") or 0)
    except (TypeError, ValueError):
        switches = 0
    nvlink5 = report.get("nvlink5")
    if isinstance(nvlink5, str):
        nvlink5 = nvlink5.strip().lower() in ("true", "yes", "1")
    return switches > 0 or bool(nvlink5)
