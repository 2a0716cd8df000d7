#!/usr/bin/env python3
"""The pull-mode lab (docs/pull.md): hosts that provision themselves. Each is a systemd container
booted from a cloud image (Debian 12 with Debian's cloud-init package) with a NoCloud seed folder
holding meta-data and the user-data that playbooks/pull-user-data.yml renders; cloud-init writes
pull mode's files and starts gpu-fleet-pull, which installs the toolchain, fetches this
repository's committed HEAD over HTTP (git's dumb protocol, served from this machine) and runs
playbooks/pull.yml on the host itself. The controller never runs a play against it.

    pull_lab.py run [--short] [--images plain,baked] [--keep]
    pull_lab.py down

run: for each image, one host booted with the seed; the time from `docker run` to ready.json
(boot-to-ready); then a drift run of the timer's unit (must change nothing; the host's CPU for it
is measured); then three refused runs, each holding the host with its reason: a hostile instance
tag (it names the tag, and the command it pointed at never ran), a tampered toolchain wheel (it
names the file; the toolchain stays), a host variable the site refuses (the ready target stopped,
hf-train@ refusing to start with the reason); then (not --short) a good run that lifts the hold.
"baked": an image made by playbooks/bake-image.yml from the plain one first (driver skipped: the
lab has no GPU; the loader venv, the units, the toolchain). --short (in `make test`): the plain
image only. Results: lab/pull/results.json. Hosts are removed at the end unless --keep; `down`
removes everything the pull lab made.

The loader's light wheelhouse (the fleet benchmark's: no CUDA, CPU torch) reaches the hosts as a
read-only mount at /var/cache/gpu-fleet/wheelhouse, standing in for a shared or baked one; the
toolchain's wheels and the repository come over HTTP. Python 3.11 standard library only; root.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK_REL = "lab/pull"
sys.path.insert(0, str(ROOT / "scripts"))
from lab import LABEL, ensure_cache, ensure_volume, load_state, remember, remove_host, save_state, wait_systemd  # noqa: E402
from lablib import Lab, Logger, container_cpu_seconds, light_stack  # noqa: E402

WORK = ROOT / WORK_REL
SERVE = WORK / "serve"
BASE_IMAGE = "local/debian-systemd:bookworm"
PLAIN_IMAGE = "local/debian-cloud:bookworm"
BAKED_IMAGE = "local/debian-cloud-baked:bookworm"
BAKE_HOST = "pull-bake"
# The plain image: what a stock Debian cloud image has for this purpose, cloud-init, told to
# look only for NoCloud (a container has no cloud metadata service to probe) and to leave the
# network alone (the engine configures a container's; a DHCP config would hold
# network-online.target for two minutes on a baked image's boot).
PLAIN_RECIPE = """FROM {base}
RUN apt-get update -qq \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends cloud-init >/dev/null \\
 && rm -rf /var/cache/apt/archives/*.deb \\
 && printf 'datasource_list: [NoCloud, None]\\nnetwork: {{config: disabled}}\\n' > /etc/cloud/cloud.cfg.d/90-lab.cfg
LABEL project.recipe={recipe}
"""
WHEELHOUSE_MOUNT = "/var/cache/gpu-fleet/wheelhouse"
PULL_HOME = "/var/lib/gpu-fleet"
BIN = ROOT / ".venvs" / "controller" / "bin"


log = Logger("pull-lab")
die = log.die


def pull_lab() -> Lab:
    """The pull lab's settings: its own folder, host names, inventory, fact cache and host reports
    (its hosts boot from images of their own: no SSH port, and every volume full)."""
    settings = Lab.from_env()
    return settings.beside(WORK_REL, "pull-gpu-", settings.base_port)


def sh(*cmd, check=True, timeout=1800, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=False, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        die(f"{' '.join(map(str, cmd))} exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-3000:]}")
    return proc


def in_host(host: str, *cmd, check=True, timeout=1800) -> subprocess.CompletedProcess:
    return sh("docker", "exec", host, *cmd, check=check, timeout=timeout)


# --- what the hosts are served --------------------------------------------------------------


def image_recipe_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def ensure_plain_image() -> None:
    recipe = image_recipe_hash(PLAIN_RECIPE)
    have = sh(
        "docker", "image", "inspect", "--format", '{{index .Config.Labels "project.recipe"}}', PLAIN_IMAGE, check=False
    )
    if have.returncode == 0 and have.stdout.strip() == recipe:
        return
    log(f"building {PLAIN_IMAGE} ({BASE_IMAGE} with Debian's cloud-init)")
    dockerfile = PLAIN_RECIPE.format(base=BASE_IMAGE, recipe=recipe)
    sh("docker", "build", "--quiet", "--tag", PLAIN_IMAGE, "-", input=dockerfile)


def bridge_gateway() -> str:
    """The default bridge's gateway: the address the containers reach this machine at.

    Docker leaves IPAM's Gateway empty when its daemon adopts a bridge interface that already
    exists (a daemon started again on the same machine, as CI does); the interface's own
    address is the gateway then.
    """
    fields = sh(
        "docker",
        "network",
        "inspect",
        "bridge",
        "--format",
        '{{(index .IPAM.Config 0).Gateway}} {{index .Options "com.docker.network.bridge.name"}}',
    ).stdout.split()
    ipv4 = r"\d+\.\d+\.\d+\.\d+"
    if fields and re.fullmatch(ipv4, fields[0]):
        return fields[0]
    interface = fields[-1] if fields else "docker0"
    found = re.search(rf"inet ({ipv4})/", sh("ip", "-4", "-o", "addr", "show", interface, check=False).stdout)
    if not found:
        die(f"cannot read the docker bridge's gateway address (IPAM: {fields!r}, no IPv4 on {interface})")
    return found.group(1)


def free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def serve_repository() -> str:
    """This checkout as the hosts will pull it, readable over git's dumb HTTP protocol: a commit of
    the working tree (HEAD plus uncommitted and untracked files git does not ignore, so that a
    change is rehearsed before it is committed; in a clean clone, HEAD's tree). Its commit id."""
    index = WORK / "snapshot.index"
    # --git-path: in a git worktree .git is a file and the index lives elsewhere.
    shutil.copy(ROOT / sh("git", "-C", ROOT, "rev-parse", "--git-path", "index").stdout.strip(), index)
    env = dict(os.environ, GIT_INDEX_FILE=str(index))
    sh("git", "-C", ROOT, "add", "--all", env=env)
    tree = sh("git", "-C", ROOT, "write-tree", env=env).stdout.strip()
    index.unlink()
    head = sh("git", "-C", ROOT, "rev-parse", "HEAD").stdout.strip()
    if sh("git", "-C", ROOT, "rev-parse", "HEAD^{tree}").stdout.strip() == tree:
        ref = head
    else:
        ref = sh("git", "-C", ROOT, "commit-tree", tree, "-p", head, "-m", "pull lab: the working tree").stdout.strip()
        log(f"serving the working tree as commit {ref[:12]} (HEAD {head[:12]} plus uncommitted changes)")
    repo = SERVE / "repo.git"
    shutil.rmtree(repo, ignore_errors=True)
    sh("git", "init", "--quiet", "--bare", repo)
    sh("git", "-C", ROOT, "push", "--quiet", repo, f"{ref}:refs/heads/main")
    sh("git", "--git-dir", repo, "update-server-info")
    return ref


def serve_wheels() -> None:
    """The toolchain's wheels (served) and the loader's light wheelhouse with its lock (mounted)."""
    env = dict(
        os.environ,
        WHEELHOUSE_DIR=str(SERVE / "toolchain"),
        WHEELHOUSE_LOCK="requirements/pull.txt",
        WHEELHOUSE_PYTHONS="3.11",
        WHEELHOUSE_PACKAGE="no",
        PIP=str(BIN / "pip"),
    )
    subprocess.run(["bash", "scripts/build-wheelhouse.sh"], cwd=ROOT, env=env, check=True)
    light_stack(WORK)  # WORK/wheelhouse/cp311 and WORK/loader-light.txt
    shutil.copy(WORK / "loader-light.txt", WORK / "wheelhouse" / "loader-light.txt")


class Server:
    """python -m http.server on the bridge's gateway: what the containers reach as the network."""

    def __init__(self, address: str):
        self.address, self.port = address, free_port(address)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(self.port), "--bind", address, "--directory", str(SERVE)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(50):
            try:
                socket.create_connection((address, self.port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


# The lab's only tag names its loop device (inventory/lab's group_vars make it the volume source):
# the lab lists it in the tag allowlist, as a fleet lists a data variable of its own.
LAB_TAG_ALLOWLIST = {"lab_volume_device": "/dev/loop[0-9]+"}


def render_user_data(server: Server, ref: str) -> Path:
    """The cloud-config, gzipped as EC2 would be given it (cloud-init reads it as it is)."""
    out = WORK / "user-data.yml"
    settings = {
        "fleet_pull_repo_url": f"{server.url}/repo.git",
        "fleet_pull_repo_ref": ref,
        "fleet_pull_fleet_inventory": "inventory/lab",
        "fleet_pull_toolchain_wheelhouse": f"{server.url}/toolchain/cp311/",
        # One timer run in the lab's lifetime at most: the rehearsal starts the drift run itself.
        "fleet_pull_interval": "2h",
        "fleet_pull_jitter": "1min",
        "fleet_pull_host_vars": {"hf_loader_lock_file": f"{WHEELHOUSE_MOUNT}/loader-light.txt"},
        "fleet_pull_tag_allowlist": LAB_TAG_ALLOWLIST,
        "fleet_pull_user_data_file": str(out),
    }
    (WORK / "user-data-vars.json").write_text(json.dumps(settings, indent=2) + "\n")
    sh(BIN / "ansible-playbook", "playbooks/pull-user-data.yml", "-e", f"@{WORK / 'user-data-vars.json'}", cwd=ROOT)
    return Path(f"{out}.gz")


# --- hosts ------------------------------------------------------------------------------------


def write_seed(host: str, loop: str, user_data: Path) -> Path:
    seed = WORK / "seed" / host
    seed.mkdir(parents=True, exist_ok=True)
    # meta-data in EC2's shape for tags (ds.meta_data.tags.instance), which the inventory plugin reads.
    meta = {
        "instance-id": f"{host}-{int(time.time())}",
        "local-hostname": host,
        "tags": {"instance": {"gpu-fleet:lab_volume_device": loop}},
    }
    (seed / "meta-data").write_text(json.dumps(meta, indent=2) + "\n")  # JSON is YAML
    shutil.copy(user_data, seed / "user-data")
    return seed


def remove_container(name: str) -> None:
    sh("docker", "rm", "-f", "--volumes", name, check=False)


def boot(host: str, image: str, loop: str, seed: Path | None) -> float:
    remove_container(host)
    mounts = ["--volume", f"{WORK / 'wheelhouse'}:{WHEELHOUSE_MOUNT}:ro"]
    if seed is not None:
        mounts += ["--volume", f"{seed}:/var/lib/cloud/seed/nocloud:ro"]
    t0 = time.monotonic()
    sh(
        "docker", "run", "--detach", "--name", host, "--hostname", host,
        "--label", f"{LABEL}={ROOT}", "--label", "lab.pull=yes",
        "--privileged", "--cgroupns", "host",
        "--volume", "/sys/fs/cgroup:/sys/fs/cgroup:rw", *mounts,
        "--tmpfs", "/run", "--tmpfs", "/run/lock",
        "--stop-signal", "SIGRTMIN+3",
        image, "/lib/systemd/systemd",
    )  # fmt: skip
    return t0


def ready_doc(host: str) -> dict | None:
    proc = in_host(host, "cat", f"{PULL_HOME}/ready.json", check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 and proc.stdout.strip() else None


def explain(host: str) -> str:
    parts = []
    for cmd in (
        ["cloud-init", "status", "--long"],
        ["journalctl", "-b", "-u", "gpu-fleet-pull.service", "--no-pager", "-n", "60"],
        ["sh", "-c", f"tail -n 60 $(ls -1t {PULL_HOME}/logs/*.log | head -1)"],
    ):
        proc = in_host(host, *cmd, check=False)
        parts.append(f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
    return "\n".join(parts)


def wait_ready(host: str, t0: float, timeout: int = 1500) -> tuple[float, dict]:
    while time.monotonic() - t0 < timeout:
        doc = ready_doc(host)
        if doc is not None:
            if doc.get("running"):
                time.sleep(2)
                continue
            if not doc["ready"]:
                die(f"{host}: the first pull run failed: {doc['reason']}\n{explain(host)}")
            return time.monotonic() - t0, doc
        time.sleep(2)
    die(f"{host}: not ready after {timeout} s\n{explain(host)}")
    raise AssertionError


# A pull run always runs the cache test (playbooks/pull.yml): these rows change on every run,
# as they do in playbooks/cache-test.yml; nothing else may.
CACHE_TEST_ROWS = {
    "hf_loader : Run the cache test in its sandbox as the training user",
    "hf_loader : Store this host's summary on the controller for the fleet report",
    "Render the HTML and Markdown report",
}


def changed_rows(log_text: str, host: str) -> set[str]:
    rows, task = set(), ""
    for line in log_text.splitlines():
        if line.startswith(("TASK [", "RUNNING HANDLER [")):
            task = line.split("[", 1)[1].rsplit("]", 1)[0]
        elif re.match(rf"^changed: \[{re.escape(host)}[\] ]", line):
            rows.add(task)
    return rows


def recap(log_text: str, host: str) -> dict:
    found = re.findall(
        rf"^{re.escape(host)}\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", log_text, re.M
    )
    if not found:
        die(f"{host}: no PLAY RECAP line for the host in the pull log")
    ok, changed, unreachable, failed = (sum(int(row[i]) for row in found) for i in range(4))
    return {"ok": ok, "changed": changed, "unreachable": unreachable, "failed": failed}


def last_log(host: str) -> str:
    return in_host(host, "sh", "-c", f"cat $(ls -1t {PULL_HOME}/logs/pull-*.log | head -1)").stdout


def pull_once(host: str) -> tuple[int, float, float, dict]:
    """Start the pull unit as the timer does and wait: (exit, wall s, host CPU s, ready.json)."""
    cpu0, t0 = container_cpu_seconds([host]), time.monotonic()
    proc = in_host(host, "systemctl", "start", "gpu-fleet-pull.service", check=False, timeout=3600)
    wall, cpu = time.monotonic() - t0, container_cpu_seconds([host]) - cpu0
    return proc.returncode, wall, cpu, ready_doc(host) or {}


def check(condition: bool, what: str, host: str) -> None:
    if not condition:
        die(f"{host}: {what}\n{explain(host)}")
    log(f"{host}: ok: {what}")


INSTANCE_DATA = "/run/cloud-init/instance-data.json"
TOOLCHAIN_MARK = "/opt/gpu-fleet/ansible/.gpu-fleet-lock"


def rehearse_hostile_tag(host: str) -> float:
    """Tags that would run a command as root on the first module: refused, named in the hold, never run."""
    evil = "/usr/local/bin/lab-evil"
    program = '#!/bin/sh\ntouch /tmp/pwned\nexec /usr/bin/python3 "$@"\n'
    write = "import pathlib, sys; p = pathlib.Path(sys.argv[1]); p.write_text(sys.argv[2]); p.chmod(0o755)"
    in_host(host, "python3", "-c", write, evil, program)
    in_host(host, "cp", INSTANCE_DATA, f"{INSTANCE_DATA}.lab")
    hostile = {"gpu-fleet:ansible_python_interpreter": evil, "gpu-fleet:ansible_become_exe": evil}
    patch = (
        "import json, sys; p = sys.argv[1]; d = json.load(open(p)); "
        f"d['ds']['meta_data']['tags']['instance'].update({hostile!r}); json.dump(d, open(p, 'w'))"
    )
    in_host(host, "python3", "-c", patch, INSTANCE_DATA)
    rc, wall, _, doc = pull_once(host)
    hold = in_host(host, "cat", f"{PULL_HOME}/hold", check=False).stdout
    check(rc != 0 and doc.get("ready") is False and doc.get("exit_code") == 4, "a hostile tag fails the run", host)
    check(all(key in hold for key in hostile), f"the hold names the hostile tags: {hold[:200]}", host)
    check(in_host(host, "test", "-e", "/tmp/pwned", check=False).returncode != 0, "the tag's command never ran", host)
    in_host(host, "mv", f"{INSTANCE_DATA}.lab", INSTANCE_DATA)
    return wall


def rehearse_tampered_wheel(host: str) -> float:
    """A toolchain wheel served with other bytes: refused by its hash, named in the hold; the toolchain stays."""
    served = sorted((SERVE / "toolchain" / "cp311").glob("resolvelib-*.whl"))
    if not served:
        die(f"no resolvelib wheel under {SERVE / 'toolchain' / 'cp311'} to tamper with")
    wheel = served[0]
    good, mark = wheel.read_bytes(), in_host(host, "cat", TOOLCHAIN_MARK).stdout
    wheel.write_bytes(good + b"tampered on the way")
    # A changed lock is what makes the runner install the toolchain again.
    in_host(host, "sh", "-c", f"echo stale > {TOOLCHAIN_MARK}")
    try:
        rc, wall, _, doc = pull_once(host)
    finally:
        wheel.write_bytes(good)
    hold = in_host(host, "cat", f"{PULL_HOME}/hold", check=False).stdout
    check(
        rc != 0 and doc.get("exit_code") == 3 and doc.get("ready") is False,
        "a tampered toolchain wheel fails the run (exit 3)",
        host,
    )
    check(wheel.name in hold and "sha256" in hold, f"the hold names the refused wheel: {hold[:240]}", host)
    venv_ok = in_host(host, "/opt/gpu-fleet/ansible/bin/ansible-pull", "--version", check=False).returncode == 0
    check(venv_ok, "the installed toolchain was left as it was", host)
    in_host(host, "sh", "-c", f"printf '%s' '{mark}' > {TOOLCHAIN_MARK}")
    return wall


def rehearse_failure(host: str, short: bool) -> dict:
    """Runs refused for a hostile tag, a tampered wheel and a setting the site refuses: training held
    with the reason each time; then (not short) a good run lifts the hold."""
    result = {"hostile_tag_run_s": round(rehearse_hostile_tag(host), 1)}
    result["tampered_wheel_run_s"] = round(rehearse_tampered_wheel(host), 1)
    vars_file = "/etc/gpu-fleet/host_vars.yml"
    in_host(host, "sh", "-c", f"cp {vars_file} {vars_file}.lab && echo 'hf_env_offline: false' >> {vars_file}")
    rc, wall, _, doc = pull_once(host)
    check(
        rc != 0 and doc.get("ready") is False and doc.get("exit_code") == 4,
        "a failing run exits 4, ready.json says not ready",
        host,
    )
    check(
        "hf_env_offline" in doc.get("reason", ""), f"the reason names the variable: {doc.get('reason', '')[:160]}", host
    )
    hold = in_host(host, "cat", f"{PULL_HOME}/hold", check=False)
    check(hold.returncode == 0 and "hf_env_offline" in hold.stdout, "the hold file says why", host)
    active = in_host(host, "systemctl", "is-active", "gpu-fleet-ready.target", check=False).stdout.strip()
    check(active != "active", f"gpu-fleet-ready.target is {active}", host)
    # The training unit's own inputs exist, so that only the gate can stop it.
    launch = "NPROC_PER_NODE=1\\nWORLD_SIZE=1\\nNODE_RANK=0\\nMASTER_ADDR=127.0.0.1\\nMASTER_PORT=7501\\n"
    in_host(host, "sh", "-c", f"printf '{launch}' > /etc/hf-loader/launch-lab.env")
    in_host(host, "cp", "/etc/hf-loader/train-default.yaml", "/etc/hf-loader/train-lab.yaml", check=False)
    start = in_host(host, "systemctl", "start", "hf-train@lab.service", check=False)
    journal = in_host(host, "journalctl", "-u", "hf-train@lab.service", "--no-pager", "-n", "20").stdout
    check(
        start.returncode != 0 and "training is held" in journal, "hf-train@lab refuses to start: training is held", host
    )
    result.update(failing_run_s=round(wall, 1), reason=doc.get("reason", ""))
    in_host(host, "mv", f"{vars_file}.lab", vars_file)
    if not short:
        rc, wall, _, doc = pull_once(host)
        check(rc == 0 and doc.get("ready") is True, "the next good run is ready again", host)
        check(in_host(host, "test", "-e", f"{PULL_HOME}/hold", check=False).returncode != 0, "the hold is lifted", host)
        result["recovery_run_s"] = round(wall, 1)
    return result


def collect_report(host: str) -> None:
    """playbooks/pull-collect.yml from the controller (over docker exec): the host's entry in the fleet report."""
    reports = WORK / "reports"
    proc = subprocess.run(
        [BIN / "ansible-playbook", "-i", f"{host},", "-c", "community.docker.docker", "playbooks/pull-collect.yml",
         "-e", f"fleet_hosts={host}", "-e", f"fleet_report_dir={reports}",
         "-e", "ansible_python_interpreter=/usr/bin/python3"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    rows = (
        [ln for ln in (reports / "fleet.md").read_text().splitlines() if ln.startswith(f"| {host} |")]
        if (proc.returncode == 0 and (reports / "fleet.md").exists())
        else []
    )
    check(bool(rows) and "| ready |" in rows[0], f"pull-collect.yml puts it in the fleet report: {rows[:1]}", host)


def run_host(host: str, image: str, loop: str, user_data: Path, short: bool) -> dict:
    seed = write_seed(host, loop, user_data)
    log(f"{host}: booting {image} with the NoCloud seed (no push run from here)")
    t0 = boot(host, image, loop, seed)
    boot_to_ready, doc = wait_ready(host, t0)
    log(f"{host}: ready {boot_to_ready:.1f} s after docker run (first pull run {doc['seconds']} s)")
    first_run_s = doc["seconds"]
    first = recap(last_log(host), host)
    check(first["failed"] == 0, f"first run: {first}", host)
    check(in_host(host, "systemctl", "is-active", "gpu-fleet-ready.target", check=False).stdout.strip() == "active",
          "gpu-fleet-ready.target is active", host)  # fmt: skip
    summary = in_host(host, "cat", f"{PULL_HOME}/reports/hosts/{host}.json", check=False)
    check(
        summary.returncode == 0 and json.loads(summary.stdout)["report"]["ready"],
        "the fleet report's entry says ready",
        host,
    )
    timer = in_host(host, "systemctl", "is-enabled", "gpu-fleet-pull.timer", check=False).stdout.strip()
    check(timer == "enabled", "the drift timer is enabled", host)
    rc, drift_wall, drift_cpu, doc = pull_once(host)
    drift_log = last_log(host)
    drift, changed = recap(drift_log, host), changed_rows(drift_log, host)
    check(rc == 0 and doc.get("ready") is True, "the drift run (the timer's unit) is ready", host)
    check(
        drift["failed"] == 0 and changed <= CACHE_TEST_ROWS,
        f"the drift run changes nothing but the cache test's run and report: {sorted(changed)}",
        host,
    )
    collect_report(host)
    if not short:
        # Check mode and --diff through the whole pull playbook: nothing would change either.
        proc = in_host(host, "/usr/local/sbin/gpu-fleet-pull", "--check", check=False, timeout=3600)
        check_log = last_log(host)
        would = changed_rows(check_log, host)
        check(
            proc.returncode == 0 and recap(check_log, host)["failed"] == 0 and would <= CACHE_TEST_ROWS,
            f"a --check --diff run passes and would change nothing but the cache test's rows: {sorted(would)}",
            host,
        )
    result = {
        "image": image,
        "boot_to_ready_s": round(boot_to_ready, 1),
        "first_run_s": first_run_s,
        "drift_run_s": round(drift_wall, 1),
        "drift_host_cpu_s": round(drift_cpu, 1),
        "drift_rows": drift["ok"],
    }
    result.update(rehearse_failure(host, short))
    return result


# --- the baked image ------------------------------------------------------------------------------


def bake(user_data_vars: Path) -> float:
    """playbooks/bake-image.yml on a container of the plain image, committed as the baked image."""
    t0 = time.monotonic()
    boot(BAKE_HOST, PLAIN_IMAGE, "", None)
    wait_systemd(BAKE_HOST)
    log(f"baking {BAKED_IMAGE}: playbooks/bake-image.yml over the docker connection")
    # The build host is in gpu_hosts, so that the fleet's group_vars (the lab's) apply as at boot.
    inventory = WORK / "bake-inventory.yml"
    inventory.write_text(f"gpu_hosts:\n  hosts:\n    {BAKE_HOST}:\n      ansible_connection: community.docker.docker\n")
    proc = subprocess.run(
        [BIN / "ansible-playbook", "-i", inventory, "-i", "inventory/lab",
         "playbooks/bake-image.yml", "-e", f"bake_hosts={BAKE_HOST}", "-e", f"@{user_data_vars}",
         "-e", "bake_driver=false", "-e", "ansible_python_interpreter=/usr/bin/python3",
         "-e", f"hf_loader_wheelhouse_dir={WORK / 'wheelhouse'}",
         "-e", f"hf_loader_lock_file={WORK / 'loader-light.txt'}"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    (WORK / "bake.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        die(f"bake-image.yml failed (log {WORK / 'bake.log'}):\n{proc.stdout[-4000:]}")
    sh("docker", "stop", BAKE_HOST)
    sh("docker", "commit", "--change", 'CMD ["/lib/systemd/systemd"]', BAKE_HOST, BAKED_IMAGE)
    remove_container(BAKE_HOST)
    return time.monotonic() - t0


# --- commands --------------------------------------------------------------------------------------


def run(lab: Lab, images: list[str], short: bool, keep: bool) -> None:
    if os.geteuid() != 0:
        die("run as root (docker, losetup)")
    WORK.mkdir(parents=True, exist_ok=True)
    sh("make", "--no-print-directory", "-C", ROOT, "engine", timeout=1800)
    state = load_state(lab)
    save_state(lab, state)
    remember(lab, state, "dirs", WORK)
    content = ensure_cache(lab, state)
    ensure_plain_image()
    SERVE.mkdir(parents=True, exist_ok=True)
    serve_wheels()
    ref = serve_repository()
    server = Server(bridge_gateway())
    results: dict = {"commit": ref, "hosts": {}}
    try:
        user_data = render_user_data(server, ref)
        results["user_data_bytes"] = user_data.stat().st_size
        for i, kind in enumerate(images, start=1):
            host = f"pull-gpu-{i:02d}"
            state["hosts"].setdefault(host, {})
            loop = ensure_volume(lab, state, host, content, "full")
            state["hosts"][host]["container"] = host
            save_state(lab, state)
            image = PLAIN_IMAGE
            if kind == "baked":
                results["bake_s"] = round(bake(WORK / "user-data-vars.json"), 1)
                image = BAKED_IMAGE
            results["hosts"][kind] = run_host(host, image, loop, user_data, short)
    finally:
        server.stop()
        for host in state["hosts"]:  # the hosts' pull logs outlive them
            (WORK / "logs").mkdir(exist_ok=True)
            shutil.rmtree(WORK / "logs" / host, ignore_errors=True)
            sh("docker", "cp", f"{host}:{PULL_HOME}/logs", WORK / "logs" / host, check=False)
        (WORK / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        if not keep:
            for host in list(state["hosts"]):
                remove_host(lab, state, host)
    log(f"results ({WORK_REL}/results.json):")
    for kind, r in results["hosts"].items():
        log(
            f"  {kind:5s}: boot-to-ready {r['boot_to_ready_s']} s (first run {r['first_run_s']} s); "
            f"drift run {r['drift_run_s']} s, {r['drift_host_cpu_s']} s of the host's CPU, no change; "
            "a hostile tag, a tampered wheel and a failing run each held training with its reason"
        )
    if "bake_s" in results:
        log(f"  bake: {results['bake_s']} s (once per image)")
    if {"plain", "baked"} <= set(results["hosts"]):
        ratio = results["hosts"]["plain"]["boot_to_ready_s"] / results["hosts"]["baked"]["boot_to_ready_s"]
        log(f"  boot-to-ready plain/baked, measured in this run: {ratio:.1f}x")


def down(lab: Lab) -> None:
    state = load_state(lab)
    for host in list(state["hosts"]):
        remove_host(lab, state, host)
    remove_container(BAKE_HOST)
    shutil.rmtree(WORK, ignore_errors=True)
    log("pull lab removed")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="boot hosts with the NoCloud seed and rehearse pull mode")
    r.add_argument("--short", action="store_true", help="the plain image only, no recovery run (make test)")
    r.add_argument("--images", default="plain,baked", help="comma list of plain, baked")
    r.add_argument("--keep", action="store_true", help="leave the hosts running")
    sub.add_parser("down", help="remove the pull lab's hosts, volumes and files")
    args = p.parse_args()
    if args.cmd == "down":
        down(pull_lab())
        return
    images = ["plain"] if args.short else [i.strip() for i in args.images.split(",") if i.strip()]
    unknown = set(images) - {"plain", "baked"}
    if unknown:
        die(f"--images: unknown {', '.join(sorted(unknown))} (plain, baked)")
    run(pull_lab(), images, args.short, args.keep)


if __name__ == "__main__":
    main()
