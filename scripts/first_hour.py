#!/usr/bin/env python3
"""make first-hour: docs/first-hour.md followed word for word on a fresh controller.

The page's commands are the lines starting with `$ ` in its ```console blocks (a line ending
with a backslash continues on the next); other lines there are output and are not run, and
```sh blocks are examples, never run. `<!-- first-hour: edit PATH -->` marks where the page
tells the operator to edit files under PATH by hand: there the script writes the lab's values
into exactly those files, and says so.

    first_hour.py [--hosts N] [--keep]   run the page (needs root: docker, the lab)
    first_hour.py --list                 print the steps the page holds, run nothing

The controller is a new container from the local image local/debian-systemd:bookworm (Debian
12, Python 3.11) holding the repository as `git archive HEAD` makes it, on the host's network,
so that it reaches the lab hosts (scripts/lab.py, a lab of its own under lab/first-hour) on
127.0.0.1 as an operator's controller reaches a fleet. Every command runs in one bash, from the
repository's root, in the page's order; the first that fails fails the run. Then the fleet
report must say every lab host is ready, train.yml must have started the job on each, and the
job must end successfully. The container and the lab are removed at the end, also after a
failure or an interrupt, unless --keep (FIRST_HOUR_KEEP=1).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from lablib import Lab, Logger

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "first-hour.md"
IMAGE = os.environ.get("FIRST_HOUR_IMAGE", "local/debian-systemd:bookworm")
CONTAINER = "first-hour-controller"
WORKDIR = "/root/gpu-fleet"  # where the operator unpacked the repository
LAB = "lab/first-hour"
PREFIX = "first-gpu-"
BASE_PORT = 2800
JOB_UNIT = "hf-train@default.service"
MARKER = re.compile(r"<!--\s*first-hour:\s*edit\s+(\S+)\s*-->")
PROMPT = "$ "
# What the page tells the operator to set in group_vars/gpu_hosts.yml, as the lab's hosts need
# it: containers without a GPU, a 1.5 GB volume, CPUs only. hf_loader_train_config is the lab's
# own (inventory/lab/group_vars/gpu_hosts.yml), read at run time.
GROUP_OVERRIDES = {
    "nvidia_driver_require_gpu": False,
    "nvidia_driver_expected_gpu_count": 0,
    "dataset_volume_min_free_mib": 0,
    "hf_loader_gpus_per_node": 1,
    "hf_loader_train_config": None,
}
# The machine's pip settings a controller's own pip.conf would carry (a site's CA, a timeout).
PIP_PASS = ("PIP_DEFAULT_TIMEOUT",)
CA_IN_CONTAINER = "/etc/first-hour/pip-ca.crt"


@dataclass(frozen=True)
class Step:
    kind: str  # "run": a command; "edit": the files under `path` the operator edits
    text: str  # the command, or the edited path
    line: int  # where it is on the page


log = Logger("first-hour")


def extract(text: str) -> list[Step]:
    """The page's steps in order: each command of a ```console block, each edit marker."""
    steps: list[Step] = []
    in_console = in_other = False
    pending: list[str] = []
    start = 0
    for n, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not in_console and not in_other:
            if stripped == "```console":
                in_console = True
            elif stripped.startswith("```"):
                in_other = True
            elif m := MARKER.search(line):
                steps.append(Step("edit", m[1], n))
            continue
        if stripped.startswith("```"):
            if pending:
                raise ValueError(f"{DOC.name}:{start}: a command ends with a backslash at the block's end")
            in_console = in_other = False
            continue
        if in_other:
            continue
        if pending:
            pending.append(line)
        elif line.startswith(PROMPT):
            pending, start = [line[len(PROMPT) :]], n
        else:
            continue  # output shown on the page
        if not line.endswith("\\"):
            steps.append(Step("run", "\n".join(pending), start))
            pending = []
    if in_console or in_other:
        raise ValueError(f"{DOC.name}: a code block is not closed")
    return steps


