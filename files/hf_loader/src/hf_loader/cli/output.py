"""How the package's CLIs print what they found and turn an error into an exit code.

Every CLI prints one outcome: a JSON document (--json; the roles parse it) or lines for a
person. `Findings` is the outcome of the CLIs that report finding by finding (hf-cache-test,
hf-cache-manifest); `unexpected` is what every CLI makes of an exception no stage expected;
`print_error` is the one-line error of the CLIs without a document (hf-train).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass

from ..errors import HFLoaderError, InternalError, environment_error
from .exitcodes import ExitCode


@dataclass
class Finding:
    level: str  # "ok", "note" (done or not done, nothing to fix), "warn", "fail"
    stage: str  # "usage", "environment", "cache", "loading", "internal", ...
    message: str
    path: str | None = None
    remedy: str | None = None
    exit_code: int = 0

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


class Findings:
    """A run's findings (`findings`) and the record of the error that stopped it (`error`).
    Its exit code is that of the first failing stage in STAGE_ORDER, 0 when none failed."""

    STAGE_ORDER: dict[str, int] = {}
    findings: list[Finding]
    error: dict | None

    def add(self, *a, **k) -> Finding:
        f = Finding(*a, **k)
        self.findings.append(f)
        return f

    def fail(self, stage: str, err: HFLoaderError) -> None:
        """A failed finding from a typed error, which is also kept as the run's error."""
        self.add("fail", stage, err.message, err.path, err.remedy, err.exit_code)
        self.error = err.to_dict()

    def fail_unexpected(self, e: Exception, *, keep_host_error: bool) -> None:
        """What no stage expected: the host refused an operation (environment, exit 5) or a
        bug (internal, exit 1). keep_host_error: also keep the host's refusal as the error."""
        found = unexpected(e)
        stage = "internal" if isinstance(found, InternalError) else "environment"
        if keep_host_error and stage == "environment":
            self.fail(stage, found)
        else:
            self.add("fail", stage, found.message, found.path, found.remedy, found.exit_code)

    @property
    def exit_code(self) -> int:
        last = max(self.STAGE_ORDER.values(), default=0)
        fails = sorted(
            (f for f in self.findings if f.level == "fail"),
            key=lambda f: self.STAGE_ORDER.get(f.stage, last),
        )
        return fails[0].exit_code if fails else ExitCode.READY


def unexpected(e: Exception, *, within=None) -> HFLoaderError:
    """The typed error for an exception no stage expected: an OSError is the host refusing an
    operation (exit 5 naming the path, `within` when the error names none), not a bug;
    anything else is an internal error (exit 1) to report."""
    if isinstance(e, OSError):
        return environment_error(e, within=within)
    return InternalError(f"{type(e).__name__}: {e}")


def parser_exit_code(e: SystemExit) -> int:
    """argparse's exit: 0 after --help, 2 for a usage error it printed itself."""
    return int(e.code or 0)


def as_json(doc: dict, *, indent: int = 2) -> str:
    return json.dumps(doc, indent=indent, default=str)


def emit(text: str, *, stream=None, flush: bool = False, reader_may_leave: bool = False) -> None:
    """Print the outcome. reader_may_leave: a reader that left (| head) ends the output
    quietly; the exit code still says it."""
    stream = stream or sys.stdout
    try:
        print(text, file=stream, flush=flush)
    except BrokenPipeError:
        if not reader_may_leave:
            raise
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())


def print_error(prog: str, err: HFLoaderError) -> int:
    """`PROG: the error, its path and fix` on stderr; its exit code."""
    print(f"{prog}: {err}", file=sys.stderr)
    return err.exit_code
