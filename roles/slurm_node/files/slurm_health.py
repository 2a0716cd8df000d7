#!/usr/bin/python3
"""Slurm's HealthCheckProgram and Prolog for a GPU training node (deployed by the slurm_node role).

    gpu-fleet-slurm-health [--config FILE]             HealthCheckProgram: drain or resume
    gpu-fleet-slurm-health --prolog [--config FILE]    Prolog: refuse a job on a node not ready
    gpu-fleet-slurm-health --dry-run [--config FILE]   print the checks and the decision only

For a runbook that takes the node out of service (the driver rollout), one JSON line each:

    gpu-fleet-slurm-health --hold OWNER --reason TEXT  drain the node as OWNER (reason HOLD_PREFIX
                                                       OWNER: TEXT), unless someone else drained it
    gpu-fleet-slurm-health --jobs                      the jobs on the node: id, name, user, state,
                                                       whether Slurm may requeue them
    gpu-fleet-slurm-health --requeue JOBID [JOBID...]  requeue those jobs: a job of the slurm_node
                                                       role's batch scripts gets SIGTERM in its batch
                                                       shell alone (scancel --batch), as before its
                                                       time limit: its ranks checkpoint, then it
                                                       requeues itself; any other, scontrol requeue
    gpu-fleet-slurm-health --release OWNER             end OWNER's hold: resume the node, or, when
                                                       the checks fail, leave it drained as this
                                                       health check's own (it resumes it later)

The checks (the readiness gate): the cache test's last report (`hf-cache-test --require-ready`),
the GPUs nvidia-smi sees and their driver, the cordon folder (a cordoned host is not healthy),
and the munge key's file (a key others can read is a leaked key).

On failure the node is drained with the reasons, prefixed REASON_PREFIX. When the checks pass
again the node is resumed ONLY when its drain reason is exactly the one this program last set
(recorded in the state file): a drain an operator set, even one whose text looks like ours, is
never resumed, and an operator's drain is never overwritten with ours.

Slurm runs the health check as root (SlurmdUser) with no arguments; its exit status is ignored
by Slurm, so this program drains the node itself. A Prolog that exits non-zero makes Slurm
requeue the job (and hold it unless SchedulerParameters=nohold_on_prolog_fail).

A hold is resumed ONLY by its owner's --release, and only while the node's reason is exactly the
one recorded for that owner: a drain of an operator's, of the health check's or of another owner's
is left as it is, and a health check never resumes a hold (its reason is not the check's).

Exit status: 0 ready (check) or done (hold, release, jobs, requeue); 1 not ready (check, Prolog);
2 the program cannot run (its settings, scontrol, a bad OWNER or JOBID). Python 3 standard library
only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REASON_PREFIX = "hf-health: "
# A runbook's hold: "gpu-fleet upgrade-driver: driver rollout to 580.95.05 ...".
HOLD_PREFIX = "gpu-fleet "
OWNER = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
JOB_ID = re.compile(r"^[0-9]+(_[0-9]+)?$")
# Jobs that hold the node: running, starting, being stopped or suspended (squeue's state names).
BUSY_STATES = "RUNNING,CONFIGURING,COMPLETING,SUSPENDED"
# Slurm keeps reasons whole, but sinfo and the logs show them on one line: keep them short.
MAX_REASON = 240
DEFAULT_CONFIG = "/etc/gpu-fleet/slurm-health.json"
COMMAND_TIMEOUT = 60
# `scontrol show node` prints the reason as "TEXT [user@2026-12-04T21:00:00]".
REASON_SUFFIX = re.compile(r"\s+\[[^\[\]@\s]+@[0-9T:-]+\]$")


class HealthError(Exception):
    """The health check itself cannot run (bad configuration); the message says what to fix."""


@dataclass(frozen=True)
class Node:
    name: str
    flags: frozenset[str]  # State=IDLE+DRAIN -> {"IDLE", "DRAIN"}
    reason: str  # without Slurm's " [user@time]" suffix; "" when none

    @property
    def drained(self) -> bool:
        return "DRAIN" in self.flags or "DRAINED" in self.flags or "DRAINING" in self.flags


@dataclass(frozen=True)
class Decision:
    action: str  # "drain", "resume" or "none"
    reason: str  # the drain reason to set ("" unless drain)
    message: str  # one line for the log


def reason_text(failures: list[str]) -> str:
    """The drain reason for these failures: our prefix, one line, at most MAX_REASON characters."""
    text = REASON_PREFIX + "; ".join(" ".join(f.split()) for f in failures)
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


def is_ours(reason: str, recorded: str) -> bool:
    """Whether a node's drain reason is the one this program set: our exact prefix AND the very
    text we recorded when we set it. A look-alike (another case, no space, a leading blank) or
    an operator's own text after our prefix is not ours."""
    return bool(recorded) and reason.startswith(REASON_PREFIX) and reason == recorded


