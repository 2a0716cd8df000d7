"""Verify hf_seed on the seeded containers: the copies, the rerun, and the fault tests.

The fault tests run playbooks/seed.yml again the way an operator would and look at the
hosts' disks afterwards: an incomplete source is refused before anything is copied, a
flipped byte is named and only that file is copied again, a copy killed in the middle of a
file resumes from the partial file and verifies.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import testinfra
from verify_helpers import (
    ANSI_CODES,
    bad_variables_test,
    every_tag_check_mode_test,
    host_runner,
    on_bookworm,
    run_playbook,
)

testinfra_hosts = ["ansible://all"]

SCENARIO = Path(__file__).resolve().parents[1]
CONVERGE = SCENARIO / "converge.yml"
ROOT = "/data/hf"
MANIFEST = "/var/lib/hf-seed/manifest.json"
SEED_USER = "hf-seed"
SEED_KEYS = "/var/lib/hf-seed/home/.ssh/authorized_keys"
EPHEMERAL = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/nonexistent"))
SOURCE = EPHEMERAL / "cache" / "content"
HOSTS = ["hf_seed-bookworm", "hf_seed-trixie", "hf_seed-trixie-2"]
run_converge = host_runner(CONVERGE, fold_whitespace=True)


def other(name: str):
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={os.environ['MOLECULE_INVENTORY_FILE']}")


def seed_status(host, *extra: str) -> tuple[int, dict]:
    done = host.run(f"hf-cache-seed status --manifest {MANIFEST} --root {ROOT} --json {' '.join(extra)}")
    return done.rc, json.loads(done.stdout)


def tree(host) -> str:
    """Every path under the cache root and the role's folder, with type, size, mode, mtime."""
    paths = f"{ROOT} /var/lib/hf-seed /run/hf-seed"
    return host.check_output(f"find {paths} -printf '%p %y %s %m %T@\\n' 2>/dev/null | sort || true")


def manifest(host) -> dict:
    return json.loads(host.file(MANIFEST).content_string)


def first_arrow(host) -> str:
    return next(e["path"] for e in manifest(host)["entries"] if e["path"].endswith(".arrow"))


def test_every_host_holds_a_published_read_only_copy(host):
    rc, answer = seed_status(host, "--deep")
    assert rc == 0, answer
    assert answer["state"]["state"] == "published"
    for top in manifest(host)["roots"]:
        folder = host.file(f"{ROOT}/{top}")
        assert folder.is_directory and folder.user == "root" and folder.mode == 0o755
        assert host.run(f"find {ROOT}/{top} -type f ! -perm 0644 -print -quit").stdout == ""
        assert host.run(f"find {ROOT}/{top} ! -user root -print -quit").stdout == ""
    assert not host.file(f"{ROOT}/.hf-seed/staging").exists
    # The seed key's access and the key itself are gone after the run.
    assert not host.file("/run/hf-seed").exists
    keys = host.file("/var/lib/hf-seed/home/.ssh/authorized_keys")
    assert not keys.exists or "hf-seed" not in keys.content_string


def test_rerun_changes_nothing_and_copies_nothing(host):
    if not on_bookworm(host) or host.backend.host != HOSTS[0]:
        pytest.skip("one fleet-wide rerun is enough")
    before = {h: tree(other(h)) for h in HOSTS}
    rc, output = run_playbook(CONVERGE)
    assert rc == 0, output
    assert "changed=0" in output and "changed=1" not in output, output
    assert {h: tree(other(h)) for h in HOSTS} == before


test_every_documented_tag_runs_alone_in_check_mode = every_tag_check_mode_test("hf_seed", run_converge, tree)