def replace_top_level(text: str, values: dict) -> str:
    """text (YAML) with each top-level key of `values` set to its value, every other line kept."""
    import yaml

    out, skipping, seen = [], False, set()
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z_]\w*):", line)
        if m:
            skipping = m[1] in values
            if skipping:
                seen.add(m[1])
                dumped = yaml.safe_dump({m[1]: values[m[1]]}, default_flow_style=False, sort_keys=False)
                out.extend(dumped.rstrip("\n").splitlines())
                continue
        elif skipping and line.startswith((" ", "\t")):
            continue  # the replaced value's own lines
        else:
            skipping = False
        out.append(line)
    missing = sorted(set(values) - seen)
    if missing:
        raise ValueError(f"inventory/example/group_vars/gpu_hosts.yml no longer sets {', '.join(missing)}")
    return "\n".join(out) + "\n"


def group_overrides() -> dict:
    import yaml

    lab_vars = yaml.safe_load((ROOT / "inventory/lab/group_vars/gpu_hosts.yml").read_text())
    return {**GROUP_OVERRIDES, "hf_loader_train_config": lab_vars["hf_loader_train_config"]}


def inventory_edits(edited: str, hosts: dict[str, dict]) -> dict[str, str]:
    """path in the container -> its new text: what the page says to edit, with the lab's values.
    `hosts` is the lab's state: name -> {"port", "loop"}."""
    lines = [
        "---",
        "# Written by scripts/first_hour.py where docs/first-hour.md says to edit this file: the lab's hosts.",
        "gpu_hosts:",
        "  hosts:",
    ]
    for name, h in hosts.items():
        lines += [
            f"    {name}:",
            "      ansible_host: 127.0.0.1",
            f"      ansible_port: {h['port']}",
            f"      dataset_volume_source: {h['loop']}",
        ]
    lines += ["  vars:", "    ansible_user: ansible"]
    group_vars = (ROOT / "inventory/example/group_vars/gpu_hosts.yml").read_text()
    return {
        f"{edited}/hosts.yml": "\n".join(lines) + "\n",
        f"{edited}/group_vars/gpu_hosts.yml": replace_top_level(group_vars, group_overrides()),
    }


def shell_script(steps: list[Step], edits: dict[str, dict[str, str]]) -> str:
    """One bash script running the page's steps in order, stopping at the first failure."""
    out = [
        f"cd {WORKDIR} || exit 1",
        'step() { printf "\\n[first-hour] %s (line %s) \\$ %s\\n" "$(date -u +%H:%M:%S)" "$1" "$2"; }',
    ]
    for i, s in enumerate(steps, start=1):
        if s.kind == "edit":
            for path, text in edits[s.text].items():
                delim = "__FIRST_HOUR_EOF__"
                assert delim not in text
                out += [
                    f"printf '\\n[first-hour] substituted (the page says to edit it): %s\\n' {shlex.quote(path)}",
                    f"cat > {shlex.quote(path)} <<'{delim}'",
                    text.rstrip("\n"),
                    delim,
                ]
            continue
        quoted = shlex.quote(s.text)
        out += [
            f"step {s.line} {quoted}",
            "__t=$SECONDS",
            s.text,
            "__rc=$?",
            f'if [ "$__rc" -ne 0 ]; then printf "[first-hour] FAILED, exit status %s, step {i} (line {s.line}): %s\\n"'
            f' "$__rc" {quoted}; exit 3; fi',
            'printf "[first-hour] ok, %s s\\n" $((SECONDS - __t))',
        ]
    out.append('printf "\\n[first-hour] every command of the page ran\\n"')
    return "\n".join(out) + "\n"


def run(*argv: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, text=True, **kw)


def first_hour_lab() -> Lab:
    return Lab.from_env().beside(LAB, PREFIX, BASE_PORT, gpu="none")


def lab(cmd: str, *args: str, check: bool = True) -> None:
    env = first_hour_lab().environment()
    run(sys.executable, str(ROOT / "scripts" / "lab.py"), cmd, *args, cwd=ROOT, env=env, check=check)


