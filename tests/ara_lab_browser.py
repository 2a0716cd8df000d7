"""ARA records a real site.yml converge of lab hosts, and a real browser finds every host's tasks.

`make ara-lab-test` runs this file (.venvs/ara, chromium): a lab of its own (lab/ara, two hosts
over SSH, the light stack of the other labs: CPU torch, no Composer), site.yml for real with
ARA's callback, then `ara-manage runserver` and headless chromium, as `make lab ARA=1` and
`make ara-ui` give an operator. Each lab host's pages (every page of its results) must list
every task the run's own output (ansible.posix.json) says ran there. About 10 minutes on 2
cores: not in `make test`. tests/ara_browser.py is the quick version (`make ara-test`).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ara_browser import (  # noqa: F401  browse: the fixture
    ara_env,
    ara_server,
    browse,
    host_pages,
    recorded_site_run,
    text_listing_every_task,
)
from lablib import Lab, lab_inventory, light_stack, run_lab

ROOT = Path(__file__).resolve().parent.parent

LAB = "lab/ara"
PREFIX = "ara-gpu-"
HOSTS = [f"{PREFIX}01", f"{PREFIX}02"]
ARA_LAB = Lab.from_env().beside(LAB, PREFIX, 2880, gpu="none")


def lab(*args: str) -> subprocess.CompletedProcess:
    return run_lab(ARA_LAB, *args, check=False)


@pytest.fixture
def lab_fleet():
    """Two lab hosts and their inventory folder; removed afterwards, whatever happened."""
    work = ROOT / LAB
    work.mkdir(parents=True, exist_ok=True)
    inventory, group_vars = lab_inventory(work)
    try:
        assert lab("up", "--hosts", str(len(HOSTS)), "--gpu", "none").returncode == 0, "scripts/lab.py up failed"
        yield work, inventory
    finally:
        group_vars.unlink(missing_ok=True)
        lab("down")


def test_a_recorded_lab_converge_shows_every_hosts_tasks_in_a_browser(tmp_path, lab_fleet, browse):  # noqa: F811
    work, inventory = lab_fleet
    reports = work / "reports"
    extra = [*light_stack(work), f"fleet_report_dir={reports}", f"hf_loader_fleet_report_dir={reports}/hosts"]
    records = tmp_path / "ara"
    records_env = ara_env(records)
    done, ran, stats = recorded_site_run(
        inventory,
        records_env,
        *(arg for value in extra for arg in ("-e", value)),
        "-e",
        f"fleet_artifact_dir={work / 'artifacts'}",
        timeout=2400,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for host in HOSTS:
        assert stats[host]["failures"] == 0 and stats[host]["unreachable"] == 0, stats
        assert len(ran[host]) > 50, f"{host} ran only {ran[host]}: not a converge"

    with ara_server(records_env, tmp_path / "ara-server.log") as base:
        pages = host_pages(browse, base, ROOT / "site.yml", HOSTS)
        for host in HOSTS:
            text_listing_every_task(pages, ran, host)
