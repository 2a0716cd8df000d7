"""Where the training job writes its checkpoints: the folder that the training unit must be able to
write for hf_loader_train_config's save_folder, and why a save_folder is refused."""

from __future__ import annotations

from pathlib import PurePosixPath

# Folders a save_folder may not be in: the unit cannot write them (ProtectSystem=strict keeps them
# read-only whatever ReadWritePaths= says for the API file systems, ProtectHome= hides the homes),
# the unit's /tmp is private and emptied at every stop, or they hold the system and the loader.
_NO_CHECKPOINTS_UNDER = {
    "/proc": "the kernel's API file system",
    "/sys": "the kernel's API file system",
    "/dev": "device nodes",
    "/run": "a tmpfs emptied at every boot",
    "/tmp": "private to the unit (PrivateTmp=yes) and emptied at every stop",
    "/var/tmp": "private to the unit (PrivateTmp=yes) and emptied at every stop",
    "/home": "hidden from the unit (ProtectHome=yes)",
    "/root": "hidden from the unit (ProtectHome=yes)",
    "/boot": "the boot partition",
    "/etc": "configuration",
    "/usr": "the operating system",
    "/bin": "the operating system",
    "/sbin": "the operating system",
    "/lib": "the operating system",
    "/lib64": "the operating system",
}


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def checkpoint_dir(train_config) -> str:
    """The folder the training unit writes checkpoints into: save_folder up to its first placeholder.

    Composer fills in {run_name} (and {rank}, ...) at run time, so the unit is given the folder
    above the first segment that holds one: /data/checkpoints/{run_name} -> /data/checkpoints.
    '' when the config sets no save_folder.
    """
    folder = (train_config or {}).get("save_folder") if isinstance(train_config, dict) else None
    if not isinstance(folder, str) or not folder.strip():
        return ""
    kept = []
    for segment in folder.strip().split("/"):
        if "{" in segment or "}" in segment:
            break
        kept.append(segment)
    return str(PurePosixPath("/".join(kept) or "/")) if folder.startswith("/") else folder


def checkpoint_problems(train_config, cache_root: str, protected: dict | None = None) -> list[str]:
    """Why hf_loader_train_config's checkpoint settings cannot work on the unit ([] when they can).

    `protected` maps other folders the role manages (name -> path) that must not hold checkpoints.
    """
    if not isinstance(train_config, dict):
        return []
    name = "hf_loader_train_config.save_folder"
    folder = train_config.get("save_folder")
    problems = []
    if train_config.get("autoresume") is True:
        if not folder:
            problems.append(
                "hf_loader_train_config.autoresume is true but save_folder is not set: there is"
                " nowhere to look for a checkpoint. Set save_folder (e.g. /data/checkpoints) or"
                " autoresume: false."
            )
        if not train_config.get("run_name"):
            problems.append(
                "hf_loader_train_config.autoresume is true but run_name is not set: each start would"
                " get a new random name and never find the last one's checkpoints. Set run_name to"
                " a name kept for every start of the job (e.g. resnet50-imagenet)."
            )
    if folder is None or folder == "":
        return problems
    fix = "Set it to an absolute folder outside the cache, such as /data/checkpoints."
    if not isinstance(folder, str):
        return [*problems, f"{name} must be a string (got {folder!r}). {fix}"]
    if "://" in folder:
        return [
            *problems,
            f"{name} {folder!r} is a URI: the role makes local folders writable for the training"
            f" unit, nothing else. {fix}",
        ]
    if not folder.startswith("/"):
        return [
            *problems,
            f"{name} {folder!r} is relative: Composer would resolve it against the unit's working"
            f" folder, which is not where an operator looks for checkpoints. {fix}",
        ]
    writable = checkpoint_dir(train_config)
    if writable == "/":
        return [*problems, f"{name} {folder!r} would make the whole file system writable. {fix}"]
    refused = [(top, why) for top, why in _NO_CHECKPOINTS_UNDER.items() if _within(writable, top)]
    refused += [
        (path, f"the folder of {var}") for var, path in (protected or {}).items() if path and _within(writable, path)
    ]
    if cache_root and _within(cache_root, writable) and writable != cache_root:
        # The training user would own a folder above the cache: it could move the cache's mount
        # point aside while the volume is not mounted and put its own copy in its place.
        refused.insert(0, (writable, f"a folder above the dataset cache {cache_root}, which only root may own"))
    if cache_root and _within(writable, cache_root):
        refused.insert(0, (cache_root, "the dataset cache, read-only to the unit (hf_loader_cache_root)"))
    if refused:
        top, why = refused[0]
        problems.append(f"{name} {folder!r} lies in {top}, {why}. {fix}")
    return problems
