"""How a batch travels from a DataLoader worker to the training process.

`collate_nhwc` stacks (image, label) samples the way the transforms lay images out (uint8:
NHWC memory, so stacking is a plain copy). `RingCollate` writes those batches into a small
ring of shared-memory buffers per worker and reuses them.

Why the ring: PyTorch gives every batch new shared memory. The kernel allocates and zeroes
its pages on first touch, a page fault each 4 KiB, and the training process unmaps and
frees them once the batch is used. For a uint8 batch of 64 images at 224x224 that costs about
100 us per image, as much as resizing the image (`make loader-bench`; a warm buffer takes
2.4 us). The training process copies each ring batch out as it arrives: into pinned memory
in PyTorch's pin-memory thread when the loader pins (the copy pinning makes anyway), else
into ordinary memory as the loader yields it (`RingBatch.release`). Then it marks the buffer
free in a flag array the worker shares. A worker writes into a buffer only when its flag is
free and takes new shared memory otherwise, so correctness does not depend on how far
ahead the DataLoader runs or how long the consumer keeps a batch.
"""

from __future__ import annotations

import collections
import math
import os
import platform
import weakref

import numpy as np
import torch

# The flag is set free by a plain store after the copy's loads. x86's total store order keeps
# that store after them; weaker memory models (aarch64) would need a fence Python does not
# offer, so there every batch gets new shared memory, as in PyTorch.
RING_SUPPORTED = platform.machine().lower() in ("x86_64", "amd64")
_FREE, _IN_USE = 0, 1
# Per RingCollate (by id): the ring buffers the training process received last. Holding them
# keeps their mapping, so the next batch in the same buffer is found in PyTorch's shared-storage
# cache instead of being mapped, faulted in and unmapped again.
_MAPPED: dict[int, collections.deque] = {}


def _in_worker() -> bool:
    return torch.utils.data.get_worker_info() is not None


def _new_shared(shape: tuple[int, ...], like: torch.Tensor, extra_bytes: int = 0) -> torch.Tensor:
    """A tensor of `shape` in new shared memory, with `extra_bytes` more after it."""
    storage = like.untyped_storage()._new_shared(
        like.element_size() * math.prod(shape) + extra_bytes
    )
    return like.new_empty(0).set_(storage, 0, shape)


def collate_nhwc(samples, allocate=None):
    """`default_collate` for (CHW image, label) samples, uint8 images stored as NHWC.

    Images in HWC memory order (the uint8 transforms) stack as NHWC, a plain copy (NCHW would
    transpose every image); images in CHW memory stack as NCHW. The batch keeps the NCHW
    shape every consumer expects; `.to(device)` and `pin_memory` keep its strides. The batch
    goes into `allocate(shape, like)` if given, else into new shared memory in a worker (as
    `default_collate` does) and ordinary memory in the training process.
    """
    images, labels = zip(*samples, strict=True)
    first = images[0]
    hwc = first.permute(1, 2, 0).is_contiguous()  # else CHW memory (float output): NCHW
    if hwc:
        images = [image.permute(1, 2, 0) for image in images]
    shape = (len(images), *images[0].shape)
    if allocate is not None:
        batch = allocate(shape, first)
    elif _in_worker():
        batch = _new_shared(shape, first)
    else:
        batch = first.new_empty(shape)
    torch.stack(images, out=batch)
    return [batch.permute(0, 3, 1, 2) if hwc else batch, torch.tensor(labels)]


class RingBatch:
    """A batch still in a worker's ring buffer; `release()` copies it out and frees the buffer.

    The buffer's flag is the byte after the images in the same shared memory, so a batch
    crosses processes as one storage (a plain batch is two: images and labels). Not a
    sequence on purpose: PyTorch's pin-memory thread then calls its `pin_memory()`.
    """

    def __init__(self, images: torch.Tensor, labels: list[int], ring_id: int) -> None:
        self.images = images
        self.labels = labels
        self.ring_id = ring_id

    def release(self, pin: bool = False) -> list:
        """[images, labels] in the training process's own memory; the buffer is free again."""
        source = self.images
        images = torch.empty_strided(
            source.size(), source.stride(), dtype=source.dtype, pin_memory=pin
        )
        # numpy's copy is one thread: torch's would wake the training process's intra-op pool
        np.copyto(images.numpy(), source.numpy())
        mapped = _MAPPED.get(self.ring_id)
        if mapped is not None:
            mapped.append(source)
        _flag(source)[0] = _FREE
        labels = torch.tensor(self.labels)
        return [images, labels.pin_memory() if pin else labels]

    def pin_memory(self, device=None) -> list:
        return self.release(pin=True)


def _flag(images: torch.Tensor) -> np.ndarray:
    """The one-byte flag stored right after a ring buffer's images."""
    storage = images.untyped_storage()
    return torch.empty(0, dtype=torch.uint8).set_(storage, storage.nbytes() - 1, (1,)).numpy()


class _Ring:
    """One worker's shared batch buffers, each followed by its flag byte."""

    def __init__(self, slots: int) -> None:
        self.buffers: list[torch.Tensor | None] = [None] * slots
        self.flags: list[np.ndarray | None] = [None] * slots
        self.next = 0
        self.slot: int | None = None  # the slot the last batch went into; None: new memory

    def allocate(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        slots = len(self.buffers)
        for _ in range(slots):
            slot, self.next = self.next, (self.next + 1) % slots
            flag = self.flags[slot]
            if flag is not None and flag[0] != _FREE:
                continue  # the training process has not copied that batch out yet
            buffer = self.buffers[slot]
            if buffer is None or buffer.shape != shape or buffer.dtype != like.dtype:
                buffer = _new_shared(shape, like, extra_bytes=1)  # the flag byte
                self.buffers[slot], self.flags[slot] = buffer, _flag(buffer)
            self.flags[slot][0] = _IN_USE
            self.slot = slot
            return buffer
        self.slot = None
        return _new_shared(shape, like)


class RingCollate:
    """collate_fn: `collate_nhwc` into a ring of `slots` reused buffers per worker process.

    Only with a loader that releases ring batches (`hf_loader.data.HFDataLoader`). In the
    training process itself (no workers) and where the ring is not supported it is
    `collate_nhwc`.
    """

    def __init__(self, slots: int, workers: int) -> None:
        self.slots = slots
        self._ring: _Ring | None = None
        self._pid: int | None = None
        self.ring_id = id(self)
        _MAPPED[self.ring_id] = collections.deque(maxlen=slots * workers)
        weakref.finalize(self, _MAPPED.pop, self.ring_id, None)

    def __call__(self, samples):
        if not (RING_SUPPORTED and _in_worker()):
            return collate_nhwc(samples)
        if self._pid != os.getpid():  # each forked worker makes its own ring
            self._ring, self._pid = _Ring(self.slots), os.getpid()
        ring = self._ring
        images, labels = collate_nhwc(samples, allocate=ring.allocate)
        if ring.slot is None:
            return [images, labels]
        return RingBatch(images, labels.tolist(), self.ring_id)


def release(batch):
    """The batch a consumer may keep: ring batches copied out, anything else as it is."""
    return batch.release() if isinstance(batch, RingBatch) else batch