def decide(node: Node, failures: list[str], recorded: str) -> Decision:
    """What to do with the node, given the checks' failures and the reason we last recorded."""
    ours = node.drained and is_ours(node.reason, recorded)
    if failures:
        wanted = reason_text(failures)
        if not node.drained:
            return Decision("drain", wanted, f"not ready, draining {node.name}: {wanted}")
        if not ours:
            return Decision(
                "none",
                "",
                f"not ready ({wanted}); {node.name} is already drained by someone else, left as it is: {node.reason!r}",
            )
        if node.reason == wanted:
            return Decision("none", "", f"still not ready, {node.name} stays drained: {wanted}")
        return Decision("drain", wanted, f"not ready for another reason, {node.name} drained again: {wanted}")
    if ours:
        return Decision(
            "resume", "", f"ready again, resuming {node.name} (it was drained by this check: {node.reason!r})"
        )
    if node.drained:
        return Decision(
            "none", "", f"ready, but {node.name} was drained by someone else and is left drained: {node.reason!r}"
        )
    return Decision("none", "", f"ready, {node.name} is not drained: nothing to do")


def hold_reason(owner: str, text: str) -> str:
    """The drain reason of OWNER's hold: our hold prefix, the owner, one line, at most MAX_REASON."""
    reason = f"{HOLD_PREFIX}{owner}: {' '.join(text.split())}"
    return reason if len(reason) <= MAX_REASON else reason[: MAX_REASON - 3] + "..."


def decide_hold(node: Node, owner: str, reason: str, recorded: str) -> Decision:
    """Drain the node as OWNER, or say why not: a drain someone else set stays as it is (the node
    takes no new work either way), and OWNER's own hold only takes the new reason."""
    if not node.drained:
        return Decision("drain", reason, f"{node.name} held by {owner}: {reason}")
    if not (recorded and node.reason == recorded and recorded.startswith(f"{HOLD_PREFIX}{owner}: ")):
        return Decision("none", "", f"{node.name} is already drained by someone else, left as it is: {node.reason!r}")
    if node.reason == reason:
        return Decision("none", "", f"{node.name} stays held by {owner}: {reason}")
    return Decision("drain", reason, f"{node.name} held by {owner} for another reason: {reason}")


def decide_release(node: Node, owner: str, recorded: str, failures: list[str]) -> Decision:
    """End OWNER's hold. Resume the node only when its reason is still the one recorded for OWNER,
    and only when the checks pass: a node that is not ready becomes the health check's drain
    ("handover", with its reason), so that the check resumes it once it is ready and no job is
    sent to it in between."""
    ours = node.drained and bool(recorded) and node.reason == recorded
    if not ours:
        if node.drained:
            return Decision("none", "", f"{node.name} is drained by someone else, left as it is: {node.reason!r}")
        return Decision("none", "", f"{node.name} is not drained: nothing to release")
    if failures:
        wanted = reason_text(failures)
        return Decision("handover", wanted, f"{owner} released {node.name}, still not ready: {wanted}")
    return Decision("resume", "", f"{owner} released {node.name}: ready, resumed")


