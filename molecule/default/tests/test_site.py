"""Verify the whole site: the cache test's reports (the package's schema), the
sandboxed units and their exposure, the training runbook (one three-node job,
then each host alone), the read-only hub-only host, and the fleet report as a
run saw the fleet: a host it did not reach is unreachable, a broken Arrow copy
passed over is a warning, a cache broken everywhere fails its host with the
cache test's own message while the others finish and train."""

import json
import os
import re
import textwrap
import time
from pathlib import Path

import jsonschema
import pytest
import testinfra
import yaml
from verify_helpers import every_tag_check_mode_test, file_checksums, host_runner, run_playbook

testinfra_hosts = ["ansible://all"]

ROOT = Path(__file__).resolve().parents[3]
SCHEMA = json.loads((ROOT / "files/hf_loader/src/hf_loader/report.schema.json").read_text())
REPORT = "/var/lib/hf-loader/cache-test.json"
METRICS = "/var/lib/node-exporter/hf_cache_test.prom"
REPORT_DIR = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/nonexistent")) / "reports"
LAUNCH_ENV = "/etc/hf-loader/launch-default.env"
HOSTS = ["default-bookworm", "default-trixie", "default-readonly"]
# Its volume is mounted read-only and holds only the hub snapshot (molecule.yml).
READ_ONLY_HOST = "default-readonly"
# systemd-analyze security: the most exposure each unit may have (issue 12).
EXPOSURE_LIMITS = {"hf-cache-test.service": 2.0, "hf-train@default.service": 5.0}
# What hf_loader writes on a host, and the cache test's report: a check-mode run leaves them as they are.
LOADER_FILES = [
    "/etc/hf-loader/cache-test.yaml",
    "/etc/hf-loader/train-default.yaml",
    "/etc/systemd/system/hf-cache-test.service",
    "/etc/systemd/system/hf-train@.service",
    "/opt/hf-loader/requirements.lock",
    REPORT,
]


def stored_report(host):
    report = json.loads(host.file(REPORT).content_string)
    jsonschema.validate(report, SCHEMA)
    return report


def recap(output):
    return {line.split()[0]: line for line in output.splitlines() if " : ok=" in line}


def test_cache_test_passed_as_the_training_user(host):
    report = stored_report(host)
    assert report["ready"] is True, report["message"]
    assert report["exit_code"] == 0
    assert report["loading"]["batches"] == 2
    assert report["command"][1:] == ["--config-file", "/etc/hf-loader/cache-test.yaml"]
    assert host.file(REPORT).user == "trainer"
    if host.backend.host == READ_ONLY_HOST:
        # No Arrow copy and no datasets/ folder beside the snapshot: the hub snapshot is streamed,
        # and the missing cache folder is a warning (files/hf_loader/README.md, hf-cache-test).
        assert (report["resolution"]["source"], report["resolution"]["mode"]) == ("hub", "streaming")
        assert report["verdict"] == "ready_with_warnings"
        warnings = [(f["stage"], f["message"], f["path"]) for f in report["findings"] if f["level"] == "warn"]
        missing = "Arrow cache folder /data/hf/datasets (HF_DATASETS_CACHE) does not exist"
        assert warnings == [("environment", missing, "/data/hf/datasets")]
        assert report["message"] == (
            f"ready, with a warning: {missing}; fix: mount the cache volume or fix HF_DATASETS_CACHE"
        )
    else:
        assert (report["verdict"], report["resolution"]["source"]) == ("ready", "arrow"), report["message"]


def test_volume_is_mounted_from_the_image_that_holds_the_cache(host):
    mount = host.mount_point("/data/hf")
    assert mount.exists
    assert mount.filesystem == "ext4"
    assert host.file("/data/hf/hub").is_directory
    if host.backend.host == READ_ONLY_HOST:
        assert "ro" in mount.options
        # Neither the roles, nor the cache test, nor training created anything in the cache.
        assert not host.file("/data/hf/datasets").exists
    else:
        assert host.file("/data/hf/datasets").is_directory


