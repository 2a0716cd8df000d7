"""The host's package repositories: NVIDIA's sources already on an apt host, EPEL and CRB on RHEL."""

from __future__ import annotations

import re


def _norm_uri(uri) -> str:
    return str(uri or "").strip().rstrip("/")


def apt_sources(text: str) -> list[dict]:
    """Entries of the host's apt sources, from '#file PATH' followed by the file.

    One-line (.list: 'deb [signed-by=K] URI SUITE ...') and deb822 (.sources:
    'Types/URIs/Suites/Signed-By' stanzas). Each entry: file, uris, signed_by.
    """
    entries = []
    current = ""
    stanza: dict = {}

    def close_stanza():
        if stanza.get("uris"):
            entries.append({"file": current, "uris": stanza["uris"], "signed_by": stanza.get("signed-by", "")})
        stanza.clear()

    for raw in (text or "").splitlines():
        if raw.startswith("#file "):
            close_stanza()
            current = raw[len("#file ") :].strip()
            continue
        line = raw.split("#", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if current.endswith(".sources"):
            if not line.strip():
                close_stanza()
                continue
            if ":" in line and not line[0].isspace():
                key, value = line.split(":", 1)
                key = key.strip().lower()
                if key == "uris":
                    stanza["uris"] = [_norm_uri(uri) for uri in value.split()]
                elif key == "signed-by":
                    stanza["signed-by"] = value.strip()
                elif key == "enabled" and value.strip().lower() == "no":
                    stanza["uris"] = []
            continue
        match = re.match(r"^\s*deb\s+(?:\[([^\]]*)\]\s+)?(\S+)", line)
        if match:
            options = dict(option.split("=", 1) for option in (match.group(1) or "").split() if "=" in option)
            entries.append(
                {"file": current, "uris": [_norm_uri(match.group(2))], "signed_by": options.get("signed-by", "")}
            )
    close_stanza()
    return entries


def existing_source_plan(text: str, uri, own_file, mode="reuse") -> dict:
    """What to do about sources of NVIDIA's repository that are not the role's.

    Two sources for the same URI with different Signed-By break apt for the whole
    host ("Conflicting values set for option Signed-By"; NVIDIA/cuda-repo-management
    issue #4), and cuda-keyring writes exactly such a source
    (/etc/apt/sources.list.d/cuda-<distro>-<arch>.list, signed-by
    /usr/share/keyrings/cuda-archive-keyring.gpg; NVIDIA/cuda-repo-management
    SIGNATURES.md). reuse: keep theirs, write none of the role's own;
    replace: remove their files (only files that hold nothing else) and write the role's.
    """
    target = _norm_uri(uri)
    entries = apt_sources(text)
    others = [entry for entry in entries if entry["file"] != own_file and target in entry["uris"]]
    files = sorted({entry["file"] for entry in others})
    plan = {"found": files, "reuse": False, "remove": [], "errors": []}
    if not others:
        return plan
    if mode == "reuse":
        plan["reuse"] = True
        return plan
    for file in files:
        foreign = [entry for entry in entries if entry["file"] == file and target not in entry["uris"]]
        if foreign or file == "/etc/apt/sources.list":
            plan["errors"].append(
                f"{file} carries NVIDIA's repository {target}/ beside other sources, so "
                "nvidia_driver_existing_source: replace cannot remove it: delete that line yourself, or set "
                "nvidia_driver_existing_source: reuse"
            )
        else:
            plan["remove"].append(file)
    return plan


def rhel_repo_plan(platform: dict, distribution, arch, enabled_repos: str, dkms_available, build, allow=True) -> dict:
    """Which repositories dkms needs on RHEL and its rebuilds, and whether they may be enabled.

    NVIDIA's packages for RHEL 8/9 build with dkms, which comes from EPEL; EPEL on
    9 builds against CodeReady Builder (crb on Rocky/Alma, codeready-builder-for-rhel-9-ARCH-rpms
    on RHEL) (NVIDIA driver installation guide, Red Hat Enterprise Linux, "Enable
    the network repository" / "Satisfy third-party package dependency"; NVIDIA/gpu-driver-container
    rhel9/install.sh enables crb on Rocky and installs EPEL).
    """
    plan = {"install_epel": False, "enable": [], "tool": "", "errors": []}
    if platform.get("family") != "dnf" or build != "dkms" or dkms_available:
        return plan
    enabled = {
        line.split()[0]
        for line in (enabled_repos or "").splitlines()
        if line.strip() and not line.startswith("repo id")
    }
    rhel = str(distribution) == "RedHat"
    crb = platform.get("crb_repo", {})
    crb_id = (crb.get("rhel", "") if rhel else crb.get("rebuild", "")).replace("{arch}", str(arch))
    plan["install_epel"] = not any(repo == "epel" or repo.startswith("epel-") for repo in enabled)
    plan["enable"] = [crb_id] if crb_id and crb_id not in enabled else []
    plan["tool"] = "subscription-manager" if rhel else "dnf"
    if (plan["install_epel"] or plan["enable"]) and not allow:
        wanted = (["EPEL"] if plan["install_epel"] else []) + plan["enable"]
        plan["errors"].append(
            f"dkms is neither installed nor available on {platform.get('name', 'this host')}: it comes from EPEL"
            f"{' (which needs ' + crb_id + ')' if crb_id else ''}, and nvidia_driver_enable_epel is false, so the role "
            f"may not enable {', '.join(wanted)}. Enable them yourself (or mirror dkms into an enabled repository), "
            "or set nvidia_driver_enable_epel: true"
        )
    return plan