def parse_node(text: str, name: str) -> Node:
    """The state and reason of `scontrol show node NAME`'s output."""
    flags: frozenset[str] | None = None
    reason = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("Reason="):
            reason = REASON_SUFFIX.sub("", stripped[len("Reason=") :]).strip()
            continue
        for word in stripped.split():
            if word.startswith("State="):
                flags = frozenset(part.rstrip("*~#$@!%^-") for part in word[len("State=") :].upper().split("+"))
    if flags is None:
        raise HealthError(f"scontrol show node {name} printed no State= (is {name} this node's NodeName?)")
    return Node(name, flags, reason)


# --- the checks -------------------------------------------------------------------------------


def cordon_failures(folder: str) -> list[str]:
    """Each cordon file in the hf_loader cordon folder is a hold (its JSON reason, else its text)."""
    path = Path(folder)
    if not path.exists():
        return []
    try:
        entries = sorted(entry for entry in path.iterdir() if not entry.name.startswith("."))
    except OSError as error:
        return [f"cordon folder {folder} unreadable ({error.strerror}): a hold that cannot be read still holds"]
    found = []
    for entry in entries:
        if not entry.is_file():
            continue
        try:
            text = entry.read_text(errors="replace").strip()
        except OSError as error:
            found.append(f"cordoned by {entry.name} (unreadable: {error.strerror})")
            continue
        try:
            doc = json.loads(text)
            why = doc.get("reason") if isinstance(doc, dict) else None
        except ValueError:
            why = None
        found.append(f"cordoned by {entry.name}: {why or text or 'no reason given'}")
    return found


def cache_failures(
    hf_cache_test: str, report_file: str, max_age: str, user: str = "", group: str = "", run=subprocess.run
) -> list[str]:
    """The training unit's gate, run as the training unit runs it (as `user`, the training user:
    the gate trusts only a report of its own user or root, and the cache test unit writes it as
    the training user): the last cache test report must say ready."""
    argv = [hf_cache_test, "--require-ready", report_file]
    if max_age:
        argv += ["--max-age", str(max_age)]
    as_user = {"user": user, "group": group or user, "extra_groups": [], "cwd": "/"} if user else {}
    try:
        done = run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False, **as_user)
    except FileNotFoundError:
        return [f"cache test {hf_cache_test} is not installed (run the hf_loader role)"]
    except subprocess.TimeoutExpired:
        return [f"cache test gate timed out after {COMMAND_TIMEOUT} s"]
    if done.returncode == 0:
        return []
    line = (done.stdout.strip() or done.stderr.strip() or "no output").splitlines()[-1]
    return [f"cache test exit {done.returncode}: {line}"]


def gpu_failures(expected_count: int, expected_driver: str, nvidia_smi: str, run=subprocess.run) -> list[str]:
    """The GPUs nvidia-smi sees, and their driver, against what the node was set up with."""
    if expected_count <= 0 and not expected_driver:
        return []
    argv = [nvidia_smi, "--query-gpu=index,driver_version", "--format=csv,noheader"]
    try:
        done = run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False)
    except FileNotFoundError:
        return [f"nvidia-smi not found at {nvidia_smi} ({expected_count} GPUs expected)"]
    except subprocess.TimeoutExpired:
        return [f"nvidia-smi timed out after {COMMAND_TIMEOUT} s"]
    if done.returncode != 0:
        line = (done.stdout.strip() or done.stderr.strip() or "no output").splitlines()[-1]
        return [f"nvidia-smi exit {done.returncode}: {line}"]
    rows = [[cell.strip() for cell in line.split(",")] for line in done.stdout.splitlines() if line.strip()]
    found = []
    if len(rows) < expected_count:
        found.append(f"{len(rows)} of {expected_count} GPUs visible")
    drivers = sorted({row[1] for row in rows if len(row) > 1})
    if expected_driver and drivers != [expected_driver]:
        found.append(f"driver {', '.join(drivers) or 'unknown'}, expected {expected_driver}")
    return found


