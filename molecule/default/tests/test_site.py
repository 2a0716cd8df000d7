"""Verify the whole site: the stored cache test reports, the units, the training
runbook (one two-node job, then each host alone), and that a broken cache fails
its host with the cache test's own message while the other host finishes and
trains."""

import json
import os
import time
from pathlib import Path

import pytest
import testinfra
from playbook_run import run_playbook

testinfra_hosts = ["ansible://all"]

ROOT = Path(__file__).resolve().parents[3]
REPORT = "/var/lib/hf-loader/validation.json"
REPORT_DIR = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/nonexistent")) / "reports"
LAUNCH_ENV = "/etc/hf-loader/launch-default.env"
# Inventory order: bookworm is node rank 0 of the two-node job.
NODE_RANK = {"default-bookworm": 0, "default-trixie": 1}


def stored_report(host):
    return json.loads(host.file(REPORT).content_string)


def test_cache_test_passed_as_the_training_user(host):
    report = stored_report(host)
    assert report["ready"] is True, report["message"]
    assert report["exit_code"] == 0
    assert report["loading"]["batches"] == 2
    assert report["resolution"]["source"]
    assert host.file(REPORT).user == "trainer"


def test_volume_is_mounted_from_the_image_that_holds_the_cache(host):
    mount = host.mount_point("/data/hf")
    assert mount.exists
    assert mount.filesystem == "ext4"
    assert host.file("/data/hf/datasets").is_directory


def test_units_are_installed_and_the_training_unit_refuses_nothing_here(host):
    assert host.file("/etc/systemd/system/hf-cache-validate.service").contains("EnvironmentFile=/etc/hf-cache/hf.env")
    assert host.file("/etc/systemd/system/hf-train@.service").contains("--require-ready")
    assert host.run("/usr/local/libexec/hf-cache-validate --require-ready").rc == 0


def test_cache_test_script_is_on_the_path_for_login_shells(host):
    done = host.run("su - trainer -c 'hf-cache-test --batches 1 --batch-size 4 --workers 0'")
    assert done.rc == 0, done.stdout + done.stderr


def test_controller_holds_each_hosts_summary_and_the_fleet_report(host):
    summary = json.loads((REPORT_DIR / "hosts" / f"{host.backend.host}.json").read_text())
    assert summary["ready"] in (True, "True", "true")
    html = (REPORT_DIR / "fleet.html").read_text()
    assert f'data-host="{host.backend.host}"' in html


def run_site_playbook(playbook, *extra):
    return run_playbook(ROOT / playbook, *extra, timeout=900)


def bookworm_host():
    return testinfra.get_host(f"ansible://default-bookworm?ansible_inventory={os.environ['MOLECULE_INVENTORY_FILE']}")


def launch_env(host):
    return dict(line.split("=", 1) for line in host.file(LAUNCH_ENV).content_string.split())


def last_job_line(host, timeout=600):
    """Wait for hf-train@default to stop; return the last 'hf-train: done' line of its journal."""
    deadline = time.monotonic() + timeout
    while host.check_output("systemctl show -p ActiveState --value hf-train@default.service") in (
        "active",
        "activating",
    ):
        assert time.monotonic() < deadline, host.check_output("journalctl -u hf-train@default --no-pager -n 30")
        time.sleep(3)
    assert host.check_output("systemctl show -p Result --value hf-train@default.service") == "success"
    done = host.check_output("journalctl -u hf-train@default.service --no-pager -o cat | grep 'hf-train: done' || true")
    return done.splitlines()[-1] if done else ""


@pytest.fixture(scope="module")
def two_node_job():
    """playbooks/train.yml once for both hosts: one job, ranks in inventory order."""
    return run_site_playbook("playbooks/train.yml")


def test_train_runbook_starts_one_job_across_the_ready_hosts(host, two_node_job):
    rc, output = two_node_job
    assert rc == 0, output
    rank = NODE_RANK[host.backend.host]
    env = launch_env(host)
    assert (env["WORLD_SIZE"], env["NODE_RANK"], env["NPROC_PER_NODE"]) == ("2", str(rank), "1")
    assert env["MASTER_ADDR"] in bookworm_host().interface.default().addresses
    # A real Composer job over gloo: each rank trained on its half of the 48 images.
    assert last_job_line(host) == f"hf-train: done (rank {rank} of 2, DistributedSampler with 24 samples, 2 batches)"


@pytest.fixture
def broken_trixie_cache(host):
    """Break both copies on the trixie host (with one intact copy the loader
    rightly falls back to it): the train Arrow file and the blob of the hub's
    first train shard. Put both back afterwards."""
    if host.system_info.codename != "trixie":
        pytest.skip("one host is broken; the other must finish")
    arrow = host.check_output("find /data/hf/datasets -name '*-train*.arrow' | sort | head -n1")
    blob = host.check_output("readlink -f $(find /data/hf/hub -path '*/snapshots/*/data/train-*' | sort | head -n1)")
    host.check_output(f"mv {arrow} /var/lib/removed.arrow && mv {blob} /var/lib/removed.blob")
    yield [arrow, blob]
    host.check_output(f"mv /var/lib/removed.arrow {arrow} && mv /var/lib/removed.blob {blob}")
    rc, output = run_site_playbook("playbooks/validate.yml")
    assert rc == 0, output


def test_broken_cache_fails_its_host_with_the_scripts_message(host, broken_trixie_cache):
    rc, output = run_site_playbook("playbooks/validate.yml")
    assert rc != 0, output
    broken = stored_report(host)
    assert broken["ready"] is False
    assert broken["exit_code"] == 4, broken["message"]
    # The play's failure carries the cache test's own message, path and fix.
    assert broken["message"] in output.replace("\n", " ") or broken["message"][:60] in output
    assert "/data/hf/" in broken["message"]
    assert "fix:" in broken["message"]
    recap = {line.split()[0]: line for line in output.splitlines() if " : ok=" in line}
    assert "failed=0" in recap["default-bookworm"]
    assert "failed=1" in recap["default-trixie"]
    fleet = (REPORT_DIR / "fleet.md").read_text()
    assert "1 of 2 hosts ready" in fleet

    # Training refuses the broken host with its last test's message; the other trains alone.
    rc, output = run_site_playbook("playbooks/train.yml", "-e", "hf_loader_train_multi_node=false")
    assert rc != 0, output
    assert "Not starting training on default-trixie" in output
    recap = {line.split()[0]: line for line in output.splitlines() if " : ok=" in line}
    assert "failed=0" in recap["default-bookworm"]
    bookworm = bookworm_host()
    assert launch_env(bookworm)["WORLD_SIZE"] == "1"
    assert last_job_line(bookworm) == "hf-train: done (rank 0 of 1, RandomSampler with 48 samples, 2 batches)"
