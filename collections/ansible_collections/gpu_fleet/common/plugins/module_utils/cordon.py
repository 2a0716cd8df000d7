"""The cordon: a per-host hold on training, one file per owner in one folder (hf_loader_cordon_dir).

A host is cordoned while any file lies in the folder. Each owner sets and lifts its own file,
so one owner's lift never lifts another's hold:
- `operator`: a person, through playbooks/cordon.yml and playbooks/uncordon.yml;
- `upgrade-driver`: the driver rollout, set before it drains a host, lifted once the host passed.
Who honours it: hf-train@.service's gate (refuses to start, printing every file), the hf_loader
role's train tasks (playbooks/train.yml fails the host with the reasons before changing
anything) and the rollout (a cordon with skip_rollouts keeps the host out of rollouts).

A cordon file is one JSON object: owner, reason, user (who set it, on the controller), at
(UTC), skip_rollouts. A file that is not such an object still cordons the host; its text is
the reason (a hold must never be lost to a parse error). The file's name is its owner, whatever
the JSON says: it is the name uncordon.yml lifts (-e cordon_owner=NAME), so a file made by hand
under another name can always be named and lifted.

plugins/filter/cordon.py maps the cordon_* filters to these functions; nothing here touches a host.
"""

from __future__ import annotations

import json
import re

from ansible_collections.gpu_fleet.common.plugins.module_utils.preflight import PATH_RULE, path_problem

OWNER = re.compile(r"[a-z][a-z0-9-]{0,31}")
# A file made by hand may have any plain name; it can be lifted by that name (never a hidden
# file: the readers skip those, as the temporary files of an atomic write).
LIFTABLE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+=@-]{0,127}")
STATES = ("present", "absent")
# Lifting removes <folder>/<owner>: a cordon folder among the system's files could remove one
# of them (hf_loader_cordon_dir=/etc, cordon_owner=shadow).
SYSTEM_FOLDERS = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib64", "/proc", "/root", "/sbin", "/sys", "/usr")


def dir_problem(folder) -> str:
    """Why `folder` cannot be hf_loader_cordon_dir ('' when it can)."""
    why = path_problem(folder)
    if why:
        return f"{why}; it must be an absolute path {PATH_RULE}"
    clean = folder.rstrip("/") or "/"
    if clean.count("/") < 2 or clean == "/var/lib":
        return "a top-level folder: the cordon needs a folder of its own"
    system = [top for top in SYSTEM_FOLDERS if clean == top or clean.startswith(top + "/")]
    return f"inside {system[0]}, the system's files" if system else ""


def errors(state, owner, reason, skip_rollouts=False, folder=None) -> list[str]:
    """What is wrong with a request to set or lift a cordon (empty: none). Checked before any change.

    `folder` (hf_loader_cordon_dir) is checked when given: cordon.yml runs without the role's
    preflight (playbooks/cordon.yml, uncordon.yml, the driver rollout).
    """
    problems = []
    if folder is not None and dir_problem(folder):
        problems.append(
            f"hf_loader_cordon_dir {folder!r} is {dir_problem(folder)}. Set it to a folder of its own,"
            " such as /var/lib/gpu-fleet/cordon (the default)."
        )
    if state not in STATES:
        problems.append(f"hf_loader_cordon_state must be present or absent; got {state!r}.")
    liftable = state == "absent" and isinstance(owner, str) and LIFTABLE.fullmatch(owner)
    if not liftable and (not isinstance(owner, str) or not OWNER.fullmatch(owner)):
        problems.append(
            f"hf_loader_cordon_owner must be a short lowercase name such as operator (its file's name); got {owner!r}."
        )
    if state == "present" and (not isinstance(reason, str) or not reason.strip()):
        problems.append(
            "A cordon needs a reason, which everyone refused by it reads: "
            '-e cordon_reason="GPU 3 throws Xid 79, RMA ticket 1234".'
        )
    if state == "present" and isinstance(reason, str) and ("\n" in reason or len(reason) > 1000):
        problems.append("cordon_reason must be one line of at most 1000 characters.")
    if not isinstance(skip_rollouts, bool):
        problems.append(f"cordon_skip_rollouts must be true or false; got {skip_rollouts!r}.")
    return problems


def record(owner: str, reason: str, user: str, at: str, skip_rollouts=False) -> dict:
    """The content of one owner's cordon file."""
    problems = errors("present", owner, reason, skip_rollouts)
    if problems:
        raise ValueError(" ".join(problems))
    return {"owner": owner, "reason": reason.strip(), "user": user, "at": at, "skip_rollouts": skip_rollouts}


def parse(listed: list) -> list[dict]:
    """The cordons from the folder's files as gpu_fleet.common.path_state lists them
    (`listings` with `listing_contents`), sorted by owner.

    Each entry carries `path` and `text`. An entry whose text is null (the file went away
    between the listing and the read) is no cordon.
    """
    cordons = []
    for entry in listed or []:
        if not isinstance(entry, dict) or not isinstance(entry.get("text"), str):
            continue
        path = entry.get("path") or ""
        name = path.rsplit("/", 1)[-1]
        text = entry["text"].strip()
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
        if not isinstance(doc, dict) or not str(doc.get("reason", "")).strip():
            doc = {"reason": text or "(an empty cordon file)"}
        cordons.append(
            {
                # The file's name, never the JSON's owner: the name is what uncordon.yml lifts.
                "owner": name,
                "file": path,
                "reason": str(doc["reason"]).strip(),
                "user": str(doc.get("user", "")),
                "at": str(doc.get("at", "")),
                "skip_rollouts": doc.get("skip_rollouts") is True,
            }
        )
    return sorted(cordons, key=lambda cordon: (cordon["owner"], cordon["file"]))


def text(cordons: list[dict]) -> str:
    """One line naming every cordon: 'operator (alice, 2026-03-01T10:00:00Z): reason; ...'."""
    parts = []
    for cordon in cordons or []:
        who = ", ".join(part for part in (cordon.get("user"), cordon.get("at")) if part)
        skip = " [keeps the host out of rollouts]" if cordon.get("skip_rollouts") else ""
        parts.append(f"{cordon['owner']}{f' ({who})' if who else ''}: {cordon['reason']}{skip}")
    return "; ".join(parts)


def owned_by(cordons: list[dict], owner: str) -> list[dict]:
    return [cordon for cordon in cordons or [] if cordon.get("owner") == owner]