def munge_key_failures(key_file: str) -> list[str]:
    """A munge key that is a link, not root's or munge's alone, or readable by others is leaked or
    replaceable: whoever reads it can forge any user's credentials on the whole cluster."""
    try:
        st = os.lstat(key_file)
    except FileNotFoundError:
        return [f"munge key {key_file} missing"]
    except OSError as error:
        return [f"munge key {key_file} unreadable ({error.strerror})"]
    if stat.S_ISLNK(st.st_mode):
        return [f"munge key {key_file} is a symbolic link: replace it with the key file itself and rotate the key"]
    if not stat.S_ISREG(st.st_mode):
        return [f"munge key {key_file} is not a regular file"]
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        return [f"munge key {key_file} mode {stat.filemode(st.st_mode)} lets others read or write it: rotate the key"]
    return []


def failures(config: dict, run=subprocess.run) -> list[str]:
    found = cordon_failures(config["cordon_dir"])
    found += cache_failures(
        config["hf_cache_test"],
        config["report_file"],
        config.get("report_max_age", ""),
        user=config.get("cache_test_user", ""),
        group=config.get("cache_test_group", ""),
        run=run,
    )
    found += gpu_failures(int(config.get("gpu_count", 0)), config.get("gpu_driver", ""), config["nvidia_smi"], run)
    found += munge_key_failures(config["munge_key_file"])
    return found


# --- Slurm ------------------------------------------------------------------------------------


def scontrol(config: dict, *args: str, run=subprocess.run) -> str:
    return slurm_command([config["scontrol"], *args], run)


def slurm_command(argv: list[str], run=subprocess.run) -> str:
    """A Slurm command's output; HealthError naming the command when it cannot run or fails."""
    try:
        done = run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False)
    except (FileNotFoundError, subprocess.TimeoutExpired) as error:
        raise HealthError(f"{' '.join(argv)}: {error}") from error
    if done.returncode != 0:
        raise HealthError(f"{' '.join(argv)} exited {done.returncode}: {(done.stderr or done.stdout).strip()}")
    return done.stdout


def read_recorded(state_file: str) -> str:
    try:
        return Path(state_file).read_text().strip()
    except FileNotFoundError:
        return ""


def record(state_file: str, reason: str) -> None:
    """Keep the reason we set (root's, 0600), written whole by a rename."""
    path = Path(state_file)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(reason + "\n")
    tmp.replace(path)


def apply(config: dict, node: Node, decision: Decision, run=subprocess.run) -> None:
    if decision.action == "drain":
        # Recorded first: a drain whose record was lost would never be resumed by us (safe side).
        record(config["state_file"], decision.reason)
        scontrol(config, "update", f"nodename={node.name}", "state=drain", f"reason={decision.reason}", run=run)
    elif decision.action == "resume":
        scontrol(config, "update", f"nodename={node.name}", "state=resume", run=run)
        record(config["state_file"], "")


def hold_file(config: dict, owner: str) -> str:
    """Where OWNER's hold reason is recorded: beside the health check's own record."""
    return str(Path(config["state_file"]).with_name(f"hold-{owner}"))


def apply_hold(config: dict, node: Node, owner: str, decision: Decision, run=subprocess.run) -> None:
    if decision.action == "drain":
        record(hold_file(config, owner), decision.reason)
        scontrol(config, "update", f"nodename={node.name}", "state=drain", f"reason={decision.reason}", run=run)


def apply_release(config: dict, node: Node, owner: str, decision: Decision, run=subprocess.run) -> None:
    if decision.action == "handover":
        # The health check's record first: from then on the drain is the check's to resume.
        record(config["state_file"], decision.reason)
        scontrol(config, "update", f"nodename={node.name}", "state=drain", f"reason={decision.reason}", run=run)
    elif decision.action == "resume":
        scontrol(config, "update", f"nodename={node.name}", "state=resume", run=run)
    if decision.action in ("handover", "resume"):
        record(hold_file(config, owner), "")


