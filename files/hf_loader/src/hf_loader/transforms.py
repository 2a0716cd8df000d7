"""Decode and augment ImageNet images.

Fast path (train): libjpeg-turbo decodes only the random-resized crop's window
(`hf_loader.jpegcrop`), then torch's antialiased bilinear resize on uint8 (channels-last AVX
path) + flip. Without libjpeg-turbo 3: simplejpeg decodes the whole image and the crop is a
slice of it. The default output is uint8, CHW in shape and HWC in memory (collated as NHWC
by `hf_loader.batches.collate_nhwc`); normalization to float happens on the training device
(`normalize_batch`, used as Composer `device_transforms` by `hf_loader.data.make_dataspec`).
`output="float"` returns the same normalized float tensor the torchvision-style pipeline
returns, normalized in the worker.
"""

from __future__ import annotations

import io
import math
import random

import numpy as np
import torch
from PIL import Image

from . import jpegcrop

try:  # optional, much faster JPEG decode
    import simplejpeg
except ImportError:  # pragma: no cover - exercised only without the wheel
    simplejpeg = None

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OUTPUTS = ("uint8", "float")

CROP_DECODER = jpegcrop.load()
FULL_DECODER = "simplejpeg" if simplejpeg is not None else "pil"
# Named in the cache test's report and metrics: which JPEG decoder the train workers use.
DECODER = "libjpeg-turbo-crop" if CROP_DECODER is not None else FULL_DECODER
_MEAN255 = torch.tensor(IMAGENET_MEAN).view(3, 1, 1) * 255.0
_STD255 = torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255.0


def decode_rgb(data: bytes) -> np.ndarray:
    """Decode image bytes to an HxWx3 uint8 array (simplejpeg for JPEG, PIL otherwise)."""
    if simplejpeg is not None and data[:2] == b"\xff\xd8":
        try:
            return simplejpeg.decode_jpeg(data, colorspace="RGB")
        except ValueError:
            pass  # CMYK/odd JPEGs: PIL handles them
    with Image.open(io.BytesIO(data)) as im:
        return np.array(im.convert("RGB"))  # writable copy


def random_resized_crop_params(
    height: int,
    width: int,
    rng: random.Random,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params: (top, left, h, w)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = rng.randint(0, height - h)
            left = rng.randint(0, width - w)
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


# F.interpolate's kernel, asked for an NHWC result: F.interpolate returns NCHW, which costs the
# uint8 path a third more time than the resize itself (measured: 129 against 86 us per image).
_RESIZE_AA_OUT = torch.ops.aten._upsample_bilinear2d_aa.out


def _hwc_to_chw_view(t: torch.Tensor) -> torch.Tensor:
    """An HxWxC tensor as CxHxW without moving bytes: CHW shape, HWC memory (channels last)."""
    return t.permute(2, 0, 1)


def _resize_hwc(arr: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """Antialiased bilinear resize of an HWC uint8 array to a CHW uint8 tensor stored as HWC.

    The same pixels as `F.interpolate(..., mode="bilinear", antialias=True)`. The result keeps
    the HWC memory order: the batch is collated as NHWC (`hf_loader.batches.collate_nhwc`), which
    is also what a channels-last model reads on the GPU.
    """
    t = _hwc_to_chw_view(torch.from_numpy(np.ascontiguousarray(arr)))
    if (t.shape[-2], t.shape[-1]) == tuple(size):
        return t
    out = torch.empty((1, *size, t.shape[0]), dtype=t.dtype).permute(0, 3, 1, 2)
    _RESIZE_AA_OUT(t.unsqueeze(0), list(size), False, None, None, out=out)
    return out[0]


def as_hwc_memory(t: torch.Tensor) -> torch.Tensor:
    """A CHW tensor with HWC memory order (a copy only where it is not already)."""
    return _hwc_to_chw_view(t.permute(1, 2, 0).contiguous())


_INV_STD255 = 1.0 / _STD255


def normalize_chw(t: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """uint8 CHW (or NCHW) -> float32 normalized with the ImageNet mean/std (one allocation).

    `channels_last` (NCHW only) lays the result out as NHWC, which cuDNN's tensor-core
    convolutions read directly; the uint8 batch is reordered, a quarter of the float bytes.
    """
    if channels_last and t.dim() == 4:
        t = t.contiguous(memory_format=torch.channels_last)
        x = t.to(torch.float32)
    else:
        # On the CPU the per-channel broadcast is ten times slower over HWC memory.
        x = t.to(torch.float32, memory_format=torch.contiguous_format)
    return x.sub_(_MEAN255.to(t.device)).mul_(_INV_STD255.to(t.device))


def normalize_batch(batch, channels_last: bool = False):
    """Device-side batch transform: (uint8 images, labels) -> (float normalized, labels)."""
    if isinstance(batch, (list, tuple)):
        x, *rest = batch
        if x.dtype == torch.uint8:
            x = normalize_chw(x, channels_last)
        return (x, *rest) if isinstance(batch, tuple) else [x, *rest]
    if isinstance(batch, torch.Tensor) and batch.dtype == torch.uint8:
        return normalize_chw(batch, channels_last)
    return batch


class TrainTransform:
    """Random-resized-crop (scale 0.08-1, ratio 3/4-4/3) to `size`, horizontal flip p=0.5.

    `crop_decode` (default: when libjpeg-turbo 3 is found) decodes only the crop's window of a
    JPEG; the box is drawn from the same random stream either way.
    """

    def __init__(
        self,
        size: int = 224,
        output: str = "uint8",
        seed: int | None = None,
        crop_decode: bool = True,
    ) -> None:
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        self.size = size
        self.output = output
        self.rng = random.Random(seed)
        self.crop_decoder = CROP_DECODER if crop_decode else None

    def _window(self, data: bytes) -> np.ndarray:
        box = None
        if self.crop_decoder is not None and data[:2] == b"\xff\xd8":
            try:
                box = random_resized_crop_params(*self.crop_decoder.size(data), self.rng)
                return self.crop_decoder.decode(data, *box)
            except jpegcrop.CropDecodeError:
                pass  # CMYK, unusual sampling, corrupt: the full decoders handle or report it
        arr = decode_rgb(data)
        top, left, h, w = box or random_resized_crop_params(arr.shape[0], arr.shape[1], self.rng)
        return arr[top : top + h, left : left + w]

    def __call__(self, data: bytes) -> torch.Tensor:
        t = _resize_hwc(self._window(data), (self.size, self.size))
        if self.rng.random() < 0.5:
            t = t.flip(-1)
        return normalize_chw(t) if self.output == "float" else t


class ValTransform:
    """Resize the shorter side to `resize`, center-crop `size`."""

    def __init__(self, size: int = 224, resize: int = 256, output: str = "uint8") -> None:
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        self.size = size
        self.resize = resize
        self.output = output

    def __call__(self, data: bytes) -> torch.Tensor:
        arr = decode_rgb(data)
        h, w = arr.shape[:2]
        if h <= w:
            nh, nw = self.resize, max(1, int(self.resize * w / h))
        else:
            nh, nw = max(1, int(self.resize * h / w)), self.resize
        # crop the source region that maps to the centre crop first: fewer pixels to resize
        t = _resize_hwc(arr, (nh, nw))
        top = int(round((nh - self.size) / 2.0))
        left = int(round((nw - self.size) / 2.0))
        t = as_hwc_memory(t[:, top : top + self.size, left : left + self.size])
        return normalize_chw(t) if self.output == "float" else t
