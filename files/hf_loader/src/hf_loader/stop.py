"""Stopping `hf-train` on SIGTERM without losing more than the batch in flight.

Left to Composer, a rank exits at once on SIGTERM (its engine's handler is `sys.exit(143)`),
mid-batch, and whatever was trained since the last periodic checkpoint is lost. Here a rank
that gets SIGTERM (systemd stopping the unit, through `hf_loader.launch`) only sets a flag:
a signal handler runs between two Python bytecodes of whatever the rank is doing, possibly in the
middle of a collective, so acting there could leave the other ranks waiting in an all-reduce
that never completes. At the end of each batch, `StopOnSignal` all-reduces the flag (MAX) over
every rank, so all ranks, on every node, decide the same thing at the same batch, even when only
one of them (one host's unit) was signalled. They then call `State.stop_training()`: Composer
finishes that batch's events, and its own checkpoint saver writes the checkpoint at the
BATCH_CHECKPOINT event that follows (its interval fires at the end of training, which
`stop_training` makes now), with the same file names, `latest` symlink and timestamp as any other
checkpoint, so `autoresume` finds it. The scheduled evaluation at the end of fit is skipped: it
would read the whole validation split before the job can exit, and the unit's stop timeout is
for the checkpoint.
"""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path

from composer.core import Callback, State
from composer.loggers import Logger

from .errors import ConfigError
from .sigterm import requested


class StopOnSignal(Callback):
    """Stop every rank at the same batch once any rank received SIGTERM; Composer then checkpoints.

    `stopped_by`, `stopped_at_batch` and `resumed_from` say what happened, for the job's last line.
    """

    def __init__(self) -> None:
        self.stopped_by: str | None = None
        self.stopped_at_batch: int | None = None
        self.resumed_from: tuple[int, int] | None = None  # (batch, sample) at the start of fit

    def _agreed(self, state: State) -> int:
        import torch
        from composer.utils import dist

        flag = state.device.tensor_to_device(torch.tensor([requested() or 0], dtype=torch.int64))
        dist.all_reduce(flag, reduce_operation="MAX")
        return int(flag.item())

    def _stop(self, state: State, signum: int) -> None:
        self.stopped_by = signal.Signals(signum).name
        self.stopped_at_batch = int(state.timestamp.batch)
        state.stop_training()
        for evaluator in state.evaluators:
            evaluator.eval_interval = lambda state, event: False

    def fit_start(self, state: State, logger: Logger) -> None:
        self.resumed_from = (int(state.timestamp.batch), int(state.timestamp.sample))
        # A signal during start-up (loading the dataset, the checkpoint): stop before the first
        # batch; the checkpoint it resumed from is still the latest, nothing was trained since.
        signum = self._agreed(state)
        if signum:
            self._stop(state, signum)

    def batch_end(self, state: State, logger: Logger) -> None:
        if self.stopped_by is None:
            signum = self._agreed(state)
            if signum:
                self._stop(state, signum)


def latest_checkpoint(state: State) -> str | None:
    """The last checkpoint the checkpoint saver wrote in this process (rank 0 writes them)."""
    from composer.callbacks import CheckpointSaver

    for callback in state.callbacks:
        if isinstance(callback, CheckpointSaver) and callback.saved_checkpoints:
            return str(Path(callback.saved_checkpoints[-1]).resolve())
    return None


class SharedSaveFolder(Callback):
    """Refuse autoresume across nodes unless every node sees what rank 0 writes in save_folder.

    In a data-parallel job only rank 0 writes the checkpoint, into its own host's save_folder.
    At the next start Composer's autoresume looks for rank 0's `latest` link on every node and
    raises "Downloading the checkpoint to all nodes failed" where it is missing: a folder local
    to each host would let the first stop succeed and the restart fail. Checked at Event.INIT,
    after the process group exists and before Composer's autoresume looks; every rank raises the
    same ConfigError (exit 2), since all of them read the same gathered answer.
    """

    def __init__(self, save_folder: str) -> None:
        self.save_folder = save_folder

    def init(self, state: State, logger: Logger) -> None:
        from composer.utils import dist, format_name_with_dist

        if dist.get_world_size() == dist.get_local_world_size():
            return  # one node: its local ranks share the host's folder
        folder, token = dist.all_gather_object(
            (format_name_with_dist(self.save_folder, state.run_name), f".shared-{uuid.uuid4().hex}")
        )[0]
        probe = Path(folder) / token
        if dist.get_global_rank() == 0:
            os.makedirs(folder, exist_ok=True)
            probe.write_text("written by rank 0 of hf-train to check that every node sees it\n")
        dist.barrier()
        seen = dist.all_gather_object((os.uname().nodename, probe.exists()))
        dist.barrier()
        if dist.get_global_rank() == 0:
            probe.unlink()
        blind = sorted({node for node, exists in seen if not exists})
        if blind:
            raise ConfigError(
                f"save_folder {folder} is not shared between the job's hosts: "
                f"{', '.join(blind)} cannot see what rank 0 writes there, so autoresume would"
                " not find rank 0's checkpoint after a restart",
                path=folder,
                remedy="set save_folder to a folder every host of the job mounts (a shared"
                " filesystem), or train on one host (hf_loader_train_multi_node: false)",
            )


def signal_files_per_node() -> None:
    """Give each node its own autoresume signal file, so that a save_folder the nodes share works.

    Composer 0.32.1's autoresume (Trainer._get_autoresume_checkpoint) has local rank 0 of every
    node write a signal file into save_folder, wait on it and remove it, named by
    `dist.get_node_signal_file_name()`, which broadcasts rank 0's name, node 0's, to every rank.
    In a folder the nodes share (what multi-node autoresume needs) they all write and remove the
    same file, and the second node's `os.remove` raises FileNotFoundError at every start of the
    job (seen in the lab: rank 1 exits 5 before the first batch). The name keeps its random part,
    the same on every rank as the wait needs, with the node's own rank in place of node 0's.
    """
    from composer.utils import dist

    composers = dist.get_node_signal_file_name
    if getattr(composers, "per_node", False):
        return

    def per_node(rng=None) -> str:
        name = composers(rng)
        head, marker, tail = name.partition("_signal_file_node")
        _, underscore, random_part = tail.partition("_")
        if not (marker and underscore):
            return name  # another Composer's naming: left as it is
        return f"{head}{marker}{dist.get_node_rank()}_{random_part}"

    per_node.per_node = True
    dist.get_node_signal_file_name = per_node
