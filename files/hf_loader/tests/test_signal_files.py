"""Composer's autoresume signal file in a save_folder two nodes share
(hf_loader.stop.signal_files_per_node)."""

from __future__ import annotations

import os
import random

from composer.utils import dist

from hf_loader.stop import signal_files_per_node


def _name_on_node(monkeypatch, node_rank: int) -> str:
    """The signal file name a node's local rank 0 uses; rank 0's broadcast as Composer does it
    (the random part is rank 0's: the same seed here)."""
    monkeypatch.setattr(dist, "get_node_rank", lambda: node_rank)
    monkeypatch.setattr(dist, "broadcast_object_list", lambda objects, src=0: None)
    return dist.get_node_signal_file_name(random.Random(7))


def test_two_nodes_sharing_save_folder_each_remove_their_own_signal_file(monkeypatch, tmp_path):
    # Without the fix both nodes get node 0's name: the second os.remove fails, as in the lab.
    monkeypatch.setattr(dist, "get_node_signal_file_name", dist.get_node_signal_file_name)
    signal_files_per_node()
    names = [_name_on_node(monkeypatch, node) for node in (0, 1)]
    assert names[0] != names[1]
    assert names[0].startswith("._signal_file_node0_")
    assert names[1].startswith("._signal_file_node1_")
    # The random part stays the one every rank shares.
    assert names[0].rsplit("_", 1)[1] == names[1].rsplit("_", 1)[1]
    for name in names:  # what each node's local rank 0 does in Trainer._get_autoresume_checkpoint
        (tmp_path / name).write_bytes(b"local_rank0_completed_autoresume")
    for name in names:
        os.remove(tmp_path / name)
    assert not list(tmp_path.iterdir())


def test_applied_twice_it_wraps_once(monkeypatch):
    monkeypatch.setattr(dist, "get_node_signal_file_name", dist.get_node_signal_file_name)
    signal_files_per_node()
    once = dist.get_node_signal_file_name
    signal_files_per_node()
    assert dist.get_node_signal_file_name is once
