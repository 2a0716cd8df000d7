"""Decode and augment ImageNet images.

Fast path: simplejpeg (libjpeg-turbo) decode + crop on the uint8 array + torch's
antialiased bilinear resize on uint8 (channels-last AVX path) + flip. The default output
is uint8 CHW; normalization to float happens on the training device
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
import torch.nn.functional as F  # noqa: N812
from PIL import Image

try:  # optional, much faster JPEG decode
    import simplejpeg
except ImportError:  # pragma: no cover - exercised only without the wheel
    simplejpeg = None

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OUTPUTS = ("uint8", "float")

# Named in the cache test's report and metrics: which JPEG decoder the workers use.
DECODER = "simplejpeg" if simplejpeg is not None else "pil"
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


def _resize_hwc(arr: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """Antialiased bilinear resize of an HWC uint8 array to a CHW uint8 tensor."""
    t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).unsqueeze(0)  # channels-last
    if (t.shape[-2], t.shape[-1]) != tuple(size):
        t = F.interpolate(t, size=size, mode="bilinear", antialias=True, align_corners=False)
    return t[0].contiguous()


_INV_STD255 = 1.0 / _STD255


def normalize_chw(t: torch.Tensor) -> torch.Tensor:
    """uint8 CHW (or NCHW) -> float32 normalized with the ImageNet mean/std (one allocation)."""
    x = t.to(torch.float32)
    return x.sub_(_MEAN255.to(t.device)).mul_(_INV_STD255.to(t.device))


def normalize_batch(batch):
    """Device-side batch transform: (uint8 images, labels) -> (float normalized, labels)."""
    if isinstance(batch, (list, tuple)):
        x, *rest = batch
        if x.dtype == torch.uint8:
            x = normalize_chw(x)
        return (x, *rest) if isinstance(batch, tuple) else [x, *rest]
    if isinstance(batch, torch.Tensor) and batch.dtype == torch.uint8:
        return normalize_chw(batch)
    return batch


class TrainTransform:
    """Random-resized-crop (scale 0.08-1, ratio 3/4-4/3) to `size`, horizontal flip p=0.5."""

    def __init__(self, size: int = 224, output: str = "uint8", seed: int | None = None) -> None:
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        self.size = size
        self.output = output
        self.rng = random.Random(seed)

    def __call__(self, data: bytes) -> torch.Tensor:
        arr = decode_rgb(data)
        top, left, h, w = random_resized_crop_params(arr.shape[0], arr.shape[1], self.rng)
        t = _resize_hwc(arr[top : top + h, left : left + w], (self.size, self.size))
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
        t = t[:, top : top + self.size, left : left + self.size].contiguous()
        return normalize_chw(t) if self.output == "float" else t
