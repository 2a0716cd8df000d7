#!/usr/bin/env python3
"""Molecule's connection benchmark: the same playbook over the docker connection with
pipelining off and on, in the same run, alternated, medians and their ratios.

    make bench-molecule-exec
    .venvs/controller/bin/python bench/molecule_exec.py --tasks 20 --reps 3

Molecule reaches its containers through `docker exec`, and every exec is a docker client, a
dockerd and containerd request and a runc start (through scripts/capfilter-runc): about a third
of a CPU-second on the test machine. Without pipelining Ansible makes six of them per module
(home folder, temporary folder, the module copied in, chmod, run, removal); with it, one.
Ansible reads `pipelining` from [defaults] or [connection]; the [ssh_connection] key that
.config/molecule/config.yml once used is seen by the ssh plugin only.

The playbook is a role's usual mix (stat, file, copy, lineinfile, command), on one container of
local/debian-systemd:bookworm that the bench starts and removes. Reported per configuration:
wall seconds, the machine's busy CPU-seconds (/proc/stat, all processes: client, engine,
runtime and container) and the docker execs Ansible logged. Python 3.11 standard library only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ANSIBLE_PLAYBOOK = ROOT / ".venvs" / "controller" / "bin" / "ansible-playbook"
IMAGE = "local/debian-systemd:bookworm"
TASKS = """
    - ansible.builtin.stat: {{path: /etc/os-release}}
    - ansible.builtin.file: {{path: /srv/bench/{n}, state: directory, mode: "0755"}}
    - ansible.builtin.copy: {{content: "bench {n}\\n", dest: /srv/bench/{n}/file, mode: "0644"}}
    - ansible.builtin.lineinfile: {{path: /srv/bench/{n}/file, line: "line {n}", mode: "0644"}}
    - ansible.builtin.command: {{cmd: "true"}}
      changed_when: false
"""


def busy_ticks() -> int:
    with open("/proc/stat", encoding="ascii") as stat:
        user, nice, system = (int(field) for field in stat.readline().split()[1:4])
    return user + nice + system


def playbook(folder: Path, groups: int) -> Path:
    path = folder / "bench.yml"
    (folder / "ansible.cfg").touch()  # Ansible's defaults but for pipelining, set per run
    tasks = "".join(TASKS.format(n=n) for n in range(groups))
    path.write_text(f"- name: Bench\n  hosts: all\n  gather_facts: false\n  tasks:{tasks}")
    return path


def timed_run(container: str, book: Path, pipelining: bool) -> tuple[float, float, int]:
    config = book.with_name("ansible.cfg")
    env = dict(os.environ, ANSIBLE_PIPELINING=str(pipelining), ANSIBLE_NOCOLOR="1", ANSIBLE_CONFIG=str(config))
    command = [str(ANSIBLE_PLAYBOOK), "-i", f"{container},", "-c", "community.docker.docker", "-vvv", str(book)]
    command += ["-e", "ansible_python_interpreter=/usr/bin/python3"]
    ticks, start = busy_ticks(), time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    wall, cpu = time.monotonic() - start, (busy_ticks() - ticks) / os.sysconf("SC_CLK_TCK")
    if done.returncode != 0:
        sys.exit(f"bench playbook failed (pipelining={pipelining}):\n{done.stdout[-3000:]}{done.stderr[-2000:]}")
    execs = sum(line.startswith(f"<{container}> EXEC") for line in done.stdout.splitlines())
    return wall, cpu, execs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=20, help="module tasks in the playbook (a multiple of 5)")
    parser.add_argument("--reps", type=int, default=3, help="runs of each configuration, alternated")
    args = parser.parse_args()
    container = f"bench-exec-{os.getpid()}"
    # As .config/molecule/config.yml's platforms.
    systemd = ["--privileged", "--cgroupns", "host", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw", "--tmpfs", "/run"]
    run = ["docker", "run", "-d", "--name", container, *systemd, "--tmpfs", "/tmp", IMAGE, "/lib/systemd/systemd"]
    subprocess.run(run, check=True, capture_output=True)
    results: dict[bool, list[tuple[float, float, int]]] = {False: [], True: []}
    try:
        with tempfile.TemporaryDirectory() as folder:
            book = playbook(Path(folder), max(1, args.tasks // 5))
            timed_run(container, book, True)  # warm-up: systemd's start-up, page cache
            for _ in range(args.reps):
                for pipelining in (False, True):
                    results[pipelining].append(timed_run(container, book, pipelining))
    finally:
        subprocess.run(["docker", "rm", "-f", container], check=False, capture_output=True)
    medians = {
        pipelining: [statistics.median(run[i] for run in runs) for i in range(3)]
        for pipelining, runs in results.items()
    }
    tasks = max(1, args.tasks // 5) * 5
    for pipelining, (wall, cpu, execs) in medians.items():
        name = "pipelining on " if pipelining else "pipelining off"
        print(f"{name}: {wall:6.1f} s wall, {cpu:6.1f} CPU-s, {execs:4.0f} docker execs for {tasks} tasks")
    off, on = medians[False], medians[True]
    print(f"off/on: wall {off[0] / on[0]:.2f}x, CPU {off[1] / on[1]:.2f}x, execs {off[2] / on[2]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