def start_controller(tmp: Path) -> None:
    """A fresh container with the repository as an operator has it, and what the controller
    holds before the hour starts: the SSH key and known hosts, the machine's pip settings."""
    run("docker", "rm", "-f", CONTAINER, check=False, capture_output=True)
    argv = ["docker", "run", "-d", "--name", CONTAINER, "--network", "host", "--entrypoint", "sleep"]
    ca = os.environ.get("PIP_CERT", "")
    if ca and Path(ca).is_file():
        argv += ["-v", f"{ca}:{CA_IN_CONTAINER}:ro", "-e", f"PIP_CERT={CA_IN_CONTAINER}"]
        log("the controller's pip settings: PIP_CERT (this machine's CA bundle)")
    for name in PIP_PASS:
        if os.environ.get(name):
            argv += ["-e", f"{name}={os.environ[name]}"]
    run(*argv, IMAGE, "infinity", capture_output=True)
    archive = tmp / "repo.tar"
    run(
        "git", "-C", str(ROOT), "archive", "--format=tar", f"--prefix={Path(WORKDIR).name}/", "-o", str(archive), "HEAD"
    )
    run("docker", "cp", str(archive), f"{CONTAINER}:/root/repo.tar")
    run("docker", "exec", CONTAINER, "sh", "-c", "tar -C /root -xf /root/repo.tar && rm /root/repo.tar")
    head = run("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD", capture_output=True).stdout.strip()
    log(f"controller: container {CONTAINER} from {IMAGE}, the repository at {WORKDIR} (git archive of {head})")
    run("docker", "exec", CONTAINER, "install", "-d", "-m", "0700", "/root/.ssh")
    run("docker", "cp", str(ROOT / LAB / "ssh" / "id_ed25519"), f"{CONTAINER}:/root/.ssh/id_ed25519")
    run("docker", "cp", str(ROOT / LAB / "ssh" / "known_hosts"), f"{CONTAINER}:/root/.ssh/known_hosts")
    run("docker", "exec", CONTAINER, "sh", "-c", "chown -R root:root /root/.ssh && chmod 0600 /root/.ssh/*")
    log("the operator's SSH key and known hosts: the lab's, in /root/.ssh")


def read_json(path: str) -> dict:
    got = run("docker", "exec", CONTAINER, "cat", f"{WORKDIR}/{path}", capture_output=True, check=False)
    if got.returncode != 0:
        raise SystemExit(f"[first-hour] FAILED: the controller has no {path}")
    return json.loads(got.stdout)


