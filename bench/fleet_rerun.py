#!/usr/bin/env python3
"""Fleet benchmark: the no-change rerun of site.yml on N lab hosts, Ansible defaults vs the
project's settings on ansible-core alone and with mitogen, in the same run, several
repetitions, medians, their ratios and issue 17's three goals.

    make bench-fleet                      # 10 hosts, 3 repetitions
    .venvs/controller/bin/python bench/fleet_rerun.py --hosts 10 --reps 3 [-e VAR=VALUE ...]

Configurations (each an ansible.cfg written under the bench's lab folder):
- defaults: Ansible's own defaults for everything that costs time: forks 5, no pipelining,
  facts gathered on every play (`gathering = implicit`, no fact cache) and injected as top-level
  variables, linear strategy,
  Ansible's default ssh_args. Everything else (roles_path, output) as in ansible.cfg.
- project: ansible.cfg as it is (forks 20, pipelining, jsonfile fact cache + smart gathering,
  facts not injected, ControlPersist) plus the mitogen strategy `mitogen_linear` unless ansible.cfg already
  names a strategy.
- knobs: ansible.cfg as it is, on ansible-core alone (no third-party strategy).

Each repetition also times a calibration playbook under each configuration: one no-op module
call on every host and nothing else. Its defaults/configuration ratio is the most any site that
calls a module on each host can reach on this machine: the hosts' Python start-up costs the
same under every configuration, and here it shares the controller's CPUs.

The bench runs its own lab (hosts bench-gpu-01..N on 127.0.0.1:2301.., lab folder
lab/bench-fleet) so that the first run is a real first converge and `make lab`'s hosts are
left alone; it removes them at the end unless --keep. The first run uses ansible.cfg as it is
(`knobs`, what `ansible-playbook site.yml` runs with; --first-config picks another); its wall time
is reported in total and per host. Each rerun must report
changed=0 and failed=0 on every host, else the bench says so and exits 1.
Python 3.11 standard library only.
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from lablib import Lab, Logger, container_cpu_seconds, lab_inventory, light_stack, run_lab  # the lab library

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
BENCH_LAB = "lab/bench-fleet"
# Ansible settings that trade correctness for nothing but speed: the defaults config drops them.
PERF_KEYS = {
    "defaults": {
        "forks",
        "gathering",
        "fact_caching",
        "fact_caching_connection",
        "fact_caching_timeout",
        "inject_facts_as_vars",
        "strategy",
        "strategy_plugins",
    },
    "ssh_connection": {"pipelining", "ssh_args", "control_path", "control_path_dir"},
    "connection": {"pipelining"},
}
# Settings whose values are paths, relative to the config file.
PATH_KEYS = {"roles_path", "library", "module_utils", "filter_plugins", "collections_path", "inventory"}
RECAP = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)\s+skipped=(\d+)", re.M)
# Issue 17's goals: defaults/configuration wall-time ratios, and controller CPU a host.
GOAL_RATIO = {"knobs": 3.0, "project": 5.0}
GOAL_CPU_PER_HOST = 1.8  # half of the 3.6 s measured before issue 17
LABELS = {"defaults": "Ansible defaults", "knobs": "project, ansible-core", "project": "project + mitogen"}
CALIBRATION = "bench/one_call_per_host.yml"


log = Logger("bench")


def mitogen_strategy_dir() -> Path | None:
    try:
        import ansible_mitogen
    except ImportError:
        return None
    return Path(ansible_mitogen.__file__).parent / "plugins" / "strategy"


def project_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser(interpolation=None, strict=False)
    cfg.read(ROOT / "ansible.cfg")
    return cfg


def absolutize(cfg: configparser.ConfigParser) -> None:
    for section in cfg.sections():
        for key, value in cfg.items(section):
            if key in PATH_KEYS or key.endswith("_plugins"):
                parts = [p if p.startswith(("/", "~")) else str(ROOT / p) for p in value.split(":")]
                cfg.set(section, key, ":".join(parts))


def write_cfg(path: Path, name: str, facts_dir: Path) -> Path:
    cfg = project_cfg()
    absolutize(cfg)
    if name == "defaults":
        for section, keys in PERF_KEYS.items():
            if cfg.has_section(section):
                for key in keys:
                    cfg.remove_option(section, key)
    else:
        cfg.set("defaults", "fact_caching_connection", str(facts_dir / name))
        if name == "project" and not cfg.has_option("defaults", "strategy"):
            strat = mitogen_strategy_dir()
            if strat is None:
                sys.exit("[bench] mitogen is not installed in the controller venv (requirements/controller.txt)")
            cfg.set("defaults", "strategy_plugins", str(strat))
            cfg.set("defaults", "strategy", "mitogen_linear")
        if name == "knobs":
            cfg.remove_option("defaults", "strategy")
            cfg.remove_option("defaults", "strategy_plugins")
    # Ansible's own inventory is not used: the bench names its inventory.
    cfg.remove_option("defaults", "inventory")
    with path.open("w") as f:
        f.write(f"# Written by bench/fleet_rerun.py: configuration '{name}'.\n")
        cfg.write(f)
    return path


def play(name: str, cfg: Path, inventory: Path, playbook: str, extra: list[str], logfile: Path, hosts) -> dict:
    env = dict(os.environ, ANSIBLE_CONFIG=str(cfg), ANSIBLE_FORCE_COLOR="0", ANSIBLE_NOCOLOR="1")
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    cmd = [str(BIN / "ansible-playbook"), "-i", str(inventory), playbook]
    for e in extra:
        cmd += ["-e", e] if not e.startswith("-") else [e]
    cpu0 = container_cpu_seconds(hosts)
    ru0 = os.times()
    t0 = time.monotonic()
    with logfile.open("w") as out:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    wall = time.monotonic() - t0
    ru1 = os.times()
    text = logfile.read_text()
    recap = {m[1]: {"ok": int(m[2]), "changed": int(m[3]), "unreachable": int(m[4]), "failed": int(m[5]),
                    "skipped": int(m[6])} for m in RECAP.finditer(text)}  # fmt: skip
    return {
        "config": name,
        "wall_s": round(wall, 2),
        "controller_cpu_s": round(
            (ru1.children_user + ru1.children_system) - (ru0.children_user + ru0.children_system), 2
        ),
        "hosts_cpu_s": round(container_cpu_seconds(hosts) - cpu0, 2),
        "rc": proc.returncode,
        "changed": sum(r["changed"] for r in recap.values()),
        "failed": sum(r["failed"] + r["unreachable"] for r in recap.values()),
        "tasks_ok": sum(r["ok"] for r in recap.values()),
        # Task rows a host (ok and skipped): what each host costs the controller.
        "rows_per_host": round(
            sum(r["ok"] + r["skipped"] for h, r in recap.items() if h in hosts) / max(1, len(set(recap) & set(hosts))),
            1,
        ),
        # The recap also lists localhost (the report play): count the fleet's hosts only.
        "hosts": sum(1 for host in recap if host in hosts),
        "log": str(logfile.relative_to(ROOT)),
    }


def bench_lab() -> Lab:
    """The bench's own lab; its volumes seeded whatever the shell exports (the rerun benchmark starts
    from a full cache), its two fact caches cleared for a new host."""
    facts = ":".join(f"{BENCH_LAB}/facts/{c}" for c in ("project", "knobs"))
    return Lab.from_env().beside(BENCH_LAB, "bench-gpu-", 2300, fact_cache=facts)


def lab(cmd: str, n: int) -> None:
    run_lab(bench_lab(), cmd, *(["--hosts", str(n)] if cmd == "up" else []))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hosts", type=int, default=Lab.from_env(hosts=10).hosts)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--playbook", default="site.yml")
    p.add_argument("--configs", default="defaults,knobs,project", help="comma list of defaults, knobs, project")
    p.add_argument("--no-calibration", action="store_true", help="skip the one-call-per-host calibration runs")
    p.add_argument("-e", "--extra-vars", action="append", default=[], help="passed to every ansible-playbook run")
    p.add_argument("--tags", help="only these tags of the playbook (--tags)")
    p.add_argument("--skip-tags", help="skip these tags of the playbook (--skip-tags)")
    p.add_argument(
        "--stack",
        choices=["light", "prod"],
        default="light",
        help="what the deploy role installs: light (about 1 GB a host) or the production lock (about 9 GB a host)",
    )
    p.add_argument("--keep", action="store_true", help="keep the bench hosts afterwards")
    p.add_argument("--skip-first", action="store_true", help="hosts already converged: no first-run figure")
    p.add_argument(
        "--first-config",
        choices=sorted(LABELS),
        default="knobs",
        help="the configuration of the first run (default knobs: ansible.cfg as it is, as the project ships it)",
    )
    args = p.parse_args()
    configs = args.configs.split(",")
    work = ROOT / BENCH_LAB
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    facts = work / "facts"
    inv_dir, gv = lab_inventory(work)
    cfgs = {c: write_cfg(work / f"ansible-{c}.cfg", c, facts) for c in {*configs, args.first_config}}
    hosts = [f"bench-gpu-{i:02d}" for i in range(1, args.hosts + 1)]
    for opt in ("tags", "skip_tags"):
        if getattr(args, opt):
            args.extra_vars.append(f"--{opt.replace('_', '-')}={getattr(args, opt)}")
    if args.stack == "light":
        args.extra_vars = light_stack(work) + args.extra_vars
    # The bench hosts' readiness reports stay in the bench's folder, not in reports/.
    args.extra_vars += [f"hf_loader_fleet_report_dir={work}/reports/hosts", f"fleet_report_dir={work}/reports"]
    results: dict = {"hosts": args.hosts, "playbook": args.playbook, "stack": args.stack, "runs": []}
    results["extra_vars"] = args.extra_vars
    bad = []
    try:
        t0 = time.monotonic()
        lab("up", args.hosts)
        results["lab_up_s"] = round(time.monotonic() - t0, 1)
        if not args.skip_first:
            label = LABELS[args.first_config]
            log(f"first run of {args.playbook} on {args.hosts} fresh hosts ({label})")
            first = play(
                args.first_config, cfgs[args.first_config], inv_dir, args.playbook, args.extra_vars,
                logs / "first.log", hosts,
            )  # fmt: skip
            results["first"] = first
            log(
                f"first run: {first['wall_s']:.0f} s, {first['wall_s'] / args.hosts:.1f} s per host, "
                f"controller CPU {first['controller_cpu_s']:.0f} s, hosts CPU {first['hosts_cpu_s']:.0f} s, "
                f"changed {first['changed']}, failed {first['failed']} (rc {first['rc']})"
            )
            if first["rc"] != 0 or first["failed"]:
                bad.append(f"first run failed, see {first['log']}")
        # A warm-up rerun fills a fact cache that is still empty (a fleet's rerun finds it full).
        for c in [c for c in configs if c != "defaults" and not (facts / c).exists()]:
            r = play(c, cfgs[c], inv_dir, args.playbook, args.extra_vars, logs / f"warmup-{c}.log", hosts)
            log(f"warm-up {c}: {r['wall_s']:.1f} s, changed {r['changed']}, failed {r['failed']}")
        for rep in range(1, args.reps + 1):
            order = configs if rep % 2 else list(reversed(configs))
            for c in order:
                r = play(c, cfgs[c], inv_dir, args.playbook, args.extra_vars, logs / f"rerun-{c}-{rep}.log", hosts)
                r["rep"] = rep
                results["runs"].append(r)
                log(
                    f"rep {rep} {c:8s} {r['wall_s']:7.1f} s  controller CPU {r['controller_cpu_s']:6.1f} s  "
                    f"hosts CPU {r['hosts_cpu_s']:6.1f} s  changed {r['changed']} failed {r['failed']}"
                )
                if r["rc"] != 0 or r["failed"] or r["changed"] or r["hosts"] != args.hosts:
                    bad.append(f"{c} rep {rep}: rc {r['rc']}, changed {r['changed']}, failed {r['failed']}")
            for c in [] if args.no_calibration else order:
                r = play(c, cfgs[c], inv_dir, CALIBRATION, [], logs / f"calibration-{c}-{rep}.log", hosts)
                r["rep"], r["calibration"] = rep, True
                results["runs"].append(r)
                log(f"rep {rep} {c:8s} calibration (one module call a host) {r['wall_s']:5.1f} s")
                if r["rc"] != 0 or r["failed"] or r["hosts"] != args.hosts:
                    bad.append(f"{c} calibration rep {rep}: rc {r['rc']}, failed {r['failed']}")
    finally:
        if not args.keep:
            gv.unlink(missing_ok=True)
            lab("down", args.hosts)
    med = {}
    for c in configs:
        runs = [r for r in results["runs"] if r["config"] == c and not r.get("calibration")]
        med[c] = {k: statistics.median(r[k] for r in runs) for k in ("wall_s", "controller_cpu_s", "hosts_cpu_s")}
        med[c]["rows_per_host"] = statistics.median(r["rows_per_host"] for r in runs)
        calibration = [r["wall_s"] for r in results["runs"] if r["config"] == c and r.get("calibration")]
        if calibration:
            med[c]["calibration_wall_s"] = statistics.median(calibration)
    results["medians"] = med
    print()
    print(f"No-change rerun of {args.playbook} on {args.hosts} lab hosts over SSH, medians of {args.reps}:")
    # The controller's CPU per host is what grows with the fleet in push mode; in pull mode
    # (docs/pull.md) it is none, and each host spends its own instead.
    print(
        f"  {'config':22s} {'wall s':>7s} {'controller CPU s':>17s} {'per host':>9s} {'hosts CPU s':>12s}"
        f" {'rows a host':>12s} {'1 call a host s':>16s}"
    )
    for c, m in med.items():
        m["controller_cpu_s_per_host"] = round(m["controller_cpu_s"] / args.hosts, 2)
        print(
            f"  {LABELS.get(c, c):22s} {m['wall_s']:7.1f} {m['controller_cpu_s']:17.1f}"
            f" {m['controller_cpu_s_per_host']:9.2f} {m['hosts_cpu_s']:12.1f} {m['rows_per_host']:12.1f}"
            f" {m.get('calibration_wall_s', float('nan')):16.1f}"
        )
    results["goals"] = goals(med)
    print("Goals (issue 17):")
    for goal in results["goals"]:
        print(f"  {'met   ' if goal['met'] else 'MISSED'} {goal['text']}")
    if "first" in results:
        f = results["first"]
        print(f"  first run ({LABELS[f['config']]}): {f['wall_s']:.0f} s for {args.hosts} hosts, "
              f"{f['wall_s'] / args.hosts:.1f} s per host; controller CPU {f['controller_cpu_s']:.0f} s, "
              f"hosts CPU {f['hosts_cpu_s']:.0f} s")  # fmt: skip
    out = work / "results.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"  results: {out.relative_to(ROOT)}")
    for b in bad:
        print(f"[bench] NOT CLEAN: {b}", file=sys.stderr)
    return 1 if bad else 0


def goals(med: dict) -> list[dict]:
    """Issue 17's goals judged from the medians; each ratio with the calibration's ceiling beside it."""
    judged = []
    if "defaults" not in med:
        return judged
    base = med["defaults"]
    for c, target in GOAL_RATIO.items():
        if c not in med:
            continue
        ratio = base["wall_s"] / med[c]["wall_s"]
        text = f"{LABELS[c]}: {ratio:.2f}x faster than Ansible's defaults (goal {target:.0f}x)"
        if "calibration_wall_s" in base and "calibration_wall_s" in med[c]:
            ceiling = base["calibration_wall_s"] / med[c]["calibration_wall_s"]
            text += f"; one module call a host reaches {ceiling:.2f}x here"
        judged.append({"goal": f"ratio_{c}", "value": round(ratio, 2), "target": target, "met": ratio >= target,
                       "text": text})  # fmt: skip
    for c in GOAL_RATIO:
        if c in med:
            per_host = med[c]["controller_cpu_s_per_host"]
            judged.append({
                "goal": f"cpu_per_host_{c}", "value": per_host, "target": GOAL_CPU_PER_HOST,
                "met": per_host <= GOAL_CPU_PER_HOST,
                "text": f"{LABELS[c]}: {per_host:.2f} s of controller CPU a host (goal at most {GOAL_CPU_PER_HOST} s)",
            })  # fmt: skip
    return judged


if __name__ == "__main__":
    sys.exit(main())