test_bad_variables_fail_before_any_change = bad_variables_test(
    run_converge,
    tree,
    [
        ("hf_seed_source_dir=relative/cache", "hf_seed_source_dir 'relative/cache' must be an absolute path"),
        ("hf_seed_source_host=hf_seed-trixie", "Set exactly one of hf_seed_source_dir"),
        ('{"hf_seed_source_dir": "", "hf_seed_source_host": "nowhere"}', "'nowhere' is not a host of this play"),
        ('{"hf_seed_transfers_per_source": 0}', "hf_seed_transfers_per_source must be 1 or more"),
        ("hf_seed_user=Bad!", "hf_seed_user 'Bad!' is not a valid user name"),
        ("hf_seed_source_mount=filer:/exports/hf", "hf_seed_source_dir and hf_seed_source_mount are set"),
        (
            '{"hf_seed_source_dir": "", "hf_seed_source_mount": "filer:/x", "hf_seed_source_mount_fstype": "nfs;"}',
            "hf_seed_source_mount_fstype 'nfs;' is not a filesystem type",
        ),
    ],
)


def test_incomplete_source_is_refused_before_any_copy(host, tmp_path):
    if host.backend.host != HOSTS[0]:
        pytest.skip("one refusal is enough")
    source = tmp_path / "incomplete"
    shutil.copytree(SOURCE, source, symlinks=True)
    arrow = next(source.glob("datasets/**/*.arrow"))
    arrow.unlink()
    hosts = {h: other(h) for h in HOSTS}
    hosts[HOSTS[0]].check_output(f"rm -rf {ROOT}/datasets/* {ROOT}/hub/* {ROOT}/.hf-seed")  # needs a copy
    try:
        before = {h: tree(x) for h, x in hosts.items()}
        rc, output = run_playbook(
            CONVERGE, "-e", f"hf_seed_source_dir={source}", "-e", f"hf_seed_controller_dir={tmp_path / 'seed'}"
        )
        output = " ".join(output.split())
        assert rc != 0
        assert f"The source {source} does not hold a complete copy of ILSVRC/imagenet-1k" in output
        assert arrow.name in output, output
        assert "nothing was copied" in output
        assert {h: tree(x) for h, x in hosts.items()} == before
        assert not (tmp_path / "seed" / "ILSVRC--imagenet-1k.json").exists()
    finally:  # the host gets its copy back from the real source for the tests after this one
        rc, output = run_playbook(CONVERGE, "--limit", HOSTS[0])
        assert rc == 0, output
    assert seed_status(hosts[HOSTS[0]], "--deep")[0] == 0


def test_flipped_byte_is_named_an_expired_seed_key_cannot_fetch_it_and_a_rerun_copies_only_it(host):
    """A flipped byte is found by --deep only. The host that needs the file again then pulls it
    from another host with a seed key that has expired (expiry-time=, with the real sshd), on a
    source whose sshd was found stopped: the seed starts it (the pull gets as far as sshd's
    Permission denied, not a refused connection), the key cannot pull, the failed run still
    takes the access away and leaves sshd stopped as it found it. A rerun names the file and
    copies it alone. (from= is attacked during a live pull: the killed copy's test.)"""
    if host.backend.host != HOSTS[1]:
        pytest.skip("one host is damaged; the others serve it")
    arrow = first_arrow(host)
    path = f"{ROOT}/{arrow}"
    size = host.file(path).size
    host.check_output(
        f"python3 -c \"f=open('{path}','r+b'); f.seek({size // 2}); b=f.read(1); f.seek({size // 2}); "
        f'f.write(bytes([b[0] ^ 255]))"'
    )
    assert seed_status(host)[0] == 0  # sizes match: only --deep reads the bytes
    rc, answer = seed_status(host, "--deep")
    assert rc == 4 and [m["path"] for m in answer["verify"]["mismatches"]] == [arrow]

    source = other(HOSTS[0])
    from_source = {"hf_seed_source_dir": "", "hf_seed_source_host": HOSTS[0], "hf_seed_retries": 0}
    expired = {"__hf_seed_key_expires_epoch": int(time.time()) - 3600, "hf_seed_verify_deep": True}
    source.check_output("systemctl stop ssh")
    try:
        rc, output = run_playbook(
            CONVERGE, "-e", json.dumps({**from_source, **expired}), "--limit", f"{HOSTS[0]},{HOSTS[1]}"
        )
        output = " ".join(output.split())
        assert rc != 0, output
        assert f"{HOSTS[1]} <- {HOSTS[0]}: FAILED" in output and "Permission denied" in output, output
        assert "Connection refused" not in output, output
        assert seed_status(host, "--deep")[0] == 4
        assert not source.file(SEED_KEYS).exists  # taken away although the run failed
        assert source.run("systemctl is-active ssh").stdout.strip() != "active"
    finally:
        source.check_output("systemctl start ssh")

    rc, output = run_playbook(CONVERGE, "-e", "hf_seed_verify_deep=true")
    output = " ".join(output.split())
    assert rc == 0, output
    assert arrow in output  # the status step names the file
    assert f"{HOSTS[1]} <- " in output and "verified: 1 files" in output, output
    assert seed_status(host, "--deep")[0] == 0


