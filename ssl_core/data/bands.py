"""Multi-band and deep sources: .npy arrays and TIFFs PIL cannot hold (more than 4 bands, 16-bit
colour, float), read as [C, H, W] arrays, and their scaling to uint8 by a per-channel range.

- .npy: read with allow_pickle=False. A 2-D array is one band; in a 3-D array the band axis is the last
  one when it is shorter than the first (and at most 16 long), else the first (at most 16).
- TIFF: tifffile (imported only when such a file is met), first image series; its axes other than
  Y and X must be a single band axis.
- Deeper than 8 bits (uint16, int, float): channel c maps [low_c, high_c] linearly onto 0..255 and clips.
  The pipeline measures the ranges on the training pool (measure_ranges over sample_pixels) and records
  them; without ranges, integer data uses its dtype's full range (16-bit: v / 257) and float data [0, 1].
"""
from __future__ import annotations

import io

import numpy as np

MAX_BANDS = 16
_DEEP_KINDS = "uif"   # unsigned, signed, float


class BandError(ValueError):
    """The array cannot be an image; the message is the quarantine reason."""


def npy_shape(data: bytes) -> tuple[tuple[int, ...], np.dtype]:
    """The array's shape and dtype from its header, without reading the values."""
    buffer = io.BytesIO(data)
    version = np.lib.format.read_magic(buffer)
    reader = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if reader is None:
        raise BandError(f"unsupported .npy version {version}")
    shape, _, dtype = reader(buffer)
    return tuple(shape), dtype


def _channels_last(shape: tuple[int, ...]) -> bool:
    if len(shape) == 3 and shape[2] <= MAX_BANDS and shape[2] < shape[0]:
        return True
    if len(shape) == 2 or (len(shape) == 3 and shape[0] <= MAX_BANDS):
        return False
    raise BandError(f"array of shape {shape} is not an image ([H, W], [C, H, W] or [H, W, C] with C <= {MAX_BANDS})")


def channels_first(array: np.ndarray) -> np.ndarray:
    """[H, W] -> [1, H, W]; [C, H, W] or [H, W, C] (C <= 16) -> [C, H, W]."""
    if _channels_last(array.shape):
        return array.transpose(2, 0, 1)
    return array[None] if array.ndim == 2 else array


def band_layout(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(C, H, W) of an array shape, as channels_first would lay it out."""
    if _channels_last(tuple(shape)):
        return shape[2], shape[0], shape[1]
    return (1, *shape) if len(shape) == 2 else tuple(shape)


def check_dtype(dtype: np.dtype) -> None:
    if dtype == np.bool_ or dtype.kind not in _DEEP_KINDS or dtype.itemsize > 8:
        raise BandError(f"unsupported pixel type {dtype}")


def read_npy(data: bytes) -> np.ndarray:
    array = np.load(io.BytesIO(data), allow_pickle=False)
    check_dtype(array.dtype)
    return finite(channels_first(array))


def tiff_layout(data: bytes) -> tuple[tuple[int, int, int], np.dtype]:
    """(C, H, W) and dtype of a TIFF's first series, from its tags (no pixel decoded)."""
    series = _tiff_series(data)
    return _tiff_axes(series.shape, series.axes), series.dtype


def read_tiff(data: bytes) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        series = tif.series[0]
        array = series.asarray()
        c, h, w = _tiff_axes(series.shape, series.axes)
        y, x = series.axes.index("Y"), series.axes.index("X")
    check_dtype(array.dtype)
    others = [i for i in range(array.ndim) if i not in (y, x)]
    array = np.transpose(array, others + [y, x]).reshape(c, h, w)
    return finite(array)


def _tiff_series(data: bytes):
    try:
        import tifffile
    except ImportError:   # a bare training box: the MLOps edge installs it
        raise BandError("multi-band or deep TIFF needs the tifffile package (pip install tifffile)") from None
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        if not tif.series:
            raise BandError("TIFF without an image")
        return tif.series[0]


def _tiff_axes(shape: tuple[int, ...], axes: str) -> tuple[int, int, int]:
    if "Y" not in axes or "X" not in axes:
        raise BandError(f"TIFF axes {axes!r} have no Y and X")
    bands = int(np.prod([n for n, a in zip(shape, axes) if a not in "YX"]))
    if bands > MAX_BANDS:
        raise BandError(f"TIFF with {bands} bands (axes {axes!r}); at most {MAX_BANDS} are supported")
    return bands, shape[axes.index("Y")], shape[axes.index("X")]


def finite(array: np.ndarray) -> np.ndarray:
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise BandError("non-finite pixel values (NaN or infinity)")
    return array


def default_range(dtype: np.dtype) -> tuple[float, float]:
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return float(max(info.min, 0) if dtype.kind == "u" else info.min), float(info.max)
    return 0.0, 1.0


def to_uint8(array: np.ndarray, ranges: list[tuple[float, float]] | None) -> np.ndarray:
    """[C, H, W] of any supported dtype -> uint8, channel c mapping ranges[c] onto 0..255."""
    if array.dtype == np.uint8:
        return array
    if ranges is None and array.dtype == np.uint16:
        return ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)   # exact: k * 257 -> k
    out = np.empty(array.shape, dtype=np.uint8)
    for c in range(array.shape[0]):
        low, high = ranges[c] if ranges is not None else default_range(array.dtype)
        span = high - low
        scaled = (array[c].astype(np.float64) - low) * (255.0 / span) if span > 0 else np.zeros(array.shape[1:])
        out[c] = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return out


def sample_pixels(array: np.ndarray, per_image: int = 1024) -> np.ndarray:
    """float64 [C, n] values at a fixed, evenly spaced set of pixel positions (deterministic)."""
    flat = array.reshape(array.shape[0], -1)
    step = max(1, flat.shape[1] // per_image)
    return flat[:, ::step][:, :per_image].astype(np.float64)


def measure_ranges(samples: list[np.ndarray], percentiles: tuple[float, float]) -> list[tuple[float, float]]:
    """Per-channel [low, high] percentiles of the pooled pixel samples ([C, n] arrays)."""
    pooled = np.concatenate(samples, axis=1)
    low, high = np.percentile(pooled, list(percentiles), axis=1)
    return [(float(a), float(b)) for a, b in zip(low, high)]
