#!/usr/bin/env python3
"""Seed benchmark (issue 14): playbooks/seed.yml onto N blank hosts, every host copying from
the source alone against pipelined fan-out, with each transfer capped so that one copy of
the lab's cache takes about 25 s.

    make bench-seed                                       # N = 1, 2, 4, 8
    .venvs/controller/bin/python bench/seed_fanout.py --hosts-list 1,2 [--bwlimit KBPS] [--keep] [--reuse]

The bench runs its own lab beside the default one (hosts seed-gpu-01..M on
127.0.0.1:2401.., M the largest N; folder lab/bench-seed) with blank volumes (LAB_SEED=empty),
converges it once with site.yml (the labs' light stack, scripts/lablib/stack.py, the cache test
off: an empty host cannot pass it), then for each N and each mode:
- blanks every bench host's cache (the dataset's folders under /data/hf/datasets and
  /data/hf/hub, and /data/hf/.hf-seed) over `docker exec`;
- runs seed.yml --limit to the first N hosts, from the controller's copy of the lab cache
  (lab/bench-seed/cache/content), every transfer capped at --bwlimit KiB/s;
  single: hf_seed_fanout=false, hf_seed_transfers_per_source=1 (one copy at a time);
  fan-out: hf_seed_fanout=true, hf_seed_transfers_per_source=1 (a chain, pipelined);
- checks that each of the N hosts holds a copy that matches the manifest
  (`hf-cache-seed status`) and that the run reported failed=0 on each.
The modes alternate which runs first. seed.yml's cache test after seeding is off
(hf_loader_cache_test_on_change=false): the bench times the copies. The table gives the
wall time of each run and the ratio fan-out/single; results.json, the logs and the
manifest stay in lab/bench-seed. The lab is removed at the end unless --keep.
Python 3.11 standard library plus bench/fleet_rerun.py (ansible.cfg writer, timed playbook runs)
and the lab library scripts/lablib (its settings, the light stack).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

# bench/ is sys.path[0] when this file runs as a script.
from fleet_rerun import play, write_cfg  # it puts scripts/ on sys.path
from lablib import Lab, Logger, lab_inventory, light_stack, run_lab

ROOT = Path(__file__).resolve().parent.parent
BENCH_LAB = "lab/bench-seed"
PREFIX = "seed-gpu-"
BASE_PORT = 2400
CACHE_ROOT = "/data/hf"
# Where the role and the loader role put things on a host (roles/hf_seed/vars, defaults).
SEED_COMMAND = "/usr/local/bin/hf-cache-seed"
HOST_MANIFEST = "/var/lib/hf-seed/manifest.json"
# One copy of the cache at the cap takes about this long (the default --bwlimit).
COPY_S = 25
MODES = {
    "single": ["hf_seed_fanout=false", "hf_seed_transfers_per_source=1"],
    "fanout": ["hf_seed_fanout=true", "hf_seed_transfers_per_source=1"],
}
# What the role says of each transfer and each wave (roles/hf_seed/tasks/wave.yml, pass.yml),
# in the log's messages once their folded lines are joined.
FOLD = re.compile(r"\n {8,}")
TRANSFER = re.compile(r"msg: '(\S+) <- (\S+): verified: (\d+) files, (\d+) bytes, ([\d.]+) s, (\d+) rsync passes'")
WAVE = re.compile(r"msg: '(pass \d+, wave \d+: [^']*)'")
# The Ansible configuration: ansible.cfg without mitogen (as `make lab` runs), its fact
# cache in the bench's folder (fleet_rerun's "knobs").
CONFIG = "knobs"


log = Logger("bench-seed")


def seed_lab() -> Lab:
    # Many files, as the real cache has: a host hands each one on as soon as it has it.
    settings = Lab.from_env(shards=24)
    facts = f"{BENCH_LAB}/facts/{CONFIG}"
    return settings.beside(BENCH_LAB, PREFIX, BASE_PORT, fact_cache=facts, seed="empty", shards=settings.shards)


def lab(cmd: str, n: int = 0) -> None:
    run_lab(seed_lab(), cmd, *(["--hosts", str(n), "--seed", "empty"] if cmd == "up" else []))


def docker_exec(host: str, script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", "exec", host, "sh", "-c", script], capture_output=True, text=True, check=False)


def dataset_dirs(dataset: str) -> list[str]:
    """The dataset's published folders on a host (what hf-cache-seed publish renames)."""
    ns_name = dataset.replace("/", "___")
    return [f"{CACHE_ROOT}/datasets/{ns_name}", f"{CACHE_ROOT}/hub/datasets--{dataset.replace('/', '--')}"]