def test_copy_killed_mid_file_resumes_and_verifies(host):
    """The host pulls from another host (hf_seed_source_host) at 64 KiB/s; the run and the
    pull are stopped in the middle of a file; the rerun resumes from the partial file.

    While the pull runs, the seed key is looked at and attacked with the real sshd: the source
    authorizes it with restrict, from= this run's hosts, an expiry-time= within the run's
    longest end, and rrsync -ro; the key taken to a host outside the run cannot read the
    source (Permission denied) while it still can from the pulling host."""
    if host.backend.host != HOSTS[2]:
        pytest.skip("one host is interrupted")
    doc = manifest(host)
    biggest = max((e for e in doc["entries"] if e["type"] == "file"), key=lambda e: e["size"])
    host.check_output(f"rm -rf {ROOT}/datasets/* {ROOT}/hub/* {ROOT}/.hf-seed")
    seed_vars = ["-e", f'{{"hf_seed_source_dir": "", "hf_seed_source_host": "{HOSTS[0]}"}}']
    command = [
        "ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], str(CONVERGE),
        "--limit", f"{HOSTS[0]},{HOSTS[2]}", "-e", "hf_seed_bwlimit_kbps=64", *seed_vars,
    ]  # fmt: skip
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    name = biggest["path"].rsplit("/", 1)[1]
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert run.poll() is None, ANSI_CODES.sub("", run.communicate()[0])
        # rsync receives each file into a temp file beside its final name.
        if host.run(f"find {ROOT}/.hf-seed/staging -name '.{name}.*' -print -quit").stdout.strip():
            break
        time.sleep(0.5)
    else:
        pytest.fail("the pull never got to the largest file")
    seed_key_is_scoped_to_the_run(source=other(HOSTS[0]), puller=host, outsider=other(HOSTS[1]))
    # The stop lands in the middle of the file: once rsync's temp file holds a quarter of it, as
    # read from the file itself (a time reckoned from the 64 KiB/s limit is not kept by a loaded host).
    while True:
        assert run.poll() is None, ANSI_CODES.sub("", run.communicate()[0])
        received = host.run(f"find {ROOT}/.hf-seed/staging -name '.{name}.*' -printf '%s\\n'").stdout.split()
        assert received, f"{name} was received whole before the stop: its temp file is gone"
        if int(received[0]) >= biggest["size"] // 4:
            break
        assert time.monotonic() < deadline, f"rsync's temp file of {name} holds {received[0]} bytes"
        time.sleep(0.5)
    host.run("pkill -TERM -f 'seed pull --manifest'")  # hf-cache-seed, or python -m hf_loader.cacheseed
    os.killpg(run.pid, signal.SIGTERM)
    run.communicate(timeout=60)
    for _ in range(30):
        if host.run("pgrep -f 'rsync'").rc != 0:
            break
        time.sleep(1)
    kept = host.check_output(
        f"find {ROOT}/.hf-seed/staging -path '*/.hf-seed-partial/*' -type f -printf '%s %f\\n'"
    ).split()
    assert len(kept) == 2 and int(kept[0]) > 0, kept  # one partial file
    # Nothing half-written under its final name: every file in staging has its full size.
    staging = json.loads(
        host.check_output(f"hf-cache-manifest verify {MANIFEST} --root {ROOT}/.hf-seed/staging --json || true")
    )
    assert all(m["kind"] == "missing" for m in staging["verify"]["mismatches"]), staging

    sizes = {e["path"]: e.get("size", 0) for e in doc["entries"]}
    left = sum(sizes[m["path"]] for m in staging["verify"]["mismatches"])
    partial_bytes = int(kept[0])

    rc, output = run_playbook(CONVERGE, *seed_vars, "--limit", f"{HOSTS[0]},{HOSTS[2]}")
    output = " ".join(output.split())
    assert rc == 0, output
    assert seed_status(host, "--deep")[0] == 0
    report = output.split(f"{HOSTS[2]} <- {HOSTS[0]}: verified: ")[1]
    received = int(report.split(" bytes")[0].split(", ")[1])
    # The partial file was the basis of the resumed one: its bytes did not come again.
    assert received < left - partial_bytes // 2, (received, left, partial_bytes)
    # The killed run could not take its key away; the rerun did.
    assert not other(HOSTS[0]).file(SEED_KEYS).exists


