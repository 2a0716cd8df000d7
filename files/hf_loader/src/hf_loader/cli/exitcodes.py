"""Every exit code of the package's CLIs, and what each one means to each CLI.

The one source for: the codes the modules return (`ExitCode`), the exit-code part of each
CLI's --help (`CliExitCodes.epilog`) and the exit-code tables of the package README
(`CliExitCodes.markdown`, written and checked by `python -m hf_loader.cli.reference`).
The Ansible roles read these numbers: a code's number never changes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ExitCode(enum.IntEnum):
    READY = 0
    INTERNAL = 1
    USAGE = 2
    NOT_CACHED = 3
    INCOMPLETE = 4
    ENVIRONMENT = 5
    LOADING = 6
    GATE_CLOSED = 7  # --require-ready: no valid report, or the last test was not ready
    MANIFEST = 8  # hf-cache-manifest: the manifest file is missing/invalid or cannot be written
    TRANSFER = 9  # hf-cache-seed: rsync failed, or no progress for too long
    UPSTREAM = 10  # hf-cache-seed: the upstream copy failed or is of another manifest
    # hf-cache-seed stopped by a signal: 128 + the signal's number, as a shell says.
    STOPPED_SIGINT = 130
    STOPPED_SIGTERM = 143
    # The GPU check's names for the same numbers (aliases: NO_CUDA is NOT_CACHED).
    PASSED = 0
    NO_CUDA = 3
    MISSING_GPUS = 4
    GPU_FAILED = 5

    def __str__(self) -> str:  # "3", never "ExitCode.NOT_CACHED", on every Python
        return str(self.value)


# A code a shell reports for a process ended by a signal: this plus the signal's number.
SIGNAL_EXIT_BASE = 128


@dataclass(frozen=True)
class Meaning:
    """What one code (or codes with one meaning) means to one CLI.

    help: the --help text, its lines as printed (None: not in --help); readme: the cells of
    the README table after the code (empty: not in the README table)."""

    codes: tuple[ExitCode, ...]
    help: str | None
    readme: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return ", ".join(str(int(code)) for code in self.codes)


@dataclass(frozen=True)
class CliExitCodes:
    """One CLI's exit codes. style "table": a line a code under `header`; "inline": the codes
    in one sentence after `header`, separated by `separator` (a row that would pass
    `width` columns starts a new line)."""

    prog: str
    header: str
    meanings: tuple[Meaning, ...]
    footer: str = ""
    style: str = "table"
    separator: str = "; "
    end: str = ""
    width: int = 100
    readme_columns: tuple[str, ...] = ("meaning",)

    @property
    def codes(self) -> set[int]:
        return {int(code) for meaning in self.meanings for code in meaning.codes}

    def epilog(self) -> str:
        """The exit-code part of --help."""
        shown = [m for m in self.meanings if m.help is not None]
        if self.style == "inline":
            text = self.header
            for i, meaning in enumerate(shown):
                row = f"{meaning.label} {meaning.help}"
                if i:
                    last_line = text.rsplit("\n", 1)[-1]
                    first_line = row.split("\n", 1)[0]
                    glue = self.separator.rstrip()
                    fits = len(last_line) + len(self.separator) + len(first_line) <= self.width
                    text += self.separator if fits else glue + "\n"
                text += row
            lines = [text + self.end]
        else:
            lines = [self.header]
            for meaning in shown:
                first, *rest = meaning.help.split("\n")
                lines.append(f"{meaning.label:>3}  {first}")
                lines.extend(f"     {line}" for line in rest)
        if self.footer:
            lines.append(self.footer)
        return "\n".join(lines)

    def markdown(self) -> str:
        """The README table."""
        rows = [m for m in self.meanings if m.readme]
        rows.sort(key=lambda m: int(m.codes[0]))
        header = ("exit", *self.readme_columns)
        lines = [_markdown_row(header), _markdown_row(["---"] * len(header))]
        lines.extend(_markdown_row([meaning.label, *meaning.readme]) for meaning in rows)
        return "\n".join(lines)


def _markdown_row(cells) -> str:
    return " ".join(["|", *(f"{cell} |" if cell else "|" for cell in cells)])


E = ExitCode

CACHE_TEST = CliExitCodes(
    prog="hf-cache-test",
    header="exit codes:",
    readme_columns=("meaning", "typical fix"),
    meanings=(
        Meaning(
            (E.READY,),
            "ready: environment sane, a complete copy found, batches loaded\n"
            "(warnings, e.g. a broken copy passed over, do not change it)",
            (
                "ready: environment sane, complete copy found, batches loaded (warnings do "
                "not change it)",
                "",
            ),
        ),
        Meaning(
            (E.INTERNAL,),
            "internal error (a bug: please report it with the output)",
            (
                "internal error (a bug): every cause in the host (a permission, a full disk, "
                "a missing folder, a link loop, no home folder) has its own code below",
                "report it with the output",
            ),
        ),
        Meaning(
            (E.USAGE,),
            "usage error (bad arguments, config file, dataset id or --revision; a\n"
            "--require-mount PATH that is neither the cache root nor one of its parents;\n"
            "a --report or --metrics-dir folder that is missing, not writable or in a\n"
            "cache: checked before the test)",
            (
                "usage error: bad arguments or config file, a count out of range, an id that "
                "cannot be a Hub id, a `--revision` that cannot name a ref, a `--require-mount` "
                "PATH that is neither the cache root nor above it, a `--report` or "
                "`--metrics-dir` folder that is missing, not writable or inside a cache "
                "(checked before the test), a bad `--max-age`",
                "see `--help`; the near miss shown; pass the volume's mount point; create the "
                "output folder",
            ),
        ),
        Meaning(
            (E.NOT_CACHED,),
            "not cached: no copy of the dataset id in the Arrow or hub cache",
            (
                "not cached: no copy of this id in the Arrow or hub cache",
                "use the near-miss id shown, or copy the dataset to the cache volume",
            ),
        ),
        Meaning(
            (E.INCOMPLETE,),
            "incomplete or corrupt: a copy exists but files are missing, truncated,\n"
            "dangling, unreadable (a permission fix), not regular files (a folder where\n"
            "a shard belongs), links out of the copy, a ref that is not one commit inside\n"
            "snapshots/, or its metadata is malformed",
            (
                "incomplete or corrupt: missing/truncated/unreadable files or folders (any "
                "EACCES: a permission finding), dangling blob links or refs, a ref that is not "
                "one 40-hex commit or leads out of `snapshots/`, a link out of the copy, a "
                "FIFO, device or folder in place of a file, malformed metadata, only an "
                "interrupted `*.incomplete` copy",
                "restore the files named; for permission problems only, chmod/chown",
            ),
        ),
        Meaning(
            (E.ENVIRONMENT,),
            "environment misconfigured: the --require-mount PATH is not a mount point\n"
            "(the dataset volume is not mounted: reported first, cache not checked),\n"
            "cache variables point to missing/unreadable folders (while the dataset is\n"
            "in no other), HF_HOME is not a folder, offline mode is switched off\n"
            "(a false HF_DATASETS_OFFLINE), no usable scratch space (TMPDIR full: the\n"
            "working folder is never used instead), or the report cannot be written",
            (
                "environment misconfigured: the `--require-mount` PATH is not a mount point "
                "(the dataset volume is not mounted; the cache is then not checked), a cache "
                "variable points to a missing folder (and the dataset is in no other) or an "
                "unreadable one, `HF_HOME` is a file, a cache folder that cannot be listed (a "
                "link loop), no cache folder at all, no home folder to find the default cache "
                "in (`HF_HOME` unset for a user with no `HOME` and no passwd entry), offline "
                "mode switched off (`HF_DATASETS_OFFLINE` holding a false value), no usable "
                "scratch space (`TMPDIR` full or read-only), or the report or metrics file "
                "could not be written after the test",
                "mount the volume (`mount PATH`; `systemctl status` its mount unit, or rerun "
                "the dataset_volume role) / fix the variable / set `HF_DATASETS_OFFLINE=1` / "
                "point `TMPDIR` at free space / set `HF_HOME`",
            ),
        ),
        Meaning(
            (E.LOADING,),
            "loading failed: the cache looked complete but the DataLoader failed",
            (
                "loading failed: the files look complete but batches do not decode",
                "run with `--deep`, restore what it names",
            ),
        ),
        Meaning(
            (E.GATE_CLOSED,),
            "--require-ready only: no report at FILE, or not a valid, consistent\n"
            "report of this host (host name, machine id), one others could have\n"
            "written, or one older than --max-age (a valid report that is not ready\n"
            "gives its own exit code, 1-6)",
            (
                "`--require-ready` only: no report at FILE, or not a valid and consistent one, "
                "one of another host (host name, machine id), one other accounts could have "
                "written, one older than `--max-age` or dated in the future",
                "run the cache test on this host",
            ),
        ),
        Meaning(
            (E.MANIFEST,),
            None,
            (
                "`hf-cache-manifest` only: the manifest FILE missing, unreadable, not a valid "
                "manifest or of a newer version (`verify`); its folder missing or not writable "
                "(`write`)",
                "pass the manifest `write` produced; create the output folder",
            ),
        ),
    ),
    footer="when several stages fail, the code is that of the first: environment, cache, "
    "loading\n--json prints one JSON object in every case, usage and internal errors included",
)

CACHE_MANIFEST = CliExitCodes(
    prog="hf-cache-manifest",
    header="exit codes (the scheme of hf-cache-test):",
    readme_columns=("`write`", "`verify`"),
    meanings=(
        Meaning(
            (E.READY,),
            "write: manifest written; verify: the copy matches (extra files are warnings)",
            ("manifest written", "the copy matches (extras are warnings)"),
        ),
        Meaning(
            (E.INTERNAL,),
            "internal error (a bug: please report it with the output)",
            ("internal error (a bug)", "internal error (a bug)"),
        ),
        Meaning(
            (E.USAGE,),
            "usage error (bad arguments, a dataset id that cannot be a Hub id, or a manifest\n"
            "named inside a cache folder)",
            (
                "usage error; a bad id; `--output` inside a cache folder or a folder",
                "usage error",
            ),
        ),
        Meaning(
            (E.NOT_CACHED,),
            "write: not cached, no copy of the dataset id in the Arrow or hub cache",
            ("not cached (the cache test's finding)", ""),
        ),
        Meaning(
            (E.INCOMPLETE,),
            "write: the cache test finds no complete copy (its own findings are shown), or a\n"
            "file cannot be manifested (unreadable, a FIFO, a symlink out of the copy);\n"
            "verify: a file missing, of the wrong type, size, sha256 (--deep) or symlink\n"
            "target, unreadable, or (--strict) an extra file",
            (
                "the cache test finds no complete copy (its findings shown); a file that "
                "cannot be manifested (unreadable, a FIFO, a symlink out of the copy, a name "
                "that is not UTF-8 or holds a control character)",
                "a mismatch; an extra with `--strict`",
            ),
        ),
        Meaning(
            (E.ENVIRONMENT,),
            "environment misconfigured (write: as hf-cache-test; verify: the root is not a "
            "folder);\n"
            "the host refused an operation: read-only, full, permission denied, I/O error",
            (
                "environment misconfigured (the cache test's finding); the host refused an "
                "operation (read-only, full, permission, I/O: named, with the fix)",
                "`--root` not a folder; a needed cache folder missing; the host refused an "
                "operation",
            ),
        ),
        Meaning(
            (E.MANIFEST,),
            "the manifest: verify's FILE missing, unreadable or not a valid manifest (a "
            "symlink\n"
            "entry leading out of its dataset folder included; or of a\n"
            "newer version); write: its folder missing or not writable",
            (
                "the output folder missing or not writable",
                "FILE missing, unreadable, not a valid manifest (a symlink entry whose target "
                "is absolute or leaves its dataset folder included), or a newer "
                "`manifest_version`",
            ),
        ),
    ),
    footer="--json prints one JSON object in every case, usage and internal errors included",
)

CACHE_SEED = CliExitCodes(
    prog="hf-cache-seed",
    header="exit codes:",
    meanings=(
        Meaning(
            (E.READY,),
            "done: status: the root holds a copy that matches the manifest; pull, push,\n"
            "finish: staging holds one (state verified); publish: published",
            ("done (`status`: the root's copy matches)",),
        ),
        Meaning(
            (E.INTERNAL,),
            "internal error (a bug: please report it with the output)",
            ("internal error (a bug)",),
        ),
        Meaning((E.USAGE,), "usage error", ("usage error",)),
        Meaning(
            (E.INCOMPLETE,),
            "status: the root's copy does not match (the files are named); finish: staging\n"
            "does not match",
            (
                "`status`: the root's copy does not match (the files named); `finish`: staging "
                "does not",
            ),
        ),
        Meaning(
            (E.ENVIRONMENT,),
            "the cache root is not a folder (the volume is not mounted); or it, its seeding\n"
            "folder .hf-seed or a folder in staging is unsafe to write as root: a symlink, "
            "not\n"
            "root's, writable by others; or staging holds a symlink out of its dataset "
            "folder,\n"
            "a device or a FIFO; or a command that writes finds the root on a read-only "
            "mount,\n"
            "a full filesystem, a permission denied or an I/O error (the message names the "
            "path\n"
            "and the fix; status --record on a read-only root answers and records nothing)",
            (
                "the cache root is not a folder (the volume is not mounted), or it, "
                "`.hf-seed` or staging is unsafe (a symlink, not root's, writable by others; "
                "a link out, a device); or a command that writes finds the root on a "
                "read-only mount, the filesystem full, a permission denied or an I/O error "
                "(named, with the fix). `status --record` on a read-only root still answers "
                "and records nothing (`not_recorded` says why)",
            ),
        ),
        Meaning(
            (E.MANIFEST,),
            "the manifest is missing, unreadable or not valid",
            (
                "the manifest is missing, unreadable or not valid (a name that is not UTF-8 "
                "or holds a control character; a symlink entry whose target is absolute or "
                "leaves its dataset folder)",
            ),
        ),
        Meaning(
            (E.TRANSFER,),
            "transfer failed: rsync failed ATTEMPTS times, or nothing arrived for STALL "
            "seconds\n"
            "(rerun: it resumes)",
            (
                "transfer failed: rsync failed `--attempts` times (its own complaint shown), "
                "or no file arrived for `--stall-timeout` s; rerun, it resumes",
            ),
        ),
        Meaning(
            (E.UPSTREAM,),
            "the upstream cannot be used: it failed its own copy, holds another manifest's, "
            "or\n"
            "sent a file whose sha256 does not match the manifest; publish: staging does not\n"
            "match the manifest (sizes, sha256, symlink targets: the files named are removed)",
            (
                "the upstream cannot be used: it failed its own copy, holds another manifest's "
                "copy, or sent a file whose sha256 does not match; `publish`: staging does not "
                "match the manifest (the files named are removed)",
            ),
        ),
        Meaning(
            (E.STOPPED_SIGINT, E.STOPPED_SIGTERM),
            "stopped by Ctrl-C (SIGINT) or SIGTERM: rsync was stopped as by Ctrl-C and its\n"
            "partial files kept (rerun: it resumes)",
            (
                "stopped by Ctrl-C or SIGTERM: rsync stopped as by Ctrl-C, its partial files "
                "kept; rerun, it resumes",
            ),
        ),
    ),
    footer="--json prints one JSON object in every case, a stopped run's included",
)

TRAIN = CliExitCodes(
    prog="hf-train",
    header="exit codes: ",
    style="inline",
    end=".",
    meanings=(
        Meaning(
            (E.READY,),
            "trained, or stopped by SIGTERM (checkpoint written with save_folder)",
            ("trained, or stopped by SIGTERM (checkpoint written when `save_folder` is set)",),
        ),
        Meaning(
            (E.USAGE,),
            "bad config file or flag (autoresume without save_folder or run_name, too)",
            (
                "bad config file or flag, autoresume without `save_folder` or `run_name`, a "
                "multi-node autoresume whose `save_folder` is not shared",
            ),
        ),
        Meaning((E.NOT_CACHED,), "dataset not cached", ("dataset not cached",)),
        Meaning(
            (E.INCOMPLETE,),
            "cached copy incomplete or corrupt",
            ("cached copy incomplete or corrupt",),
        ),
        Meaning(
            (E.ENVIRONMENT,),
            "the host refused an operation (a read-only or full\n"
            "checkpoint folder, a permission, an I/O error: named, with the fix)",
            (
                "the host refused an operation (a read-only or full checkpoint folder, a "
                "permission, an I/O error: named, with the fix)",
            ),
        ),
        Meaning(
            (E.INTERNAL,),
            "anything else (a bug,\ntraceback printed)",
            ("anything else (a bug, traceback printed)",),
        ),
    ),
    footer="Run hf-cache-test first: it also checks the environment (exit 5) and loading (6).",
)

GPU_CHECK = CliExitCodes(
    prog="python -m hf_loader.gpu_check",
    header="exit codes: ",
    style="inline",
    separator=", ",
    meanings=(
        Meaning((E.PASSED,), "passed", ("every GPU passed",)),
        Meaning((E.INTERNAL,), "internal", ("internal error (a bug: the JSON says which)",)),
        Meaning((E.USAGE,), "usage", ("usage error (a bad option)",)),
        Meaning(
            (E.NO_CUDA,),
            "no CUDA",
            (
                "no CUDA: torch is missing, is a CPU build, or sees no GPU (driver not loaded, "
                "no device): never a skip",
            ),
        ),
        Meaning(
            (E.MISSING_GPUS,),
            "fewer GPUs than expected",
            ("torch sees fewer GPUs than `--expect-gpus` (the driver report's count from sysfs)",),
        ),
        Meaning(
            (E.GPU_FAILED,),
            "a GPU failed",
            ("a GPU failed: a wrong product, a pattern read back wrong, or a CUDA error on it",),
        ),
    ),
)

ALL = (CACHE_TEST, CACHE_MANIFEST, CACHE_SEED, TRAIN, GPU_CHECK)
