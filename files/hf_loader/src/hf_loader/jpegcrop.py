"""Decode only a crop window of a JPEG: libjpeg-turbo's partial decompression.

A random-resized crop keeps on average under half of an ImageNet image. libjpeg-turbo 3's
TurboJPEG API decodes only the window set by `tj3SetCroppingRegion`: it entropy-decodes the
rows above the window without their IDCT, upsampling and colour conversion, stops after the
window's last row, and runs the IDCT only for the iMCU columns the window touches. That is
what TensorFlow's `decode_and_crop_jpeg` and DALI's CPU decoder do. Measured here: the decode
of a crop costs about two thirds of a full decode (`make loader-bench`).

No maintained Python binding exposes the cropping region (simplejpeg 1.9: full decode and DCT
scaling; PyTurboJPEG 2.6: full decode, scaling and lossless transforms; imagecodecs 2026.3:
full decode), so this module calls the documented, stable TurboJPEG 3 C API through ctypes
(https://libjpeg-turbo.org/Documentation/Documentation, turbojpeg.h). The library is the
first libturbojpeg with the TurboJPEG 3 API (it has `tj3Init`) of:

1. the file named by `HF_LOADER_TURBOJPEG` (a path; `none` turns crop decode off);
2. the system's `libturbojpeg` (Debian bookworm and trixie ship 2.1.5, which lacks it);
3. libjpeg-turbo's own packages (`/opt/libjpeg-turbo/lib64`);
4. the copy of libjpeg-turbo 3 that the `turbojpeg` wheel bundles (requirements/loader-prod.txt).

Without one, `load()` returns None and the transforms decode the whole image, as before.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os
from pathlib import Path

import numpy as np

ENV_LIBRARY = "HF_LOADER_TURBOJPEG"
OFFICIAL_PACKAGE_LIBRARY = Path("/opt/libjpeg-turbo/lib64/libturbojpeg.so.0")

# turbojpeg.h (libjpeg-turbo 3.0): enum TJINIT, TJPARAM, TJPF, TJSAMP and tjMCUWidth.
_TJINIT_DECOMPRESS = 1
_TJPARAM_SUBSAMP = 4
_TJPARAM_JPEGWIDTH = 5
_TJPARAM_JPEGHEIGHT = 6
_TJPF_RGB = 0
_MCU_WIDTH = {0: 8, 1: 16, 2: 16, 3: 8, 4: 8, 5: 32, 6: 8}  # by TJSAMP_*; -1 is unknown


class CropDecodeError(ValueError):
    """libjpeg-turbo refused this JPEG (corrupt, CMYK, unusual sampling): decode it whole."""


class _Region(ctypes.Structure):
    _fields_ = [("x", ctypes.c_int), ("y", ctypes.c_int), ("w", ctypes.c_int), ("h", ctypes.c_int)]


def candidate_libraries(environ=os.environ) -> list[str]:
    """Where to look for libturbojpeg 3, in order (see the module docstring)."""
    explicit = environ.get(ENV_LIBRARY, "")
    if explicit:
        return [] if explicit.lower() == "none" else [explicit]
    found = []
    system = ctypes.util.find_library("turbojpeg")
    if system:
        found.append(system)
    found.append(str(OFFICIAL_PACKAGE_LIBRARY))
    spec = importlib.util.find_spec("turbojpeg")
    if spec is not None and spec.origin:
        bundled = Path(spec.origin).parent / "turbojpeg.libs"
        found.extend(str(p) for p in sorted(bundled.glob("libturbojpeg*.so*")))
    return found


class CropDecoder:
    """One TurboJPEG decompressor per process (a handle is not shared across threads)."""

    def __init__(self, library_path: str) -> None:
        self._handle = None
        self._pid = None
        lib = ctypes.CDLL(library_path)
        if not hasattr(lib, "tj3Init"):
            raise OSError(f"{library_path} has no TurboJPEG 3 API (libjpeg-turbo < 3.0)")
        lib.tj3Init.restype = ctypes.c_void_p
        lib.tj3Init.argtypes = [ctypes.c_int]
        lib.tj3Destroy.argtypes = [ctypes.c_void_p]
        lib.tj3DecompressHeader.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
        lib.tj3Get.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.tj3SetCroppingRegion.argtypes = [ctypes.c_void_p, _Region]
        lib.tj3Decompress8.argtypes = [
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_int,
        ]
        lib.tj3GetErrorStr.restype = ctypes.c_char_p
        lib.tj3GetErrorStr.argtypes = [ctypes.c_void_p]
        self.library_path = library_path
        self._lib = lib

    def _ready_handle(self):
        # DataLoader workers are forked: each process makes its own handle.
        if self._pid != os.getpid():
            self._handle = self._lib.tj3Init(_TJINIT_DECOMPRESS)
            if not self._handle:
                raise OSError("tj3Init failed")
            self._pid = os.getpid()
        return self._handle

    def _error(self, handle, what: str) -> CropDecodeError:
        message = self._lib.tj3GetErrorStr(handle).decode(errors="replace")
        return CropDecodeError(f"{what}: {message}")

    def size(self, data: bytes) -> tuple[int, int]:
        """(height, width) from the header; the handle keeps it for `decode`."""
        handle = self._ready_handle()
        if self._lib.tj3DecompressHeader(handle, data, len(data)) != 0:
            raise self._error(handle, "header")
        height = self._lib.tj3Get(handle, _TJPARAM_JPEGHEIGHT)
        width = self._lib.tj3Get(handle, _TJPARAM_JPEGWIDTH)
        # A start-of-image marker with no frame header "succeeds" with a size of -1 x -1.
        if height <= 0 or width <= 0:
            raise CropDecodeError(f"header: no frame header (size {height} x {width})")
        return height, width

    def decode(self, data: bytes, top: int, left: int, height: int, width: int) -> np.ndarray:
        """The RGB pixels of rows top..top+height, columns left..left+width: an HxWx3 uint8 view.

        Call `size(data)` first. The window's left edge is moved down to the iMCU boundary the
        library needs and the extra columns are sliced off, so the pixels match a full decode
        of the same box within JPEG rounding (upsampling at the window's edges).
        """
        handle = self._ready_handle()
        mcu_width = _MCU_WIDTH.get(self._lib.tj3Get(handle, _TJPARAM_SUBSAMP))
        if mcu_width is None:
            raise CropDecodeError("unusual chroma subsampling: no iMCU width to crop on")
        x0 = left - left % mcu_width
        region = _Region(x0, top, left + width - x0, height)
        if self._lib.tj3SetCroppingRegion(handle, region) != 0:
            raise self._error(handle, "cropping region")
        out = np.empty((height, region.w, 3), np.uint8)
        status = self._lib.tj3Decompress8(
            handle, data, len(data), out.ctypes.data, out.strides[0], _TJPF_RGB
        )
        # Leave no region behind for the next image's header (its size may differ).
        self._lib.tj3SetCroppingRegion(handle, _Region(0, 0, 0, 0))
        if status != 0:
            raise self._error(handle, "decode")
        return out[:, left - x0 :]

    def __del__(self) -> None:
        if self._handle and self._pid == os.getpid():
            self._lib.tj3Destroy(self._handle)


def load(environ=os.environ) -> CropDecoder | None:
    """The first usable libturbojpeg 3 (see `candidate_libraries`), or None."""
    for path in candidate_libraries(environ):
        try:
            return CropDecoder(path)
        except OSError:
            continue
    return None
