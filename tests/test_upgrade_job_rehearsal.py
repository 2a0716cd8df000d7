"""The job rehearsal's reading of the hosts (scripts/upgrade_job_rehearsal.py) and the lab's shared
folder (scripts/lab.py LAB_SHARED), without a lab: journal lines as the hosts write them."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import upgrade_job_rehearsal as rehearsal  # noqa: E402

UNIT = rehearsal.UNIT
DESCRIPTION = "Composer ResNet-50 training default from the offline Hugging Face cache"


def systemd(kind: str) -> str:
    """systemd 252's own line for a unit's stop and start, as journalctl -u shows it."""
    return (
        f"{kind} {UNIT} - {DESCRIPTION}..." if kind in ("Stopping", "Starting") else f"{kind} {UNIT} - {DESCRIPTION}."
    )


def test_the_drain_and_the_downtime_are_read_from_both_hosts_journals():
    # Host 1 is stopped first, host 2 0.4 s later; both exit after their checkpoint; both start
    # again after the reboots. Lines before the rollout (the job's first start) do not count.
    events = {
        "h1": rehearsal.unit_events(
            [(90.0, systemd("Started")), (100.0, systemd("Stopping")), (104.5, systemd("Stopped")),
             (160.0, systemd("Started"))]
        ),
        "h2": rehearsal.unit_events(
            [(91.0, systemd("Started")), (100.4, systemd("Stopping")), (106.0, f"{UNIT}: Deactivated successfully."),
             (106.1, systemd("Stopped")), (161.5, systemd("Started"))]
        ),
    }  # fmt: skip
    figures = rehearsal.drain_figures(events, since=95.0)
    assert figures["sigterm_spread_s"] == 0.4
    assert figures["drain_s"] == 6.1  # SIGTERM on the first host to the last unit inactive
    assert figures["down_s"] == 61.5  # SIGTERM to the last unit active again


def test_a_job_not_started_again_has_no_downtime():
    events = {"h1": rehearsal.unit_events([(100.0, systemd("Stopping")), (103.0, systemd("Stopped"))])}
    assert "down_s" not in rehearsal.drain_figures(events, since=0.0)


def test_another_units_lines_are_not_taken_for_the_jobs():
    other = "hf-train@other.service"
    events = rehearsal.unit_events([(1.0, f"Stopping {other} - x..."), (2.0, f"Started {other} - x.")])
    assert events == {"stopping": [], "stopped": [], "started": []}


def test_hf_trains_last_lines_give_the_stop_batch_and_the_resume_point():
    rank0 = (
        "hf-train: stopped by SIGTERM after batch 9, checkpoint /data/checkpoints/rehearsal/ep0-ba9-rank0.pt"
        " (rank 0 of 2, DistributedSampler with 192 samples, 9 batches, 144 samples, resumed from batch 4 sample 64)"
    )
    rank1 = (
        "hf-train: stopped by SIGTERM after batch 9, checkpoint written by rank 0"
        " (rank 1 of 2, DistributedSampler with 192 samples, 9 batches, 144 samples, resumed from batch 4 sample 64)"
    )
    found = rehearsal.stopped_lines([(1.0, "[batch=9/100000]:"), (2.0, rank0), (3.0, rank1)])
    assert [(m[1], m[2], m[3]) for m in found] == [
        ("9", "checkpoint /data/checkpoints/rehearsal/ep0-ba9-rank0.pt", "0"),
        ("9", "checkpoint written by rank 0", "1"),
    ]
    # A rank that ended without SIGTERM (done, or crashed) gives no stop line.
    assert rehearsal.stopped_lines([(1.0, "hf-train: done (rank 0 of 2, x, 5 batches)")]) == []


def test_composers_console_gives_the_batches_trained():
    lines = [(1.0, "[batch=5/100000]:"), (1.1, "\t Train time/batch: 4"), (2.0, "[batch=6/100000]:")]
    assert rehearsal.console_batches(lines) == [(1.0, 5), (2.0, 6)]


@pytest.mark.skipif(os.geteuid() != 0, reason="scripts/lab.py runs as root")
@pytest.mark.parametrize("shared", ["../escape:/data/checkpoints", "shared:data/checkpoints", ":/data/checkpoints"])
def test_a_shared_folder_outside_the_lab_or_a_relative_path_is_refused_before_anything_is_made(tmp_path, shared):
    # The attack: LAB_SHARED=../escape would bind-mount a folder of this machine outside the lab
    # into every host, writable. lab.py must refuse it before it records or creates anything.
    lab_dir = tmp_path / "lab"
    env = dict(os.environ, LAB_DIR=str(lab_dir), LAB_SHARED=shared, LAB_PREFIX="never-made-", LAB_BASE_PORT="2990")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "lab.py"), "up", "--hosts", "1", "--no-engine"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "LAB_SHARED must be FOLDER:/PATH" in proc.stderr and shared in proc.stderr
    assert not (tmp_path / "escape").exists()
    assert not (lab_dir / "state.json").exists()
    assert not (lab_dir / "shared").exists()
