"""torch DataLoaders over resolved datasets, and the Composer DataSpec."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, DistributedSampler

from .batches import RingCollate, collate_nhwc, release
from .check import read_regular
from .transforms import TrainTransform, ValTransform, normalize_batch


def _image_bytes(value) -> bytes:
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        if value.get("path"):  # an image kept by path (an imagefolder build): a regular
            return read_regular(value["path"])  # file only, a FIFO there would block a worker
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    raise ValueError(f"row has no image bytes or path: {type(value)}")


def _raw_images(ds, image_column: str):
    """The dataset with the image column left undecoded ({bytes, path}): we decode ourselves."""
    import datasets

    feat = ds.features.get(image_column) if ds.features else None
    if isinstance(feat, datasets.Image) and feat.decode:
        ds = ds.cast_column(image_column, datasets.Image(decode=False))
    return ds


class HFDataLoader(DataLoader):
    """A DataLoader whose workers reuse their shared-memory batch buffers (`hf_loader.batches`).

    Yields what a DataLoader yields; each ring batch is copied out as it arrives (by the
    pin-memory thread when pinning), which frees its buffer for the worker.
    """

    def __iter__(self):
        for batch in super().__iter__():
            yield release(batch)


class HFImageDataset(torch.utils.data.Dataset):
    """Map-style dataset over an Arrow-backed `datasets.Dataset` -> (image tensor, label)."""

    def __init__(self, ds, transform, image_column: str = "image", label_column: str = "label"):
        self.ds = _raw_images(ds.select_columns([image_column, label_column]), image_column)
        self.transform = transform
        self.image_column = image_column
        self.label_column = label_column

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i):
        row = self.ds[int(i)]
        return self.transform(_image_bytes(row[self.image_column])), int(row[self.label_column])

    def __getitems__(self, indices):  # one Arrow read per batch instead of one per row
        rows = self.ds[[int(i) for i in indices]]
        images, labels = rows[self.image_column], rows[self.label_column]
        return [
            (self.transform(_image_bytes(b)), int(y)) for b, y in zip(images, labels, strict=True)
        ]


class HFImageStream(torch.utils.data.IterableDataset):
    """Iterable dataset over a streaming `datasets.IterableDataset` (hub snapshot read as stream).

    Split by node (rank/world size) here; `datasets` splits shards between DataLoader workers.
    """

    def __init__(
        self,
        ds,
        transform,
        image_column: str = "image",
        label_column: str = "label",
        rank: int = 0,
        world_size: int = 1,
        shuffle_buffer: int = 0,
        seed: int = 0,
    ):
        from datasets.distributed import split_dataset_by_node

        ds = _raw_images(ds.select_columns([image_column, label_column]), image_column)
        if shuffle_buffer:
            ds = ds.shuffle(seed=seed, buffer_size=shuffle_buffer)
        if world_size > 1:
            ds = split_dataset_by_node(ds, rank=rank, world_size=world_size)
        self.ds = ds
        self.transform = transform
        self.image_column = image_column
        self.label_column = label_column

    def set_epoch(self, epoch: int) -> None:
        self.ds.set_epoch(epoch)

    def __iter__(self):
        for row in self.ds:
            yield self.transform(_image_bytes(row[self.image_column])), int(row[self.label_column])


@dataclass
class LoaderConfig:
    batch_size: int = 256
    workers: int = 8
    pin_memory: bool | None = None  # None: when CUDA is available
    persistent_workers: bool = True
    prefetch_factor: int = 2
    output: str = "uint8"  # "uint8" (normalize on the device) or "float"
    crop_decode: bool = True  # decode only the train crop's window (libjpeg-turbo 3, if found)
    reuse_batch_memory: bool = True  # workers reuse a ring of shared batch buffers (x86_64)
    crop_size: int = 224
    val_resize: int = 256
    drop_last_train: bool = True
    shuffle_buffer: int = 10_000  # streaming mode only
    seed: int = 17
    image_column: str = "image"
    label_column: str = "label"


def dist_env() -> tuple[int, int]:
    """(rank, world size) from the launcher environment (composer/torchrun set them)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def build_dataloader(
    ds,
    train: bool,
    cfg: LoaderConfig | None = None,
    rank: int | None = None,
    world_size: int | None = None,
) -> DataLoader:
    """DataLoader for a `datasets.Dataset` (map-style) or `IterableDataset` (stream)."""
    import datasets

    cfg = cfg or LoaderConfig()
    env_rank, env_world = dist_env()
    rank = env_rank if rank is None else rank
    world_size = env_world if world_size is None else world_size
    transform = (
        TrainTransform(cfg.crop_size, cfg.output, seed=cfg.seed + rank, crop_decode=cfg.crop_decode)
        if train
        else ValTransform(cfg.crop_size, cfg.val_resize, cfg.output)
    )
    pin = torch.cuda.is_available() if cfg.pin_memory is None else cfg.pin_memory
    kwargs = {
        "batch_size": cfg.batch_size,
        "num_workers": cfg.workers,
        "pin_memory": pin,
        "drop_last": train and cfg.drop_last_train,
        "collate_fn": collate_nhwc,
    }
    if cfg.workers > 0:
        kwargs["persistent_workers"] = cfg.persistent_workers
        kwargs["prefetch_factor"] = cfg.prefetch_factor
        kwargs["worker_init_fn"] = _seed_worker
        if cfg.reuse_batch_memory:
            # A worker has at most prefetch_factor batches in flight; one more buffer covers
            # the batch the training process is copying out.
            kwargs["collate_fn"] = RingCollate(slots=cfg.prefetch_factor + 1, workers=cfg.workers)
    if isinstance(ds, datasets.IterableDataset):
        stream = HFImageStream(
            ds,
            transform,
            cfg.image_column,
            cfg.label_column,
            rank=rank,
            world_size=world_size,
            shuffle_buffer=cfg.shuffle_buffer if train else 0,
            seed=cfg.seed,
        )
        return HFDataLoader(stream, **kwargs)
    mapds = HFImageDataset(ds, transform, cfg.image_column, cfg.label_column)
    if world_size > 1:
        sampler = DistributedSampler(
            mapds,
            num_replicas=world_size,
            rank=rank,
            shuffle=train,
            seed=cfg.seed,
            drop_last=train and cfg.drop_last_train,
        )
        return HFDataLoader(mapds, sampler=sampler, **kwargs)
    return HFDataLoader(mapds, shuffle=train, **kwargs)


def _seed_worker(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    ds = info.dataset
    transform = getattr(ds, "transform", None)
    if transform is not None and hasattr(transform, "rng"):
        transform.rng.seed(torch.initial_seed() % (2**32) + worker_id)


def make_dataspec(
    loader: DataLoader, normalize_on_device: bool = True, channels_last: bool = False
):
    """Composer DataSpec; uint8 batches are normalized after the move to the device.

    Composer applies `microbatch_transforms` after `batch_to_device`; the model built by
    `hf_loader.train.build_model` also normalizes uint8 input itself (a no-op on float).
    `channels_last` hands the model NHWC batches (for a model in channels_last).
    """
    from composer.core import DataSpec

    transform = None
    if normalize_on_device:
        transform = functools.partial(normalize_batch, channels_last=channels_last)
    return DataSpec(dataloader=loader, microbatch_transforms=transform)