def parse_job(text: str) -> dict:
    """The fields a runbook needs of `scontrol -o show job ID`'s one line."""
    fields = {}
    for key in (
        "Command",
        "JobId",
        "ArrayJobId",
        "ArrayTaskId",
        "JobName",
        "UserId",
        "JobState",
        "Requeue",
        "NodeList",
        "Restarts",
    ):
        found = re.search(rf"(?:^|\s){key}=(\S+)", text)
        fields[key] = found.group(1) if found else ""
    if not fields["JobId"] or not fields["JobState"]:
        raise HealthError(f"scontrol show job printed no JobId= or JobState=: {text.strip()[:200]!r}")
    job_id = fields["JobId"]
    if fields["ArrayTaskId"] and fields["ArrayJobId"]:
        job_id = f"{fields['ArrayJobId']}_{fields['ArrayTaskId']}"
    return {
        "id": job_id,
        "name": fields["JobName"],
        "user": fields["UserId"].split("(")[0],
        "state": fields["JobState"],
        "requeue": fields["Requeue"] == "1",
        "nodes": fields["NodeList"],
        "restarts": int(fields["Restarts"]) if fields["Restarts"].isdigit() else 0,
        "command": fields["Command"],
    }


def node_jobs(config: dict, node: Node, run=subprocess.run) -> list[dict]:
    """The jobs that hold the node now (squeue), each as `scontrol show job` describes it."""
    squeue = config.get("squeue") or str(Path(config["scontrol"]).with_name("squeue"))
    listed = slurm_command(
        [squeue, "--noheader", f"--nodelist={node.name}", f"--states={BUSY_STATES}", "--format=%i"], run
    )
    jobs = []
    for job_id in sorted({line.strip() for line in listed.splitlines() if line.strip()}):
        text = scontrol(config, "-o", "show", "job", job_id, run=run)
        jobs.append(parse_job(text))
    return jobs


def is_fleet_script(command: str, script_dir: str) -> bool:
    """Whether a job's batch script is one of the slurm_node role's (in its root-owned folder, the
    path resolved: a look-alike path that climbs out of the folder is not)."""
    if not command or not script_dir or not command.startswith("/"):
        return False
    return Path(os.path.realpath(command)).parent == Path(os.path.realpath(script_dir))


def requeue(config: dict, job_ids: list[str], run=subprocess.run) -> list[dict]:
    """Requeue each job, the gentlest way it takes. A fleet batch script traps SIGTERM in its shell,
    stops its ranks at a checkpoint and requeues itself: scancel --batch sends the batch shell
    alone that SIGTERM (scontrol requeue signals every step too, and srun answers its own SIGTERM
    with SIGKILL, racing the checkpoint). Any other job: scontrol requeue."""
    done = []
    for job_id in job_ids:
        job = parse_job(scontrol(config, "-o", "show", "job", job_id, run=run))
        if is_fleet_script(job["command"], config.get("job_script_dir", "")):
            scancel = config.get("scancel") or str(Path(config["scontrol"]).with_name("scancel"))
            slurm_command([scancel, "--batch", "--signal=TERM", job_id], run)
            done.append({"id": job_id, "how": "SIGTERM to its batch shell (it checkpoints and requeues itself)"})
        else:
            scontrol(config, "requeue", job_id, run=run)
            done.append({"id": job_id, "how": "scontrol requeue"})
    return done


def load_config(path: str) -> dict:
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise HealthError(
            f"cannot read the health check's configuration {path}: {error}; rerun the slurm_node role"
        ) from error
    # Slurm gives its Prolog the NodeName (which may differ from the host name).
    config["node_name"] = (
        config.get("node_name") or os.environ.get("SLURMD_NODENAME") or socket.gethostname().split(".")[0]
    )
    return config


