"""Composer's launcher, made to stop its ranks cleanly on SIGTERM: what hf-train@.service runs.

`python -m hf_loader.launch --stop-timeout SECONDS COMPOSER_ARGS...` runs `composer COMPOSER_ARGS`
with two differences, both about `systemctl stop` (KillMode=mixed: SIGTERM to this process only):

- Composer's launcher has no SIGTERM handling of its own; importing composer gives it the
  engine's handler, `sys.exit(143)`. The SystemExit lands in the launcher's catch-all `except:`,
  which prints it as a crash and then runs `_cleanup_processes`: SIGTERM to every rank, a wait,
  SIGKILL for the ranks still running. Here SIGTERM is turned, once, into the KeyboardInterrupt
  the launcher handles as a request to stop (no traceback); a second SIGTERM is ignored rather
  than cutting short the wait for the ranks' checkpoints.
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
    from composer.cli import launcher

    launcher.CLEANUP_TIMEOUT = datetime.timedelta(seconds=args.stop_timeout)
    signal.signal(signal.SIGTERM, _interrupt_once)  # after the import: it installs the engine's
    sys.argv = ["composer", *composer_args]
    return launcher.main()


if __name__ == "__main__":
    sys.exit(main())