def test_the_training_user_cannot_write_the_cache_or_plant_seeding_state(host):
    """Issue 27: the cache root and everything in it are root's; the training user only reads.
    Each write is a real attempt as trainer and must fail: a file in the root and in each cache
    folder, and seeding state (<root>/.hf-seed/state.json, a link in its staging) that root's
    publish would otherwise act on."""
    assert host.check_output("find /data/hf -xdev ! -user root -printf '%p\\n' | head -n 5") == ""
    folders = ["/data/hf", "/data/hf/hub"] + ([] if host.backend.host == READ_ONLY_HOST else ["/data/hf/datasets"])
    for folder in folders:
        attempt = host.run(f"runuser -u trainer -- touch {folder}/planted-by-trainer")
        assert attempt.rc != 0, f"trainer wrote into {folder}"
        assert not host.file(f"{folder}/planted-by-trainer").exists
    plant = host.run(
        "runuser -u trainer -- sh -c 'mkdir -p /data/hf/.hf-seed/staging"
        " && echo verified >/data/hf/.hf-seed/state.json"
        " && ln -s /etc /data/hf/.hf-seed/staging/hub'"
    )
    assert plant.rc != 0, "trainer planted seeding state"
    seed_state = host.file("/data/hf/.hf-seed")
    assert not seed_state.exists or (seed_state.user == "root" and not seed_state.is_symlink)
    state_file = host.file("/data/hf/.hf-seed/state.json")
    assert not state_file.exists or state_file.user == "root"
    # nodev,nosuid: a device node or setuid binary a peer or a seed put there stays inert.
    options = host.mount_point("/data/hf").options
    assert "nodev" in options and "nosuid" in options, options


def test_a_reader_streams_a_root_owned_cache_without_writing(host):
    """The training user, in a login shell (no unit sandbox), on a root-owned writable cache
    with no Arrow copy it may use (an empty root-owned datasets folder): conversion is allowed
    but the cache is not this user's, so the hub snapshot is streamed; the lock `datasets`
    takes to stream goes to the reader's own folder, and nothing in either cache changes."""
    if host.backend.host == READ_ONLY_HOST:
        pytest.skip("the read-only host streams its hub snapshot in every cache test already")
    host.check_output("install -d -o root -g root -m 0755 /var/lib/root-datasets-cache")
    listing = "find /data/hf /var/lib/root-datasets-cache -printf '%p %y %s %T@ %m %u\\n' | sort | sha256sum"
    before = host.check_output(listing)
    done = host.run(
        "su - trainer -c 'HF_DATASETS_CACHE=/var/lib/root-datasets-cache"
        " hf-cache-test --allow-convert --batches 1 --batch-size 4 --workers 0 --json'"
    )
    assert done.rc == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert (report["resolution"]["source"], report["resolution"]["mode"]) == ("hub", "streaming"), report
    assert host.check_output(listing) == before


def test_the_cache_test_runs_from_its_settings_and_gates_training(host):
    settings = host.file("/etc/hf-loader/cache-test.yaml").content_string
    assert "report: " + json.dumps(REPORT) in settings
    assert 'metrics_dir: "/var/lib/node-exporter"' in settings
    # The volume's mount is required: an unmounted /data/hf fails the test naming the mount.
    assert 'require_mount: "/data/hf"' in settings
    cache_test_unit = host.file("/etc/systemd/system/hf-cache-test.service").content_string
    assert (
        "ExecStart=/opt/hf-loader/venv/bin/hf-cache-test --config-file /etc/hf-loader/cache-test.yaml"
        in cache_test_unit
    )
    train_unit = host.file("/etc/systemd/system/hf-train@.service").content_string
    assert f"ExecStartPre=/opt/hf-loader/venv/bin/hf-cache-test --require-ready {REPORT}" in train_unit
    assert not host.file("/usr/local/libexec/hf-cache-validate").exists
    done = host.run(f"runuser -u trainer -- /opt/hf-loader/venv/bin/hf-cache-test --require-ready {REPORT}")
    assert done.rc == 0, done.stdout + done.stderr


def unit_properties(host, unit, *names):
    lines = host.check_output(f"systemctl show {unit} " + " ".join(f"--property={name}" for name in names))
    return dict(line.split("=", 1) for line in lines.splitlines())


