"""hf-cache-seed: fill a cache root with a verified copy of a manifest, and publish it.

Run by playbooks/seed.yml on each host (status, pull, finish, publish; prepare and fail
for a push) and on the controller (push). Every subcommand prints one JSON object with
--json, errors included. See `hf_loader.seed` for the folders and states.
"""

from __future__ import annotations

import argparse
import signal
import sys
from dataclasses import asdict
from pathlib import Path

from . import seed as sd
from .cli import output
from .cli.exitcodes import CACHE_SEED, ExitCode
from .errors import (
    HFLoaderError,
    StoppedError,
)
from .manifest import load_manifest

PROG = "hf-cache-seed"


def _verify_dict(report) -> dict:
    d = report.to_dict()
    d["mismatches"] = d["mismatches"][:50]
    d["extras"] = d["extras"][:50]
    return d


def status(args, doc, out: dict) -> int:
    seed = sd.SeedRoot(args.root)
    seed.require_folder()
    record = args.record and not seed.read_only()
    if args.record and not record:
        out["not_recorded"] = (
            f"the cache root {args.root} is on a read-only mount: nothing is recorded (a "
            "read-only copy still serves as a plain source)"
        )
    if record:  # a writer: first undo a publish stopped between its two renames
        out["recovered"] = seed.recover(doc)
    report = seed.verify_published(doc, deep=args.deep)
    state = seed.read_state()
    out["verify"] = _verify_dict(report)
    out["recorded"] = False
    mid = sd.manifest_id(doc)
    if (
        report.ok
        and record
        and (not state or (state.manifest_id, state.state) != (mid, "published"))
    ):
        state = seed.write_state("published", mid)
        out["recorded"] = True
    out["state"] = asdict(state) if state else None
    out["ok"] = report.ok
    return 0 if report.ok else ExitCode.INCOMPLETE


def prepare(args, doc, out: dict) -> int:
    seed = sd.SeedRoot(args.root)
    seed.prepare(doc)
    out["todo"] = sd._todo(seed.verify_staging(doc, deep=args.deep))
    return 0


def pull(args, doc, out: dict) -> int:
    upstream = sd.Upstream(args.source, args.rsh, args.bwlimit, args.io_timeout)
    result = sd.pull(
        sd.SeedRoot(args.root),
        doc,
        upstream,
        deep=args.deep,
        poll=args.poll,
        stall_timeout=args.stall_timeout,
        attempts=args.attempts,
        log=lambda m: print(f"{PROG}: {m}", file=sys.stderr, flush=True),
    )
    out["result"] = asdict(result)
    return 0


def push(args, doc, out: dict) -> int:
    remote = sd.Remote(
        args.to,
        args.rsh,
        str(args.root),
        args.remote_manifest,
        args.remote_command,
        args.rsync_path,
    )
    result = sd.push(
        doc,
        args.source,
        remote,
        bwlimit_kbps=args.bwlimit,
        deep=args.deep,
        attempts=args.attempts,
        log=lambda m: print(f"{PROG}: {m}", file=sys.stderr, flush=True),
    )
    out["result"] = asdict(result)
    return 0


def finish(args, doc, out: dict) -> int:
    report = sd.finish(sd.SeedRoot(args.root), doc, deep=args.deep)
    out["verify"] = _verify_dict(report)
    return 0 if report.ok else ExitCode.INCOMPLETE


def publish(args, doc, out: dict) -> int:
    out["published"] = sd.SeedRoot(args.root).publish(doc)
    return 0


def fail(args, doc, out: dict) -> int:
    sd.mark_failed(sd.SeedRoot(args.root), doc, args.message)
    return 0


