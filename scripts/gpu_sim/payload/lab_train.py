#!/usr/bin/python3
"""lab-train: the lab's stand-in for a training job (lab-train@<instance>.service).

Why it exists: the light software stack of the multi-host lab runs (the benchmarks' labs)
has no Composer, so the real hf-train@ job cannot run there; runbooks that must find a
training job on a host (a reboot that waits for it, or stops it) start this one instead.
It only reads: every second it reads the next file of the dataset cache under
LAB_TRAIN_DATA (default /data/hf, the cache root), as a data loader would, and says so
once after the first file ("first step done"). On SIGTERM (a
stop, or a reboot that stops it) it writes a "checkpoint" to
$STATE_DIRECTORY/checkpoint (/var/lib/lab-train/<instance>/checkpoint: when, how many
steps, the last file read) and exits 0. Without a single readable file under the cache
root (volume not mounted) it fails at once, as a real job would.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

CHUNK = 1 << 20


def cache_files(root: Path) -> list[Path]:
    files = []
    for path in sorted(root.rglob("*")):
        if path.suffix == ".lock" or "lost+found" in path.parts:
            continue
        if path.is_file() and os.access(path, os.R_OK):
            files.append(path)
    return files


def checkpoint_text(instance: str, steps: int, last: str, when: float) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
    return f"instance={instance}\nsteps={steps}\nlast_file={last}\ncheckpointed_at={stamp}\n"


def main(argv: list[str]) -> int:
    instance = argv[0] if argv else "default"
    root = Path(os.environ.get("LAB_TRAIN_DATA", "/data/hf"))
    state = Path(os.environ.get("STATE_DIRECTORY", f"/var/lib/lab-train/{instance}"))
    stopping = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))
    files = cache_files(root)
    if not files:
        print(f"lab-train {instance}: no readable file under {root}: is the dataset volume mounted?", flush=True)
        return 1
    print(f"lab-train {instance}: reading {len(files)} files under {root}, one a second", flush=True)
    steps, last = 0, ""
    while not stopping:
        path = files[steps % len(files)]
        with path.open("rb") as handle:
            handle.read(CHUNK)
        steps, last = steps + 1, str(path)
        if steps == 1:  # once: the job really reads (a stop from now on checkpoints a step)
            print(f"lab-train {instance}: first step done, read {last}", flush=True)
        time.sleep(1)
    state.mkdir(parents=True, exist_ok=True)
    tmp = state / "checkpoint.tmp"
    tmp.write_text(checkpoint_text(instance, steps, last, time.time()))
    tmp.replace(state / "checkpoint")
    print(f"lab-train {instance}: SIGTERM after {steps} steps, checkpoint in {state / 'checkpoint'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
