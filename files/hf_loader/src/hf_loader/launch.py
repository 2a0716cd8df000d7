"""Composer's launcher, made to stop its ranks cleanly on SIGTERM: what hf-train@.service runs.

`python -m hf_loader.launch --stop-timeout SECONDS COMPOSER_ARGS...` runs `composer COMPOSER_ARGS`
with two differences, both about `systemctl stop` (KillMode=mixed: SIGTERM to this process only):

- Composer's launcher has no SIGTERM handling of its own; importing composer gives it the
  engine's handler, `sys.exit(143)`. The SystemExit lands in the launcher's catch-all `except:`,
  which prints it as a crash and then runs `_cleanup_processes`: SIGTERM to every rank, a wait,
  SIGKILL for the ranks still running. Here SIGTERM is turned, once, into the KeyboardInterrupt
  the launcher handles as a request to stop (no traceback); a second SIGTERM is ignored rather
  than cutting short the wait for the ranks' checkpoints.
  A SIGTERM while Composer is still being imported (seconds) is recorded, and the launcher
  then exits 0 without starting any rank.
- That wait is `CLEANUP_TIMEOUT`, 30 s whatever the unit's TimeoutStopSec says. A rank that got
  SIGTERM finishes its batch and writes a checkpoint first, which can take longer: the wait is
  `--stop-timeout` instead (the unit passes its TimeoutStopSec less a margin, so that the
  launcher, not systemd, kills a rank that is stuck, and says which).

The launcher's exit status is its ranks': 0 when every rank stopped cleanly.
"""

from __future__ import annotations

import argparse
import datetime
import signal
import sys


def _interrupt_once(signum, frame) -> None:
    # Once: a second SIGTERM must not cut short the wait for the ranks' checkpoints (the
    # launcher's wait loop treats KeyboardInterrupt as "stop waiting, SIGKILL them").
    signal.signal(signum, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hf_loader.launch",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # every other argument is Composer's: none may be taken for ours
    )
    parser.add_argument(
        "--stop-timeout",
        type=float,
        required=True,
        help="seconds the ranks get after SIGTERM before the launcher SIGKILLs them",
    )
    args, composer_args = parser.parse_known_args(argv)
    if args.stop_timeout <= 0:
        parser.error(f"--stop-timeout must be > 0 seconds (got {args.stop_timeout:g})")
    # Importing Composer takes seconds (torch) and, once its engine is imported, makes SIGTERM
    # sys.exit(143): a stop in that window would end the unit "failed" (143, or killed outright
    # before the engine's handler exists). Recorded instead, and acted on once the import is done.
    stopped_during_import: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stopped_during_import.append(signum))
    from composer.cli import launcher

    signal.signal(signal.SIGTERM, _interrupt_once)  # again: the import installed the engine's
    if stopped_during_import:
        # No rank was started: nothing to checkpoint, nothing to wait for. A clean stop (0), as
        # the ranks' own stop at start-up is (stop.StopOnSignal.fit_start).
        print(
            "hf_loader.launch: stopped by SIGTERM while starting, before any rank was started",
            file=sys.stderr,
        )
        return 0
    launcher.CLEANUP_TIMEOUT = datetime.timedelta(seconds=args.stop_timeout)
    sys.argv = ["composer", *composer_args]
    return launcher.main()


if __name__ == "__main__":
    sys.exit(main())
