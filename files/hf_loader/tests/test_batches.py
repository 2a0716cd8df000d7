"""The workers' ring of shared batch buffers: every batch arrives intact, buffers are reused."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader
from torch.utils.data._utils.collate import default_collate

from hf_loader import batches
from hf_loader.batches import RingBatch, RingCollate, collate_nhwc
from hf_loader.data import HFDataLoader

pytestmark = pytest.mark.skipif(not batches.RING_SUPPORTED, reason="ring only on x86_64")


def _samples(n: int) -> list:
    """Distinct uint8 images in HWC memory, as the train transform returns them."""
    return [
        (torch.full((6, 5, 3), i, dtype=torch.uint8).permute(2, 0, 1) + torch.arange(5), i)
        for i in range(n)
    ]


def _loader(cls, samples, workers=2, batch_size=4, **kw):
    return cls(
        samples,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=RingCollate(slots=4, workers=workers),
        **kw,
    )


def test_batches_equal_default_collate_while_the_consumer_keeps_them():
    samples = _samples(42)  # the last batch is smaller: its buffer is replaced
    kept = list(_loader(HFDataLoader, samples, persistent_workers=True))
    kept += list(_loader(HFDataLoader, samples, persistent_workers=True))  # a second loader
    expected = [default_collate(samples[i : i + 4]) for i in range(0, 42, 4)] * 2
    assert len(kept) == len(expected)
    for (x, y), (ex, ey) in zip(kept, expected, strict=True):
        assert torch.equal(x, ex) and torch.equal(y, ey)
        assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_shared()


def test_buffers_are_reused_once_released():
    raw = list(_released(_loader(DataLoader, _samples(64), workers=1)))
    assert all(isinstance(b, RingBatch) for b in raw)
    pointers = {b.images.untyped_storage().data_ptr() for b in raw}
    assert len(pointers) <= 4  # 16 batches in the 4 buffers of the one worker's ring


def _released(loader):
    for batch in loader:
        batch.release()
        yield batch


def test_unreleased_buffers_are_never_overwritten():
    """A consumer that keeps ring batches without releasing them: the worker takes new memory."""
    samples = _samples(40)
    raw = list(_loader(DataLoader, samples, workers=1))
    ring = [b for b in raw if isinstance(b, RingBatch)]
    assert len(ring) == 4 and len(raw) == 10  # four buffers taken, then new memory
    for i, batch in enumerate(raw):
        x, y = batch.release() if isinstance(batch, RingBatch) else batch
        ex, ey = default_collate(samples[4 * i : 4 * i + 4])
        assert torch.equal(x, ex) and torch.equal(y, ey)


def test_without_workers_or_support_batches_are_plain(monkeypatch):
    samples = _samples(8)
    assert isinstance(next(iter(_loader(DataLoader, samples, workers=0))), list)
    monkeypatch.setattr(batches, "RING_SUPPORTED", False)
    assert isinstance(next(iter(_loader(DataLoader, samples, workers=1))), list)


def test_ring_batches_reach_pin_memory_as_a_whole():
    """PyTorch's pin-memory thread hands objects that are not sequences to their pin_memory()."""
    from torch.utils.data._utils.pin_memory import pin_memory

    calls = []

    class Probe(RingBatch):
        def release(self, pin=False):
            calls.append(pin)
            return ["pinned"]

    x, y = collate_nhwc(_samples(4))
    assert pin_memory(Probe(x, y.tolist(), 0)) == ["pinned"] and calls == [True]