def seed_key_is_scoped_to_the_run(source, puller, outsider) -> None:
    """During a pull of puller from source (a run limited to the two): the key's authorization
    on source, then the key itself used from the puller (it reads) and from outsider (refused)."""
    (line,) = source.file(SEED_KEYS).content_string.splitlines()
    options, key_type, key_blob, comment = line.rsplit(" ", 3)
    addresses = {
        x.backend.host: x.check_output("ip -4 -o addr show scope global | awk '{print $4}' | cut -d/ -f1 | head -n1")
        for x in (source, puller, outsider)
    }
    assert options.startswith("restrict,"), line
    assert f'from="{addresses[source.backend.host]},{addresses[puller.backend.host]}"' in options or (
        f'from="{addresses[puller.backend.host]},{addresses[source.backend.host]}"' in options
    ), (line, addresses)
    assert f'command="/usr/bin/rrsync -ro {ROOT}"' in options, line
    # expiry-time in the host's own time: after now, before the longest run (2 passes of a day) plus an hour.
    (expiry,) = [o.split("=", 1)[1].strip('"') for o in options.split(",") if o.startswith("expiry-time=")]
    now = int(source.check_output("date +%s"))
    earliest, latest = (source.check_output(f"date -d @{t} +%Y%m%d%H%M") for t in (now, now + 2 * 86400 + 3600 + 300))
    assert earliest < expiry <= latest, (expiry, earliest, latest)
    assert comment == "hf-seed"
    key = puller.file("/run/hf-seed/id_ed25519").content_string
    assert puller.check_output("ssh-keygen -y -f /run/hf-seed/id_ed25519").split()[:2] == [key_type, key_blob]
    rsync = (
        "rsync --list-only -e 'ssh -i {key} -o BatchMode=yes -o StrictHostKeyChecking=no "
        f"-o UserKnownHostsFile=/dev/null' {SEED_USER}@{addresses[source.backend.host]}:"
    )
    allowed = puller.run(rsync.format(key="/run/hf-seed/id_ed25519"))
    assert allowed.rc == 0 and "datasets" in allowed.stdout, allowed.stderr
    outsider.check_output(
        f"install -d -m 0700 /root/taken && printf '%s\\n' {shlex.quote(key.strip())} > /root/taken/id_ed25519 "
        "&& chmod 0600 /root/taken/id_ed25519"
    )
    try:
        # The very key: only where it is used from differs.
        assert outsider.check_output("ssh-keygen -y -f /root/taken/id_ed25519").split()[:2] == [key_type, key_blob]
        refused = outsider.run(rsync.format(key="/root/taken/id_ed25519"))
    finally:
        outsider.check_output("rm -rf /root/taken")
    assert refused.rc != 0 and "Permission denied" in refused.stderr, (refused.rc, refused.stdout, refused.stderr)