def test_units_enforce_a_reader_never_writes_never_calls_out(host):
    cache_test = unit_properties(
        host,
        "hf-cache-test.service",
        "ProtectSystem",
        "ReadOnlyPaths",
        "ReadWritePaths",
        "PrivateNetwork",
        "RestrictAddressFamilies",
        "IPAddressDeny",
        "NoNewPrivileges",
        "PrivateTmp",
        "ProtectHome",
    )
    assert cache_test["ProtectSystem"] == "strict"
    assert cache_test["ReadOnlyPaths"] == "-/data/hf"
    assert cache_test["ReadWritePaths"].split() == ["/var/lib/hf-loader", "/var/lib/node-exporter"]
    assert (cache_test["PrivateNetwork"], cache_test["RestrictAddressFamilies"]) == ("yes", "AF_UNIX")
    assert cache_test["IPAddressDeny"] in ("0.0.0.0/0 ::/0", "::/0 0.0.0.0/0")
    assert (cache_test["NoNewPrivileges"], cache_test["PrivateTmp"], cache_test["ProtectHome"]) == ("yes", "yes", "yes")
    train = unit_properties(host, "hf-train@default.service", "KillSignal", "KillMode", "TimeoutStopUSec")
    assert (train["KillSignal"], train["KillMode"], train["TimeoutStopUSec"]) == ("15", "mixed", "10min")


@pytest.mark.parametrize("unit", sorted(EXPOSURE_LIMITS))
def test_exposure_of_the_units(host, unit):
    output = host.check_output(f"systemd-analyze security --no-pager {unit}")
    exposure = float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", output).group(1))
    print(f"{host.backend.host} {unit}: exposure {exposure}")
    assert exposure <= EXPOSURE_LIMITS[unit], output


def test_cache_test_writes_its_metrics_for_node_exporter(host):
    metrics = host.file(METRICS)
    assert metrics.user == "trainer" and metrics.mode == 0o644
    assert re.search(r'^hf_cache_test_ready\{[^}]*dataset="ILSVRC/imagenet-1k"[^}]*\} 1', metrics.content_string, re.M)


def test_cache_test_script_is_on_the_path_for_login_shells(host):
    done = host.run("su - trainer -c 'hf-cache-test --batches 1 --batch-size 4 --workers 0'")
    assert done.rc == 0, done.stdout + done.stderr


def test_the_hosts_copy_is_manifested_and_verifies_with_the_cache_unchanged(host):
    # The seed runbook's tool, as the training user in a login shell, on each host's copy (the read-only
    # host's too): the manifest is written outside the cache, verifies deep and strict, and nothing in
    # the cache changes.
    listing = "find /data/hf -printf '%p %y %s %T@ %m\\n' | sort | sha256sum"
    before = host.check_output(listing)
    manifest = "/var/lib/hf-loader/manifest.json"
    write = host.run(f"su - trainer -c 'hf-cache-manifest write --output {manifest} --json --no-progress'")
    assert write.rc == 0, write.stdout + write.stderr
    doc = json.loads(host.file(manifest).content_string)
    assert doc["dataset"] == "ILSVRC/imagenet-1k" and doc["totals"]["files"] > 0
    verify = host.run(f"su - trainer -c 'hf-cache-manifest verify {manifest} --deep --strict --no-progress'")
    assert verify.rc == 0, verify.stdout + verify.stderr
    assert host.check_output(listing) == before


def test_controller_holds_each_hosts_summary_and_the_fleet_report(host):
    summary = json.loads((REPORT_DIR / "hosts" / f"{host.backend.host}.json").read_text())
    jsonschema.validate(summary["report"], SCHEMA)
    assert summary["report"]["ready"] is True
    assert summary["last_ready_at"] == summary["report"]["checked_at"]
    html = (REPORT_DIR / "fleet.html").read_text()
    assert f'data-host="{host.backend.host}"' in html


def run_site_playbook(playbook, *extra, limit=""):
    return run_playbook(ROOT / playbook, *extra, limit=limit, timeout=900)


def failure_messages(output, name):
    """The msg of each task that failed on host name: the YAML result Ansible prints after
    'fatal: [name]: FAILED! =>' (folded over lines, quoted), read back as YAML."""
    messages = []
    lines = output.splitlines()
    for number, line in enumerate(lines):
        if line.startswith(f"fatal: [{name}]: FAILED! =>"):
            block = []
            for following in lines[number + 1 :]:
                if following and not following.startswith(" "):
                    break
                block.append(following)
            messages.append(yaml.safe_load(textwrap.dedent("\n".join(block)))["msg"])
    return messages


def inventory_host(name):
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={os.environ['MOLECULE_INVENTORY_FILE']}")


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
    assert host.check_output("systemctl show -p Result --value hf-train@default.service") == "success", (
        host.check_output("journalctl -u hf-train@default --no-pager -n 30")
    )
    done = host.check_output("journalctl -u hf-train@default.service --no-pager -o cat | grep 'hf-train: done' || true")
    return done.splitlines()[-1] if done else ""


