"""The fleet bench's judgement of issue 17's goals (bench/fleet_rerun.py), from medians."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import fleet_rerun  # noqa: E402


def medians(defaults, knobs, project, cpu=(40.0, 17.0, 25.0), calibration=(4.0, 1.4, 3.4)):
    walls = (defaults, knobs, project)
    return {
        name: {"wall_s": wall, "controller_cpu_s_per_host": cpu_s / 10, "calibration_wall_s": cal}
        for name, wall, cpu_s, cal in zip(("defaults", "knobs", "project"), walls, cpu, calibration, strict=True)
    }


def test_each_goal_is_judged_against_its_own_target():
    judged = {goal["goal"]: goal for goal in fleet_rerun.goals(medians(30.0, 9.0, 6.0))}
    assert judged["ratio_knobs"]["value"] == 3.33 and judged["ratio_knobs"]["met"]
    assert judged["ratio_project"]["value"] == 5.0 and judged["ratio_project"]["met"]
    assert judged["cpu_per_host_knobs"]["met"] and not judged["cpu_per_host_project"]["met"]  # 2.5 s > 1.8 s
    # The calibration's ceiling is printed beside each ratio.
    assert "one module call a host reaches 2.86x" in judged["ratio_knobs"]["text"]


def test_a_ratio_under_its_target_is_missed():
    judged = {goal["goal"]: goal for goal in fleet_rerun.goals(medians(20.0, 15.0, 25.0))}
    assert not judged["ratio_knobs"]["met"] and not judged["ratio_project"]["met"]
    assert judged["ratio_project"]["value"] == 0.8


def test_without_the_defaults_nothing_is_judged():
    assert fleet_rerun.goals({"knobs": medians(20.0, 15.0, 25.0)["knobs"]}) == []


def test_the_recap_gives_rows_per_host():
    recap = "bench-gpu-01               : ok=28   changed=0    unreachable=0    failed=0    skipped=16   rescued=0"
    assert fleet_rerun.RECAP.search(recap).groups() == ("bench-gpu-01", "28", "0", "0", "0", "16")