def test_a_failed_transfer_is_reported_and_retried_from_another_source(host):
    """Two hosts need a copy: the plan gives one the controller and the other the first host,
    whose cache the seed user may not read (a broken upstream). That transfer fails, is
    reported, and the next pass copies the host from another source."""
    if host.backend.host != HOSTS[0]:
        pytest.skip("one fleet-wide run")
    hosts = {h: other(h) for h in HOSTS}
    for name in HOSTS[1:]:
        hosts[name].check_output(f"rm -rf {ROOT}/datasets/* {ROOT}/hub/* {ROOT}/.hf-seed")
    host.check_output(f"chmod 0700 {ROOT}")
    try:
        rc, output = run_playbook(CONVERGE)
    finally:
        host.check_output(f"chmod 0755 {ROOT}")
    output = " ".join(output.split())
    assert rc == 0, output
    # Breadth first: one host from the controller, the other from the first host.
    plan = output.split("pass 0, wave 0: ")[1].split("'")[0]
    (broken,) = [name for name in HOSTS[1:] if f"{name} <- {HOSTS[0]}" in plan]
    assert f"{broken} <- {HOSTS[0]}: FAILED from {HOSTS[0]}" in output, output
    assert f"pass 1, wave 0: {broken} <- " in output
    assert f"{broken} <- {HOSTS[0]}: verified" not in output
    for name in HOSTS:
        assert seed_status(hosts[name], "--deep")[0] == 0, name


def test_a_mounted_source_is_read_read_only_and_unmounted_everywhere(host, tmp_path):
    """hf_seed_source_mount, with a read-only bind mount of a folder on each host standing in
    for an NFS export (the test machine's kernel has no NFS client): the first host mounts it
    to write the manifest, the hosts the plan gives it copy from it, the others from them;
    afterwards no host has it mounted and the export is as it was. Every host ends with a
    verified copy of the controller's content (the export is that copy), so a test after this one
    finds the fleet seeded, as after the others."""
    if host.backend.host != HOSTS[0]:
        pytest.skip("one fleet-wide run")
    export = "/srv/hf-export"
    hosts = {h: other(h) for h in HOSTS}
    for name, x in hosts.items():
        x.check_output(f"rm -rf {export} && mkdir -p {export}")
        subprocess.run(["docker", "cp", f"{SOURCE}/.", f"{name}:{export}/"], check=True)
        x.check_output(f"rm -rf {ROOT}/datasets/* {ROOT}/hub/* {ROOT}/.hf-seed")
    exported = {name: x.check_output(f"find {export} -printf '%p %s %m %T@\\n' | sort") for name, x in hosts.items()}
    # The export holds the controller's copy: its manifest is that copy's. Writing one on a host
    # needs the whole loader there, which this scenario does not install; checking one does not.
    (tmp_path / "seed").mkdir()
    shutil.copy(EPHEMERAL / "seed" / "ILSVRC--imagenet-1k.json", tmp_path / "seed")
    try:
        rc, output = run_playbook(
            CONVERGE,
            "-e",
            json.dumps(
                {
                    "hf_seed_source_dir": "",
                    "hf_seed_source_mount": export,
                    "hf_seed_source_mount_fstype": "none",
                    "hf_seed_source_mount_options": "bind",
                    "hf_seed_controller_dir": str(tmp_path / "seed"),
                }
            ),
        )
        output = " ".join(output.split())
        assert rc == 0, output
        plan = output.split("pass 0, wave 0: ")[1].split("'")[0]
        assert f"{HOSTS[0]} <- __mount__" in plan, plan
        assert f"{HOSTS[0]} <- __mount__: verified" in output, output
        for name, x in hosts.items():
            assert seed_status(x, "--deep")[0] == 0, name
            assert x.run("findmnt /run/hf-seed-source").rc != 0, f"{name} still has the source mounted"
            assert x.check_output(f"find {export} -printf '%p %s %m %T@\\n' | sort") == exported[name], name
    finally:
        for x in hosts.values():
            x.check_output(f"umount /run/hf-seed-source 2>/dev/null; rm -rf {export}")