@pytest.fixture(scope="module")
def train_jobs():
    """playbooks/train.yml once for every host: the hosts of each job, by rank. Ranks follow
    the inventory order, which Molecule does not keep from one run to the next."""
    rc, output = run_site_playbook("playbooks/train.yml")
    assert rc == 0, output
    jobs = {}
    for name in HOSTS:
        env = launch_env(inventory_host(name))
        jobs.setdefault(env["MASTER_ADDR"], {})[name] = int(env["NODE_RANK"])
    return jobs


def test_train_runbook_starts_a_job_per_kind_of_copy(host, train_jobs):
    """The two Arrow hosts train as one two-node job; the read-only host streams its hub
    snapshot and trains alone (a job cannot mix a stream with a DistributedSampler)."""
    assert sorted(sorted(job.values()) for job in train_jobs.values()) == [[0], [0, 1]]
    job = next(job for job in train_jobs.values() if host.backend.host in job)
    rank = job[host.backend.host]
    env = launch_env(host)
    assert (env["WORLD_SIZE"], env["NPROC_PER_NODE"]) == (str(len(job)), "1")
    master = next(name for name, node_rank in job.items() if node_rank == 0)
    assert env["MASTER_ADDR"] in inventory_host(master).interface.default().addresses
    line = last_job_line(host)
    if host.backend.host == READ_ONLY_HOST:
        assert set(job) == {READ_ONLY_HOST}
        assert line == "hf-train: done (rank 0 of 1, a stream of the hub snapshot, 2 batches)"
    else:
        assert set(job) == {"default-bookworm", "default-trixie"}
        # A real Composer job over gloo: each rank trained on its half of the 48 images.
        assert line == f"hf-train: done (rank {rank} of 2, DistributedSampler with 24 samples, 2 batches)"


def trixie_only(host):
    if host.backend.host != "default-trixie":
        pytest.skip("the trixie host's cache is broken; the others must go on")


# A host that is down, as SSH sees it: nothing listens on port 9 here, the connection is
# refused. (A container name that does not exist is not unreachable to the docker connection
# with pipelining: its one `docker exec` fails the module, not the connection.)
UNREACHABLE = {"ansible_connection": "ssh", "ansible_host": "127.0.0.1", "ansible_port": 9}


@pytest.fixture
def trixie_arrow_copy_broken(host):
    """Move the train Arrow file away on the trixie host (its hub snapshot stays intact); put it back after."""
    trixie_only(host)
    arrow = host.check_output("find /data/hf/datasets -name '*-train*.arrow' | sort | head -n1")
    host.check_output(f"mv {arrow} /var/lib/removed.arrow")
    yield arrow
    host.check_output(f"mv /var/lib/removed.arrow {arrow}")


def test_fleet_report_shows_an_unreachable_host_and_a_broken_copy_as_this_run_saw_them(
    host, trixie_arrow_copy_broken, tmp_path
):
    # The bookworm host becomes unreachable for this run only, from an inventory layered over
    # Molecule's (its container keeps running, so its loop-backed volume stays as the later
    # tests need it).
    extra = tmp_path / "unreachable.yml"
    extra.write_text(json.dumps({"all": {"hosts": {"default-bookworm": UNREACHABLE}}}))
    last_good = json.loads((REPORT_DIR / "hosts" / "default-bookworm.json").read_text())["last_ready_at"]
    assert last_good

    rc, output = run_site_playbook("playbooks/cache-test.yml", "-i", str(extra))
    assert rc == 4, output
    hosts = recap(output)
    assert "unreachable=1" in hosts["default-bookworm"]
    assert "failed=0" in hosts["default-trixie"] and "failed=0" in hosts[READ_ONLY_HOST]

    # The Arrow copy is passed over, the hub snapshot streamed: ready, with a warning naming the copy.
    arrow_copy = str(Path(trixie_arrow_copy_broken).parent)
    report = stored_report(host)
    assert (report["ready"], report["verdict"], report["exit_code"]) == (True, "ready_with_warnings", 0)
    assert report["resolution"]["source"] == "hub"
    assert report["message"].startswith("ready, with a warning: ") and arrow_copy in report["message"]
    journal = host.check_output("journalctl -u hf-cache-test.service --no-pager -o cat -n 40")
    assert re.search(rf"\[WARN\] cache: .*{re.escape(arrow_copy)}", journal), journal

    fleet = (REPORT_DIR / "fleet.md").read_text()
    rows = {line.split(" | ")[0].lstrip("| "): line for line in fleet.splitlines() if line.startswith("| default-")}
    assert rows["default-bookworm"].startswith("| default-bookworm | unreachable | ")
    assert f"last good check: {last_good}" in rows["default-bookworm"]
    assert rows["default-trixie"].startswith("| default-trixie | ready, with a warning | ")
    assert arrow_copy in rows["default-trixie"]
    summary_line = fleet.splitlines()[2]
    assert summary_line.startswith("fleet: 2 of 3 hosts ready to train"), summary_line
    assert "unreachable: default-bookworm" in summary_line
    # Every row shows when its check ran: this run's for the hosts it reached.
    assert report["checked_at"] in rows["default-trixie"]

    # No host reached at all: Ansible would end the playbook before the report;
    # cache-test.yml keeps localhost in its play so that the report still says so.
    extra.write_text(json.dumps({"all": {"hosts": dict.fromkeys(HOSTS, UNREACHABLE)}}))
    rc, output = run_site_playbook("playbooks/cache-test.yml", "-i", str(extra))
    assert rc == 4, output
    fleet = (REPORT_DIR / "fleet.md").read_text()
    assert fleet.splitlines()[2] == (
        "fleet: 0 of 3 hosts ready to train; unreachable: default-bookworm, default-readonly, default-trixie"
    )