def check_results(hosts: list[str], wait_s: int) -> list[str]:
    """What is wrong with the run's outcome ([] when nothing)."""
    problems = []
    report = read_json("reports/fleet.json")
    log(f"reports/fleet.json: {report.get('summary')}")
    states = report.get("hosts", {})
    for h in hosts:
        if states.get(h) != "ready":
            problems.append(f"the fleet report says {h} is {states.get(h, 'absent')}, not ready")
    if sorted(states) != sorted(hosts):
        problems.append(f"the fleet report lists {sorted(states)}, the lab has {hosts}")
    train = read_json("reports/gpu_fleet_train.json")
    for h in hosts:
        if train.get("hosts", {}).get(h) != "started":
            problems.append(f"train.yml's summary says {h} is {train.get('hosts', {}).get(h)}, not started")
    deadline = time.monotonic() + wait_s
    for h in hosts:
        while True:
            show = run(
                "docker",
                "exec",
                h,
                "systemctl",
                "show",
                "-p",
                "ActiveState",
                "-p",
                "Result",
                JOB_UNIT,
                capture_output=True,
                check=False,
            ).stdout
            fields = dict(line.split("=", 1) for line in show.split() if "=" in line)
            if fields.get("ActiveState") not in ("active", "activating", "deactivating") or time.monotonic() > deadline:
                break
            time.sleep(5)
        tail = run(
            "docker",
            "exec",
            h,
            "journalctl",
            "-u",
            JOB_UNIT,
            "--no-pager",
            "-o",
            "cat",
            "-n",
            "3",
            capture_output=True,
            check=False,
        ).stdout.strip()
        log(f"{h}: {JOB_UNIT} {fields.get('ActiveState')}, result {fields.get('Result')}; last lines:\n{tail}")
        if fields.get("ActiveState") != "inactive" or fields.get("Result") != "success":
            problems.append(
                f"{h}: the training job did not end successfully within {wait_s} s "
                f"({fields.get('ActiveState')}, {fields.get('Result')})"
            )
    return problems


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hosts", type=int, default=int(os.environ.get("FIRST_HOUR_HOSTS", "1")))
    p.add_argument("--keep", action="store_true", default=os.environ.get("FIRST_HOUR_KEEP", "") in ("1", "yes"))
    p.add_argument("--train-wait", type=int, default=600, help="seconds the training job may take to end")
    p.add_argument("--list", action="store_true", help="print the page's steps and exit")
    args = p.parse_args()
    steps = extract(DOC.read_text())
    if args.list:
        for s in steps:
            print(f"{s.line:4} {s.kind:4} {s.text}")
        return 0
    # An interrupt or a TERM from make still removes the container and the lab.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t0 = time.monotonic()
    log(
        f"{DOC.relative_to(ROOT)}: {sum(s.kind == 'run' for s in steps)} commands, "
        f"{sum(s.kind == 'edit' for s in steps)} edit(s)"
    )
    ok = False
    try:
        lab("up", "--hosts", str(args.hosts))
        state = json.loads((ROOT / LAB / "state.json").read_text())
        hosts = {h: state["hosts"][h] for h in sorted(state["hosts"])}
        where = ", ".join(f"{h} (127.0.0.1:{v['port']})" for h, v in hosts.items())
        log(f"lab up: {where}, {time.monotonic() - t0:.0f} s")
        with tempfile.TemporaryDirectory() as tmp:
            start_controller(Path(tmp))
            edits = {s.text: inventory_edits(s.text, hosts) for s in steps if s.kind == "edit"}
            for path, values in ((e, group_overrides()) for e in edits):
                log(
                    f"at the edit of {path}: hosts.yml lists the lab's hosts; group_vars/gpu_hosts.yml sets "
                    f"{', '.join(values)} (the rest as the example has it)"
                )
            script = Path(tmp) / "first-hour.sh"
            script.write_text(shell_script(steps, edits))
            run("docker", "cp", str(script), f"{CONTAINER}:/root/first-hour.sh")
        t1 = time.monotonic()
        rc = run(
            "docker", "exec", CONTAINER, "bash", "--noprofile", "--norc", "/root/first-hour.sh", check=False
        ).returncode
        log(f"the page's commands: {time.monotonic() - t1:.0f} s, exit status {rc}")
        if rc != 0:
            log("FAILED: a command of the page failed (above)")
            return 1
        problems = check_results(list(hosts), args.train_wait)
        for problem in problems:
            log(f"FAILED: {problem}")
        ok = not problems
        return 0 if ok else 1
    except subprocess.CalledProcessError as e:
        log(f"FAILED: {shlex.join(map(str, e.cmd))} exited {e.returncode}")
        return 1
    finally:
        if args.keep:
            log(
                f"kept: container {CONTAINER} and the lab ({LAB}); remove them: docker rm -f {CONTAINER}; "
                f"LAB_DIR={LAB} ... scripts/lab.py down (see scripts/first_hour.py)"
            )
        else:
            run("docker", "rm", "-f", CONTAINER, check=False, capture_output=True)
            lab("down", check=False)
            # lab.py down removes the files it recorded; the folders they were in go too.
            folders = [ROOT / LAB, *(ROOT / LAB).rglob("*")] if (ROOT / LAB).is_dir() else []
            for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
        log(f"{'passed' if ok else 'failed'} in {time.monotonic() - t0:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