COMMANDS = {
    "status": (status, "does the root hold a copy matching the manifest (--record: say so)"),
    "prepare": (prepare, "create staging for the manifest; print the files still to copy"),
    "pull": (pull, "copy into staging from an upstream until it matches; state verified"),
    "push": (push, "(controller) copy a local complete copy into a host's staging"),
    "finish": (finish, "verify staging after a push: state verified, or failed"),
    "publish": (publish, "move the verified staging folders into the root, read-only"),
    "fail": (fail, "record that this host's copy failed (downstream hosts stop waiting)"),
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Seed a cache root with a verified copy of a manifest "
        "(hf-cache-manifest write), over rsync, and publish it by rename.",
        epilog=CACHE_SEED.epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    sub.required = True
    for name, (_fn, summary) in COMMANDS.items():
        q = sub.add_parser(
            name,
            help=summary,
            description=summary,
            epilog=CACHE_SEED.epilog(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        q.add_argument("--manifest", type=Path, required=True, help="the manifest file")
        q.add_argument(
            "--root",
            type=Path,
            required=True,
            help="the cache root (holding datasets/ and hub/)"
            + ("; on the host pushed to" if name == "push" else ""),
        )
        q.add_argument("--json", action="store_true", help="one JSON object on stdout")
        if name in ("status", "prepare", "pull", "push", "finish"):
            q.add_argument(
                "--deep",
                action="store_true",
                help="also compare every file's sha256 (reads the whole copy); pull hashes "
                "every file it receives and publish every file it publishes in any case",
            )
        if name == "status":
            q.add_argument(
                "--record",
                action="store_true",
                help="when it matches, record the state `published`",
            )
        if name in ("pull", "push"):
            q.add_argument("--rsh", default="", help="the ssh command line rsync uses")
            q.add_argument(
                "--bwlimit",
                type=int,
                default=0,
                metavar="KBPS",
                help="cap each transfer at KBPS KiB/s (0: none)",
            )
            q.add_argument(
                "--attempts",
                type=int,
                default=3,
                help="rsync failures before giving up (default 3)",
            )
        if name == "pull":
            q.add_argument(
                "--from",
                dest="source",
                required=True,
                metavar="BASE",
                help="the upstream: USER@HOST: (its cache root through rrsync) "
                "or a local folder/ (a mounted export)",
            )
            q.add_argument(
                "--poll",
                type=float,
                default=2.0,
                help="seconds between passes while the upstream is receiving",
            )
            q.add_argument(
                "--stall-timeout",
                type=float,
                default=600.0,
                help="give up when no file arrived for this many seconds",
            )
            q.add_argument(
                "--io-timeout", type=int, default=60, help="rsync's --timeout: seconds without I/O"
            )
        if name == "push":
            q.add_argument(
                "--source",
                type=Path,
                required=True,
                help="the complete copy here (holding datasets/ and hub/)",
            )
            q.add_argument("--to", required=True, metavar="USER@HOST", help="the host")
            q.add_argument(
                "--remote-manifest", required=True, help="the manifest's path on that host"
            )
            q.add_argument(
                "--remote-command",
                default="sudo -n hf-cache-seed",
                help="how to run hf-cache-seed there",
            )
            q.add_argument(
                "--rsync-path",
                default="sudo -n rsync",
                help="how to run rsync there (rsync's --rsync-path)",
            )
        if name == "fail":
            q.add_argument("--message", required=True)
    return p


def _stop_on_signals(root: Path) -> None:
    """Ctrl-C and SIGTERM (a stopped job) unwind as StoppedError, once: rsync is interrupted
    as by Ctrl-C and waited for (its partial files kept), then the outcome is printed."""

    def stop(signum, _frame):
        for each in (signal.SIGINT, signal.SIGTERM):
            signal.signal(each, signal.SIG_IGN)
        raise StoppedError(signal.Signals(signum).name, signum, path=str(root))

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parser().parse_args(argv)
    except SystemExit as e:
        return output.parser_exit_code(e)
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.getsignal(signum) for signum in signals}
    try:
        out = _run(args)
        # The outcome is printed whatever arrives now: a second Ctrl-C does not cut it short.
        for signum in signals:
            signal.signal(signum, signal.SIG_IGN)
        _print(args, out)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return out["exit_code"]


def _run(args) -> dict:
    out: dict = {"command": args.command}
    try:
        _stop_on_signals(args.root)
        doc = load_manifest(args.manifest)
        out["manifest_id"] = sd.manifest_id(doc)
        out["dataset"] = doc["dataset"]
        code = COMMANDS[args.command][0](args, doc, out)
        out["error"] = None
    except Exception as e:  # noqa: BLE001 - reported, never a bare traceback
        found = e if isinstance(e, HFLoaderError) else output.unexpected(e, within=args.root)
        code = found.exit_code
        out["error"] = found.to_dict()
    out["exit_code"] = code
    return out


def _print(args, out: dict) -> None:
    code = out["exit_code"]
    if args.json:
        output.emit(output.as_json(out, indent=1), flush=True)
    elif out["error"]:
        output.emit(
            f"{PROG} {args.command}: FAILED (exit {code})\n{out['error']['message']}"
            + (f"\nfix: {out['error']['remedy']}" if out["error"].get("remedy") else ""),
            stream=sys.stderr,
        )
    else:
        verify = out.get("verify") or {}
        summary = verify.get("summary") or out.get("result") or out.get("published")
        print(f"{PROG} {args.command}: {'ok' if code == 0 else 'DOES NOT MATCH'}: {summary}")
        for m in verify.get("mismatches", []) if code else []:
            print(f"  - {m['path']}: {m['message']}")


if __name__ == "__main__":
    sys.exit(main())