def runbook_step(config: dict, args: argparse.Namespace, run=subprocess.run) -> dict:
    """--hold, --release, --jobs or --requeue: what it did (or, with --dry-run, would do), as JSON."""
    node = parse_node(scontrol(config, "show", "node", config["node_name"], run=run), config["node_name"])
    out: dict = {"node": node.name, "state": "+".join(sorted(node.flags)), "reason": node.reason}
    if args.jobs:
        return {**out, "jobs": node_jobs(config, node, run)}
    if args.requeue:
        bad = [job_id for job_id in args.requeue if not JOB_ID.match(job_id)]
        if bad:
            raise HealthError(f"--requeue takes Slurm job ids (123 or 123_4), not {', '.join(map(repr, bad))}")
        how = requeue(config, args.requeue, run) if not args.dry_run else []
        return {**out, "action": "requeue", "requeued": args.requeue, "how": how}
    owner = args.hold or args.release
    if not OWNER.match(owner):
        raise HealthError(f"the owner {owner!r} is not a short lower-case name (a-z, 0-9, -), e.g. upgrade-driver")
    recorded = read_recorded(hold_file(config, owner))
    if args.hold:
        decision = decide_hold(node, owner, hold_reason(owner, args.reason), recorded)
        if not args.dry_run:
            apply_hold(config, node, owner, decision, run)
        held = decision.action == "drain" or (node.drained and node.reason == recorded and bool(recorded))
        return {**out, "action": decision.action, "held": held, "message": decision.message}
    decision = decide_release(node, owner, recorded, failures(config, run))
    if not args.dry_run:
        apply_release(config, node, owner, decision, run)
    return {**out, "action": decision.action, "message": decision.message}


def main(argv: list[str] | None = None, run=subprocess.run) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--dry-run", action="store_true", help="print the decision, change nothing")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--prolog", action="store_true", help="refuse the job (exit 1) on a node that is not ready")
    mode.add_argument("--hold", metavar="OWNER", help="drain the node as OWNER (with --reason)")
    mode.add_argument("--release", metavar="OWNER", help="end OWNER's hold")
    mode.add_argument("--jobs", action="store_true", help="the jobs on the node")
    mode.add_argument("--requeue", nargs="+", metavar="JOBID", help="requeue these jobs")
    parser.add_argument("--reason", default="", help="why OWNER holds the node (--hold)")
    args = parser.parse_args(argv)
    if args.hold and not args.reason.strip():
        parser.error("--hold needs --reason: the drain reason says who holds the node and why")
    try:
        config = load_config(args.config)
    except HealthError as error:
        print(f"gpu-fleet-slurm-health: {error}", file=sys.stderr, flush=True)
        return 2  # a Prolog that cannot tell whether the node is ready refuses the job
    if args.hold or args.release or args.jobs or args.requeue:
        try:
            print(json.dumps(runbook_step(config, args, run), sort_keys=True), flush=True)
        except HealthError as error:
            print(f"gpu-fleet-slurm-health: {error}", file=sys.stderr, flush=True)
            return 2
        return 0
    found = failures(config, run)
    if found and args.prolog:
        print(
            f"gpu-fleet-slurm-health: job refused on {config['node_name']}: {reason_text(found)}",
            file=sys.stderr,
            flush=True,
        )
    try:
        node = parse_node(scontrol(config, "show", "node", config["node_name"], run=run), config["node_name"])
        decision = decide(node, found, read_recorded(config["state_file"]))
        print(f"gpu-fleet-slurm-health: {decision.message}", flush=True)
        if not args.dry_run:
            apply(config, node, decision, run)
    except HealthError as error:
        # The node's readiness is known even when the controller is not reachable: a Prolog
        # still refuses a job on a node that is not ready, and lets a ready node run it.
        print(f"gpu-fleet-slurm-health: {error}", file=sys.stderr, flush=True)
        return 1 if found else (0 if args.prolog else 2)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
