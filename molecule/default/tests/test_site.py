"""Verify the whole site: the stored cache test reports, the units, and that a
broken cache fails its host with the cache test's own message while the other
host finishes."""

import json
import os
import subprocess
from pathlib import Path

import pytest

testinfra_hosts = ["ansible://all"]

ROOT = Path(__file__).resolve().parents[3]
REPORT = "/var/lib/hf-loader/validation.json"
REPORT_DIR = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/nonexistent")) / "reports"


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


def run_playbook(playbook, *extra):
    command = ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], str(ROOT / playbook), *extra]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=900)
    return done.returncode, done.stdout + done.stderr


@pytest.fixture
def broken_trixie_cache(host):
    """Remove one Arrow shard of the trixie host's cache; put it back afterwards."""
    if host.system_info.codename != "trixie":
        pytest.skip("one host is broken; the other must finish")
    shard = host.check_output("find /data/hf/datasets -name '*-train*.arrow' | sort | head -n1")
    host.check_output(f"mv {shard} /var/lib/removed-shard.arrow")
    yield shard
    host.check_output(f"mv /var/lib/removed-shard.arrow {shard}")
    host.check_output("systemctl restart hf-cache-validate.service")


def test_broken_cache_fails_its_host_with_the_scripts_message(host, broken_trixie_cache):
    rc, output = run_playbook("playbooks/validate.yml")
    assert rc != 0, output
    broken = stored_report(host)
    assert broken["ready"] is False
    assert broken["exit_code"] == 4
    # The play's failure carries the cache test's own message, with the path.
    assert broken["message"] in output
    assert Path(broken_trixie_cache).name in broken["message"]
    recap = {line.split()[0]: line for line in output.splitlines() if " : ok=" in line}
    assert "failed=0" in recap["default-bookworm"]
    assert "failed=1" in recap["default-trixie"]
    fleet = (REPORT_DIR / "fleet.md").read_text()
    assert "1 of 2 hosts ready" in fleet