def blank(hosts: list[str], dataset: str) -> None:
    paths = [f"{CACHE_ROOT}/.hf-seed", *dataset_dirs(dataset)]
    quoted = " ".join(shlex.quote(p) for p in paths)
    for host in hosts:
        proc = docker_exec(host, f"rm -rf {quoted} && for p in {quoted}; do test ! -e $p || exit 1; done")
        if proc.returncode != 0:
            sys.exit(f"[bench-seed] could not blank {host}: {proc.stderr.strip()}")


def seeded(host: str) -> tuple[bool, str]:
    """Does the host hold a copy that matches the manifest (hf-cache-seed status)?"""
    proc = subprocess.run(
        ["docker", "exec", host, SEED_COMMAND, "status", "--manifest", HOST_MANIFEST, "--root", CACHE_ROOT, "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        answer = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return False, f"exit {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-300:]}"
    summary = (answer.get("verify") or {}).get("summary") or (answer.get("error") or {}).get("message", "")
    return proc.returncode == 0 and bool(answer.get("ok")), str(summary)


def cache_kib(content: Path) -> int:
    out = subprocess.run(["du", "-sk", "--apparent-size", str(content)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hosts-list", default="1,2,4,8", help="comma list of host counts N (default 1,2,4,8)")
    p.add_argument(
        "--bwlimit",
        type=int,
        default=0,
        metavar="KBPS",
        help=f"per-transfer cap in KiB/s (default: the cache's size / {COPY_S} s, measured with du)",
    )
    p.add_argument("--keep", action="store_true", help="leave the bench lab up afterwards")
    p.add_argument(
        "--reuse",
        action="store_true",
        help="the bench lab is up and converged from an earlier --keep run: skip the site.yml converge",
    )
    p.add_argument("-e", "--extra-vars", action="append", default=[], help="passed to every seed.yml run")
    args = p.parse_args()
    try:
        counts = [int(n) for n in args.hosts_list.split(",") if n.strip()]
    except ValueError:
        p.error(f"--hosts-list must be a comma list of numbers, not {args.hosts_list!r}")
    if not counts or min(counts) < 1 or max(counts) > 50:
        p.error("--hosts-list: each N must be 1..50")
    if args.bwlimit < 0:
        p.error("--bwlimit must be 0 (automatic) or more")
    if not (ROOT / "playbooks" / "seed.yml").exists():
        sys.exit("[bench-seed] playbooks/seed.yml is missing (roles/hf_seed): nothing to measure")
    if os.geteuid() != 0:
        sys.exit("[bench-seed] run as root (docker, losetup)")

    work = ROOT / BENCH_LAB
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    inv_dir, gv = lab_inventory(work)
    cfg = write_cfg(work / f"ansible-{CONFIG}.cfg", CONFIG, work / "facts")
    m = max(counts)
    hosts = [f"{PREFIX}{i:02d}" for i in range(1, m + 1)]
    content = work / "cache" / "content"
    settings = Lab.from_env(python=".venvs/loader/bin/python")
    python, dataset = settings.python_path, settings.dataset
    reports = [f"hf_loader_fleet_report_dir={work}/reports/hosts", f"fleet_report_dir={work}/reports"]
    stamp = work / "converged.json"
    results: dict = {"hosts_list": counts, "dataset": dataset, "runs": []}
    bad: list[str] = []
    try:
        t0 = time.monotonic()
        lab("up", m)
        results["lab_up_s"] = round(time.monotonic() - t0, 1)
        converged = json.loads(stamp.read_text()) if stamp.exists() else {}
        if args.reuse and set(hosts) <= set(converged.get("hosts", [])):
            log(f"--reuse: {m} hosts converged earlier ({stamp.relative_to(ROOT)}), no site.yml run")
        else:
            if args.reuse:
                log("--reuse: these hosts were not converged by an earlier run; converging them now")
            stamp.unlink(missing_ok=True)
            extra = [*light_stack(work), *reports, "hf_loader_cache_test_on_change=false"]
            log(f"site.yml on {m} empty hosts (light stack, cache test off)")
            first = play(CONFIG, cfg, inv_dir, "site.yml", extra, logs / "site.log", hosts)
            results["site"] = first
            log(f"site.yml: {first['wall_s']:.0f} s, changed {first['changed']}, failed {first['failed']}")
            if first["rc"] != 0 or first["failed"] or first["hosts"] != m:
                sys.exit(f"[bench-seed] site.yml failed (rc {first['rc']}), see {first['log']}")
            stamp.write_text(json.dumps({"hosts": hosts}) + "\n")
        size = cache_kib(content)
        bwlimit = args.bwlimit or max(1, round(size / COPY_S))
        results.update(cache_kib=size, bwlimit_kbps=bwlimit, copy_s_at_cap=round(size / bwlimit, 1))
        rel = content.relative_to(ROOT)
        log(f"cache {size} KiB ({rel}), cap {bwlimit} KiB/s a transfer: {size / bwlimit:.0f} s a copy")
        seed_vars = [
            f"hf_seed_source_dir={content}",
            f"hf_seed_controller_python={python}",
            # The manifest and seed key of this cache, removed with it (not ~/.cache/gpu-fleet/seed).
            f"hf_seed_controller_dir={work}/cache/seed",
            f"hf_seed_bwlimit_kbps={bwlimit}",
            "hf_loader_cache_test_on_change=false",
            *reports,
            *args.extra_vars,
        ]
        for k, n in enumerate(counts):
            order = list(MODES) if k % 2 == 0 else list(reversed(MODES))
            for mode in order:
                blank(hosts, dataset)
                limit = hosts[:n]
                extra = [*seed_vars, *MODES[mode], f"--limit={','.join(limit)}"]
                log(f"N={n} {mode}: seed.yml on {','.join(limit)}")
                r = play(CONFIG, cfg, inv_dir, "playbooks/seed.yml", extra, logs / f"seed-{n}-{mode}.log", hosts)
                checks = {h: seeded(h) for h in limit}
                text = FOLD.sub(" ", (ROOT / r["log"]).read_text())
                r["waves"] = sorted(set(WAVE.findall(text)))
                r["transfers"] = [
                    {"host": host, "upstream": up, "files": int(files), "bytes": int(size), "seconds": float(secs),
                     "rsync_passes": int(passes)}
                    for host, up, files, size, secs, passes in TRANSFER.findall(text)
                ]  # fmt: skip
                r.update(n=n, mode=mode, verified={h: ok for h, (ok, _) in checks.items()})
                results["runs"].append(r)
                missing = [f"{h} ({why})" for h, (ok, why) in checks.items() if not ok]
                log(
                    f"N={n} {mode:6s} {r['wall_s']:7.1f} s  controller CPU {r['controller_cpu_s']:6.1f} s  "
                    f"hosts CPU {r['hosts_cpu_s']:6.1f} s  changed {r['changed']} failed {r['failed']}  "
                    f"verified {n - len(missing)}/{n}"
                )
                if r["rc"] != 0 or r["failed"] or r["hosts"] != n or missing:
                    bad.append(
                        f"N={n} {mode}: rc {r['rc']}, failed {r['failed']}, hosts in recap {r['hosts']}, "
                        f"not verified: {', '.join(missing) or 'none'} (log {r['log']})"
                    )
    finally:
        if not args.keep:
            gv.unlink(missing_ok=True)
            stamp.unlink(missing_ok=True)
            lab("down")
        out = work / "results.json"
        out.write_text(json.dumps(results, indent=2) + "\n")
    table = []
    print()
    print(f"seed.yml onto N blank lab hosts, each transfer capped at {results.get('bwlimit_kbps')} KiB/s")
    print(f"(cache {results.get('cache_kib')} KiB: {results.get('copy_s_at_cap')} s a copy at the cap), wall s:")
    print(f"  {'N':>3s} {'single s':>9s} {'fan-out s':>10s} {'fan-out/single':>15s}")
    for n in counts:
        by = {r["mode"]: r["wall_s"] for r in results["runs"] if r["n"] == n}
        single, fanout = by.get("single"), by.get("fanout")
        ratio = round(fanout / single, 2) if single and fanout else None
        table.append({"n": n, "single_s": single, "fanout_s": fanout, "ratio_fanout_single": ratio})
        cells = [f"{v:.1f}" if v is not None else "-" for v in (single, fanout)]
        print(f"  {n:3d} {cells[0]:>9s} {cells[1]:>10s} {ratio if ratio is not None else '-':>15}")
    results["table"] = table
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"  results: {out.relative_to(ROOT)}")
    for b in bad:
        print(f"[bench-seed] NOT CLEAN: {b}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
