"""`hf-cache-manifest`: the manifest of a complete cached copy, and checking a copy against it.

    hf-cache-manifest write [DATASET] --output FILE [--config C] [--revision R]
                            [--all-copies] [--deep] [--workers N] [--json]
    hf-cache-manifest verify FILE [--root DIR] [--deep] [--strict] [--workers N] [--json]

`write` runs the cache test's environment and cache stages first (as `hf-cache-test
--batches 0`): only a copy it finds complete is manifested; otherwise it refuses with the
cache test's own findings and exit code. `verify` checks a copy (the caches of this host, or
an HF_HOME-style folder given with --root) against a manifest. Neither writes into a cache.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import manifest as mf
from .cachetest import _count, _Parser, add_dataset_arguments, render
from .cli import output
from .cli.exitcodes import CACHE_MANIFEST, ExitCode
from .cli.output import Finding, Findings
from .env import CachePaths, scratch_dir
from .errors import (
    ConfigError,
    EnvironmentMisconfiguredError,
    HFLoaderError,
)

PROG = "hf-cache-manifest"


class Outcome(Findings):
    """Findings of one run, with the exit code of the first failing stage."""

    STAGE_ORDER = {
        "usage": 0,
        "environment": 1,
        "cache": 2,
        "manifest": 3,
        "verify": 3,
        "internal": 4,
    }

    def __init__(self, command: str | None) -> None:
        self.command = command
        self.findings: list[Finding] = []
        self.error: dict | None = None
        self.extra: dict = {}

    @property
    def dataset(self) -> str:
        return self.extra.get("dataset", "")

    @property
    def verdict(self) -> str:  # for the cache test's render
        return "ok" if self.exit_code == ExitCode.READY else "failed"

    def to_dict(self) -> dict:
        return {
            "tool": PROG,
            "command": self.command,
            "ok": self.exit_code == ExitCode.READY,
            "exit_code": self.exit_code,
            **self.extra,
            "findings": [f.to_dict() for f in self.findings],
            "error": self.error,
        }


# --------------------------------------------------------------------------- write


def _other_copy(args, paths: CachePaths, resolved: str) -> mf.Copy | None:
    """--all-copies: the other cache's copy of the id, checked alone by the same resolution
    (the resolved cache hidden); None when that cache holds none. Incomplete: raises."""
    from .errors import NotCachedError
    from .resolve import resolve

    hidden = scratch_dir() / "no-cache-here"  # never created: an empty cache
    if resolved == "arrow":
        alone = CachePaths(paths.hf_home, hidden, paths.hub_cache, dict(paths.sources))
    else:
        alone = CachePaths(paths.hf_home, paths.datasets_cache, hidden, dict(paths.sources))
    try:
        res = resolve(args.dataset, args.config, args.revision, paths=alone, deep=args.deep)
    except NotCachedError:
        return None
    return mf.Copy(res.source, Path(res.path))


def write(args, out: Outcome) -> None:
    from . import cachetest

    paths = CachePaths.from_env()
    cache_dirs = [paths.hf_home, paths.datasets_cache, paths.hub_cache]
    out.extra["dataset"] = args.dataset
    out.extra["output"] = str(args.output)
    out.extra["manifest"] = None
    try:
        mf.check_output_location(args.output, cache_dirs)
    except HFLoaderError as e:
        out.fail("usage", e)
        return
    test = cachetest.Result(dataset=args.dataset)
    ns = argparse.Namespace(
        dataset=args.dataset,
        config=args.config,
        revision=args.revision,
        allow_convert=False,
        deep=args.deep,
        progress=args.progress,
        batches=0,
    )
    cachetest.run(ns, test)
    # the cache test's own findings (its "no batch loaded" note aside)
    out.findings.extend(f for f in test.findings if f.stage != "loading")
    out.error = test.error
    out.extra["resolution"] = test.resolution
    if test.exit_code != ExitCode.READY:
        return
    res = test.resolution
    copies = [mf.Copy(res["source"], Path(res["path"]))]
    if args.all_copies:
        try:
            other = _other_copy(args, paths, res["source"])
        except HFLoaderError as e:
            out.fail("cache", e)
            return
        if other is None:
            other_cache = "hub" if res["source"] == "arrow" else "Arrow"
            out.add("note", "manifest", f"--all-copies: no {other_cache} copy of the id here")
        else:
            copies.append(other)
    roots = mf.CacheRoots.of(paths)
    try:
        doc = mf.build_manifest(
            args.dataset,
            res["config"],
            copies,
            roots,
            revision_requested=args.revision,
            workers=args.workers,
            progress=args.progress,
        )
        written = mf.write_manifest(doc, args.output, cache_dirs)
    except HFLoaderError as e:
        out.fail("manifest", e)
        return
    totals = doc["totals"]
    out.extra["manifest"] = {
        "path": str(written),
        **{k: doc[k] for k in ("manifest_version", "config", "revision", "copies", "roots")},
        "totals": totals,
    }
    what = " and ".join(f"{c['kind']} copy {c['path']}" for c in doc["copies"])
    out.add(
        "ok",
        "manifest",
        f"manifest of {what}: {totals['files']} files ({totals['bytes']} bytes, "
        f"{totals['hashed_files']} hashed: blobs checked against their names), "
        f"{totals['symlinks']} symlinks",
        path=str(written),
    )


# --------------------------------------------------------------------------- verify


def _roots(args) -> mf.CacheRoots:
    if args.root is not None:
        if not args.root.is_dir():
            raise EnvironmentMisconfiguredError(
                f"the root {args.root} is not a folder",
                path=str(args.root),
                remedy="pass the folder that holds the copy's datasets/ and hub/ folders",
            )
        return mf.CacheRoots.under(args.root.absolute())
    return mf.CacheRoots.of(CachePaths.from_env())


MISMATCH_FIX = {
    "unreadable": "give the user read and search access, keeping the files (chmod -R a+rX, "
    "or chown)",
    "extra": "remove it from the copy (or write a new manifest if it belongs there)",
}


def verify(args, out: Outcome) -> None:
    out.extra.update(dataset=None, manifest=str(args.file), verify=None)
    try:
        doc = mf.load_manifest(args.file)
    except HFLoaderError as e:
        out.fail("verify", e)
        return
    out.extra["dataset"] = doc["dataset"]
    try:
        roots = _roots(args)
    except HFLoaderError as e:
        out.fail("environment", e)
        return
    if args.root is None:
        for prefix in sorted({e["path"].split("/", 1)[0] for e in doc["entries"]}):
            base = roots.base(prefix)
            if not base.is_dir():
                out.fail(
                    "environment",
                    EnvironmentMisconfiguredError(
                        f"the {prefix} cache folder {base} is not a folder",
                        path=str(base),
                        remedy="mount the cache volume or fix HF_HOME/HF_DATASETS_CACHE/"
                        "HF_HUB_CACHE, or pass --root DIR",
                    ),
                )
        if out.exit_code != ExitCode.READY:
            return
    report = mf.verify_manifest(
        doc,
        roots,
        deep=args.deep,
        strict=args.strict,
        workers=args.workers,
        progress=args.progress,
    )
    out.extra["verify"] = report.to_dict()
    for m in report.mismatches:
        out.add(
            "fail",
            "verify",
            f"{mf.KIND_WORDS[m.kind]}: {m.path}"
            + ("" if m.message == m.kind else f" ({m.message})"),
            m.location or None,
            MISMATCH_FIX.get(m.kind, mf.MISMATCH_REMEDY.split(";")[0]),
            ExitCode.INCOMPLETE,
        )
    for m in report.extras:
        out.add(
            "fail" if args.strict else "warn",
            "verify",
            f"extra: {m.path} ({m.message})",
            m.location or None,
            MISMATCH_FIX["extra"],
            ExitCode.INCOMPLETE if args.strict else 0,
        )
    out.add(
        "ok" if report.ok else "fail",
        "verify",
        report.summary(),
        str(roots.datasets.parent) if args.root is None else str(args.root.absolute()),
        None if report.ok else mf.MISMATCH_REMEDY,
        ExitCode.READY if report.ok else ExitCode.INCOMPLETE,
    )


# --------------------------------------------------------------------------- CLI


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Write the manifest (path, size, sha256 of every file) of a complete "
        "cached copy of a dataset id, or check a copy against one. Never writes into a cache.",
        epilog=CACHE_MANIFEST.epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", metavar="{write,verify}")
    sub.required = True

    def common(q):
        q.add_argument(
            "--deep",
            action="store_true",
            help="write: the cache test's deep check first (rows, blob hashes); "
            "verify: also the sha256 of every file, blobs included",
        )
        q.add_argument(
            "--workers",
            type=_count(1),
            default=None,
            help="files hashed at once (default: the CPUs, at most 8)",
        )
        q.add_argument("--json", action="store_true", help="one JSON object on stdout")
        q.add_argument(
            "--no-progress", dest="progress", action="store_false", help="no progress bar"
        )

    w = sub.add_parser(
        "write",
        help="manifest a copy the cache test finds complete",
        description="Run the cache test (environment and cache stages); if it finds a "
        "complete copy, write its manifest to FILE atomically, outside the cache.",
        epilog=CACHE_MANIFEST.epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_dataset_arguments(w)
    w.add_argument(
        "-o", "--output", type=Path, required=True, metavar="FILE", help="the manifest to write"
    )
    w.add_argument(
        "--all-copies",
        action="store_true",
        help="also the other cache's copy of the id (the hub snapshot beside a complete "
        "Arrow copy); it must be complete too",
    )
    common(w)
    v = sub.add_parser(
        "verify",
        help="check a copy against a manifest",
        description="Check presence, type, size and symlink target of every entry (no file "
        "read); --deep also the sha256 of every file. Extra files under the dataset's folders "
        "are warnings, failures with --strict.",
        epilog=CACHE_MANIFEST.epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    v.add_argument("file", type=Path, metavar="FILE", help="the manifest")
    v.add_argument(
        "--root",
        type=Path,
        metavar="DIR",
        help="the copy's root, holding datasets/ and hub/ (a staging folder); default: this "
        "host's caches (HF_HOME, HF_DATASETS_CACHE, HF_HUB_CACHE)",
    )
    v.add_argument("--strict", action="store_true", help="extra files are failures (exit 4)")
    common(v)
    return p


def render_outcome(out: Outcome, header: str) -> str:
    body = render(out).splitlines()[1:-1]  # the cache test's lines, as it prints them
    code = out.exit_code
    if out.command == "write":
        verdict = "MANIFEST WRITTEN" if code == ExitCode.READY else "REFUSED: no manifest written"
    elif out.command == "verify":
        verdict = "MATCHES THE MANIFEST" if code == ExitCode.READY else "DOES NOT MATCH"
    else:
        verdict = "FAILED"
    return "\n".join([header, *body, f"{verdict} (exit {code})"])


def emit(out: Outcome, argv: list[str], as_json: bool) -> None:
    if as_json:
        output.emit(output.as_json(out.to_dict()))
    else:
        output.emit(render_outcome(out, " ".join([PROG, *argv])))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parser().parse_args(argv)
    except SystemExit as e:  # --help
        return output.parser_exit_code(e)
    except ConfigError as e:
        out = Outcome(None)
        out.fail("usage", e)
        emit(out, argv, "--json" in argv)
        return out.exit_code
    if args.json or not sys.stderr.isatty():
        args.progress = False  # a bar only for a person at a terminal
    out = Outcome(args.command)
    try:
        (write if args.command == "write" else verify)(args, out)
    except Exception as e:  # noqa: BLE001 - report, never a bare traceback
        out.fail_unexpected(e, keep_host_error=True)
    emit(out, argv, args.json)
    return out.exit_code


if __name__ == "__main__":
    sys.exit(main())
