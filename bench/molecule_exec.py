#!/usr/bin/env python3
"""Molecule's connection benchmark: the same playbook over the docker connection three ways, in
the same run, alternated, medians and their ratios to Molecule's setting.

    make bench-molecule-exec
    .venvs/controller/bin/python bench/molecule_exec.py --tasks 20 --reps 3

Molecule reaches its containers through `docker exec`, and every exec is a docker client, a
dockerd and containerd request and a runc start (through scripts/capfilter-runc): about a third
of a CPU-second on the test machine. The three configurations:
- off: Ansible's default, no pipelining: six execs per module (home folder, temporary folder,
  the module copied in, chmod, run, removal);
- pipelining: one exec and one new Python on the host per module (Ansible reads `pipelining`
  from [defaults] or [connection]; the [ssh_connection] key that .config/molecule/config.yml
  once used is seen by the ssh plugin only);
- mitogen: what .config/molecule/config.yml sets now, the strategy of
  molecule/shared/strategy_plugins over the connection named `docker`: one Python per host for
  the whole run, reached over one exec, and each module sent to it.

The playbook is a role's usual mix (stat, file, copy, lineinfile, command), on one container of
local/debian-systemd:bookworm that the bench starts and removes. Reported per configuration:
wall seconds, the machine's busy CPU-seconds (/proc/stat, all processes: client, engine,
runtime and container) and the execs the engine started in the container (its exec_start
events). Python 3.11 standard library only.
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
    (folder / "ansible.cfg").touch()  # Ansible's defaults but for what each configuration sets
    tasks = "".join(TASKS.format(n=n) for n in range(groups))
    path.write_text(f"- name: Bench\n  hosts: all\n  gather_facts: false\n  tasks:{tasks}")
    return path


CONFIGURATIONS = {
    "off": {"ANSIBLE_PIPELINING": "False"},
    "pipelining": {"ANSIBLE_PIPELINING": "True"},
    "mitogen": {
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_STRATEGY_PLUGINS": str(ROOT / "molecule" / "shared" / "strategy_plugins"),
        "ANSIBLE_STRATEGY": "mitogen_linear",
    },
}
# Mitogen takes over the docker connection by its short name only (as Molecule's inventory names it).
CONNECTION = {"off": "community.docker.docker", "pipelining": "community.docker.docker", "mitogen": "docker"}


def execs_started(container: str, since: float, until: float) -> int:
    events = ["docker", "events", "--since", f"{since:.3f}", "--until", f"{until:.3f}", "--format", "{{.ID}}"]
    events += ["--filter", f"container={container}", "--filter", "event=exec_start"]
    return len(subprocess.run(events, capture_output=True, text=True, check=True).stdout.splitlines())


def timed_run(container: str, book: Path, name: str) -> tuple[float, float, int]:
    config = book.with_name("ansible.cfg")
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_CONFIG=str(config), **CONFIGURATIONS[name])
    command = [str(ANSIBLE_PLAYBOOK), "-i", f"{container},", "-c", CONNECTION[name], str(book)]
    command += ["-e", "ansible_python_interpreter=/usr/bin/python3"]
    ticks, since, start = busy_ticks(), time.time(), time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    wall, cpu = time.monotonic() - start, (busy_ticks() - ticks) / os.sysconf("SC_CLK_TCK")
    if done.returncode != 0:
        sys.exit(f"bench playbook failed ({name}):\n{done.stdout[-3000:]}{done.stderr[-2000:]}")
    return wall, cpu, execs_started(container, since, time.time())


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
    results: dict[str, list[tuple[float, float, int]]] = {name: [] for name in CONFIGURATIONS}
    try:
        with tempfile.TemporaryDirectory() as folder:
            book = playbook(Path(folder), max(1, args.tasks // 5))
            timed_run(container, book, "pipelining")  # warm-up: systemd's start-up, page cache
            for _ in range(args.reps):
                for name in CONFIGURATIONS:
                    results[name].append(timed_run(container, book, name))
    finally:
        subprocess.run(["docker", "rm", "-f", container], check=False, capture_output=True)
    medians = {name: [statistics.median(run[i] for run in runs) for i in range(3)] for name, runs in results.items()}
    tasks = max(1, args.tasks // 5) * 5
    for name, (wall, cpu, execs) in medians.items():
        print(f"{name:>10}: {wall:6.1f} s wall, {cpu:6.1f} CPU-s, {execs:4.0f} docker execs for {tasks} tasks")
    wall, cpu, _ = medians["mitogen"]
    for name in ("off", "pipelining"):
        print(f"{name}/mitogen: wall {medians[name][0] / wall:.2f}x, CPU {medians[name][1] / cpu:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