@pytest.fixture
def broken_trixie_cache(host):
    """Break both copies on the trixie host (with one intact copy the loader
    rightly falls back to it): the train Arrow file and the blob of the hub's
    first train shard. Put both back afterwards."""
    trixie_only(host)
    arrow = host.check_output("find /data/hf/datasets -name '*-train*.arrow' | sort | head -n1")
    blob = host.check_output("readlink -f $(find /data/hf/hub -path '*/snapshots/*/data/train-*' | sort | head -n1)")
    host.check_output(f"mv {arrow} /var/lib/removed.arrow && mv {blob} /var/lib/removed.blob")
    yield [arrow, blob]
    host.check_output(f"mv /var/lib/removed.arrow {arrow} && mv /var/lib/removed.blob {blob}")
    rc, output = run_site_playbook("playbooks/cache-test.yml")
    assert rc == 0, output


def test_broken_cache_fails_its_host_with_the_cache_tests_message(host, broken_trixie_cache):
    rc, output = run_site_playbook("playbooks/cache-test.yml")
    assert rc != 0, output
    broken = stored_report(host)
    assert (broken["ready"], broken["verdict"]) == (False, "not_ready")
    assert broken["exit_code"] == 4, broken["message"]
    # The play's failure carries the cache test's own message, path and fix, whole.
    assert failure_messages(output, "default-trixie") == [f"default-trixie is not ready to train: {broken['message']}"]
    assert "/data/hf/" in broken["message"]
    assert "fix:" in broken["message"]
    hosts = recap(output)
    assert "failed=0" in hosts["default-bookworm"] and "failed=0" in hosts[READ_ONLY_HOST]
    assert "failed=1" in hosts["default-trixie"]
    fleet = (REPORT_DIR / "fleet.md").read_text()
    assert "2 of 3 hosts ready" in fleet and "not ready: default-trixie" in fleet

    # Training refuses the broken host with its last test's message; the other trains alone.
    rc, output = run_site_playbook(
        "playbooks/train.yml", "-e", "hf_loader_train_multi_node=false", limit="default-bookworm,default-trixie"
    )
    assert rc != 0, output
    assert "Not starting training on default-trixie" in output
    assert "failed=0" in recap(output)["default-bookworm"]
    bookworm = inventory_host("default-bookworm")
    assert launch_env(bookworm)["WORLD_SIZE"] == "1"
    assert last_job_line(bookworm) == "hf-train: done (rank 0 of 1, RandomSampler with 48 samples, 2 batches)"


def loader_checksums(host):
    return file_checksums(host, LOADER_FILES)


# hf_loader's tags, each alone through the whole site in check mode (as an operator runs them) on one
# converged host; without the fleet report, whose play would render this run's partial view of the fleet.
test_every_documented_tag_runs_alone_in_check_mode = every_tag_check_mode_test(
    "hf_loader",
    host_runner(ROOT / "site.yml", "--skip-tags", "report", timeout=900),
    loader_checksums,
    runs_on=lambda host: host.backend.host == "default-bookworm",
    # The converged host has its units as wanted: the preflight's observation leaves units.yml
    # out (hf_loader and hf_loader_install still observe the account, in the site's pre_tasks).
    nothing_to_do={"hf_loader_units": "converged: the preflight finds the units in place, units.yml is not included"},
)
