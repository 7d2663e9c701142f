"""Decode and validate listed image files into uint8 arrays (listing: `listing.py`).

Decisions (documented here because `prepare` and the README rely on them):
- PIL may parse a file only as the format its extension names (PNG, JPEG incl. camera MPO files,
  BMP, TIFF, WebP): no other (riskier) decoder such as EPS/Ghostscript can be reached, and a file
  whose content is another format is rejected.
- Resizing: the shorter side is scaled to `image_size` and the centre is cropped (aspect ratio is
  kept; a square image is simply resized). Bicubic, antialiased.
- Alpha is composited onto black (transparent pixels become 0), 16-bit values are rounded to
  8 bits, EXIF orientation is applied, colour profiles are ignored.
- Size limits: more than MAX_PIXELS pixels (read from the header, before any pixel is decoded)
  or a file larger than MAX_FILE_BYTES -> "too large".
"""
from __future__ import annotations

import hashlib
import io
import os
import random
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageOps

from ssl_core.data.listing import EXT_TO_FORMAT, Rejected, relative_posix

MAX_PIXELS = 40_000_000
MAX_FILE_BYTES = 256 * 1024 * 1024

# The only decoders PIL may use (camera multi-picture JPEGs come through "JPEG" as format MPO).
_PIL_FORMATS = tuple(sorted(set(EXT_TO_FORMAT.values())))
_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N"}
_SIXTEEN_BIT = {"I", "I;16", "I;16B", "I;16L", "I;16N"}


@dataclass
class Note:
    path: str
    note: str


@dataclass
class ImageSet:
    images: np.ndarray  # uint8 [N, C, S, S]
    labels: np.ndarray  # int64 [N]; -1 for unlabeled
    paths: list[str]  # relative to the root given to decode_images
    content_hash: list[str]  # sha1 of the decoded uint8 pixels
    rejected: list[Rejected] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)


class _Reject(Exception):
    """A file is unusable; the message is the quarantine reason."""


def _open(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data), formats=_PIL_FORMATS)


def _read_checked(path: Path, image_size: int) -> tuple[Image.Image, tuple[int, int], list[str]]:
    """Open, check the header size, verify, reopen and fully load one file (never partially)."""
    notes: list[str] = []
    try:
        size = os.stat(path).st_size
        data = path.read_bytes() if 0 < size <= MAX_FILE_BYTES else b""
    except OSError as exc:  # vanished or unreadable since it was listed
        raise _Reject(f"unreadable file ({exc.strerror or exc})") from exc
    if size == 0:
        raise _Reject("empty file (0 bytes)")
    if size > MAX_FILE_BYTES:
        raise _Reject(f"too large (file of {size} bytes > {MAX_FILE_BYTES})")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        im = _open(data)  # header only; PIL's own DecompressionBombError is mapped by _reason
        w, h = im.size
        if w * h > MAX_PIXELS:
            raise _Reject(f"too large ({w}x{h} = {w * h} pixels > {MAX_PIXELS})")
        if im.format == "PNG":  # the only format whose verify() checks anything: chunk CRCs,
            im.verify()  # which load() skips; verify() consumes the image, so open it again
            im = _open(data)
        if im.format in ("JPEG", "MPO"):
            # Let libjpeg decode at 1/2..1/8 scale when that still covers the target (big photos).
            im.draft(None, (image_size, image_size))
        im.load()
    for warning in caught:
        if issubclass(warning.category, Image.DecompressionBombWarning):
            raise _Reject(f"too large ({w}x{h} pixels)")
        notes.append(f"decoder warning: {warning.message}")
    expected = EXT_TO_FORMAT.get(path.suffix.lower())
    actual = "JPEG" if im.format == "MPO" else im.format
    if expected and actual != expected:
        notes.append(f"content is {actual} but extension is {path.suffix}")
    return im, (w, h), notes


def _composite_alpha(im: Image.Image, base_mode: str, notes: list[str], label: str) -> Image.Image:
    rgba = im.convert("RGBA" if base_mode == "RGB" else "LA")
    alpha = rgba.getchannel("A")
    base = rgba.convert(base_mode)
    if alpha.getextrema() == (255, 255):
        notes.append(f"{label} -> {base_mode} (opaque alpha dropped)")
        return base
    notes.append(f"{label} -> {base_mode} (alpha composited on black)")
    return Image.composite(base, Image.new(base_mode, base.size, 0), alpha)


def _to_l_or_rgb(im: Image.Image, notes: list[str]) -> Image.Image:
    """Bring any decoded mode to 8-bit L or RGB."""
    mode = im.mode
    if mode in ("L", "RGB"):
        return im
    if mode == "1":
        notes.append("1-bit -> 8-bit")
        return im.convert("L")
    if mode in _SIXTEEN_BIT:
        notes.append("16-bit -> 8-bit")
        values = np.clip(np.asarray(im).astype(np.int64), 0, 65535)
        return Image.fromarray(((values + 128) // 257).astype(np.uint8), "L")
    if mode in ("LA", "La"):
        return _composite_alpha(im, "L", notes, "LA")
    if mode in ("RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in im.info):
        return _composite_alpha(im, "RGB", notes, mode)
    if mode in ("P", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        notes.append(f"{'palette' if mode == 'P' else mode} -> RGB")
        return im.convert("RGB")
    raise _Reject(f"unsupported pixel mode {mode}")


def _match_channels(im: Image.Image, channels: int, notes: list[str]) -> Image.Image:
    if channels == 3 and im.mode == "L":
        notes.append("grayscale in colour set -> replicated to 3 channels")
        return im.convert("RGB")
    if channels == 1 and im.mode == "RGB":
        rgb = np.asarray(im)
        if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
            notes.append("colour in grayscale set -> converted to luma")
        return im.convert("L")
    return im


def _resize(im: Image.Image, size: int, original: tuple[int, int], notes: list[str]) -> Image.Image:
    """Scale the shorter side to `size`, then centre-crop to size x size."""
    w, h = im.size
    if (w, h) == (size, size):
        return im
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    if (w, h) != (side, side):
        im = im.crop((left, top, left + side, top + side))
    out = im.resize((size, size), Image.Resampling.BICUBIC)
    crop = "" if original[0] == original[1] else " (centre crop)"
    notes.append(f"resized {original[0]}x{original[1]} -> {size}x{size}{crop}")
    return out


def _decode_one(path: Path, image_size: int, channels: int) -> tuple[np.ndarray, list[str]]:
    """Decode one file to uint8 [C, S, S] plus conversion notes; raises _Reject when unusable."""
    im, original, notes = _read_checked(path, image_size)
    if getattr(im, "n_frames", 1) > 1:
        notes.append(f"{im.n_frames} frames -> first frame used")
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not cost the image
        orientation = 1
        notes.append("unreadable EXIF ignored")
    if orientation not in (1, None):
        im = ImageOps.exif_transpose(im)
        notes.append("EXIF orientation applied")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # palette-transparency hints: alpha is handled explicitly
        im = _to_l_or_rgb(im, notes)
    im = _match_channels(im, channels, notes)
    im = _resize(im, image_size, original, notes)
    arr = np.asarray(im, dtype=np.uint8)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr), notes


def _reason(exc: BaseException) -> str:
    if isinstance(exc, _Reject):
        return str(exc)
    if isinstance(exc, Image.UnidentifiedImageError):
        return "not a readable image (content is not a supported image format)"
    if isinstance(exc, Image.DecompressionBombError):
        return f"too large ({exc})"
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, (OSError, SyntaxError, EOFError, ValueError, IndexError, struct.error)):
        return f"truncated or corrupt image ({text})"
    return f"could not decode ({type(exc).__name__}: {text})"


def decode_images(items: list[tuple[Path, int]], root: Path, image_size: int, channels: int,
                  progress: Callable[[int, int], None] | None = None) -> ImageSet:
    """Decode, convert, resize and validate `items` [(path, label)] in order (deterministic).

    Unusable files go to `rejected` with a reason and the run continues; conversions are noted.
    `progress(done, total)` is called about every 1 % and once at the end.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    root = Path(root)
    total = len(items)
    images = np.empty((total, channels, image_size, image_size), dtype=np.uint8)
    labels: list[int] = []
    paths: list[str] = []
    hashes: list[str] = []
    rejected: list[Rejected] = []
    notes: list[Note] = []
    step = max(1, -(-total // 100))  # about 100 calls in all
    for i, (path, label) in enumerate(items):
        rel = relative_posix(Path(path), root)
        try:
            arr, file_notes = _decode_one(Path(path), image_size, channels)
        except Exception as exc:  # noqa: BLE001 - one bad file must never stop the run
            rejected.append(Rejected(rel, _reason(exc)))
        else:
            k = len(paths)
            images[k] = arr
            labels.append(int(label))
            paths.append(rel)
            hashes.append(hashlib.sha1(arr.tobytes()).hexdigest())
            notes.extend(Note(rel, n) for n in file_notes)
        if progress is not None and ((i + 1) % step == 0 or i + 1 == total):
            progress(i + 1, total)
    kept = len(paths)
    images = images if kept == total else images[:kept].copy()
    return ImageSet(images, np.asarray(labels, dtype=np.int64), paths, hashes, rejected, notes)


# ----------------------------------------------------------------------------- helpers
def _is_gray(path: Path) -> bool | None:
    """True/False for a readable image, None when it cannot be read."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path, formats=_PIL_FORMATS) as im:
                w, h = im.size
                if w * h > MAX_PIXELS:
                    return None
                if im.mode in _GRAY_MODES:
                    return True
                if im.mode not in ("RGB", "RGBA", "RGBX", "P", "PA"):  # F is rejected later: no verdict
                    return None if im.mode == "F" else False  # CMYK, YCbCr, LAB, HSV: colour
                if im.format in ("JPEG", "MPO"):
                    im.draft("RGB", (64, 64))  # a small decode is enough to judge the colours
                rgb = np.asarray(im.convert("RGB"))
        return bool(np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]))
    except Exception:  # noqa: BLE001 - unreadable files are judged (and rejected) by decode_images
        return None


def detect_channels(paths: list[Path], sample: int = 200) -> int:
    """1 if every readable image in a seeded sample is grayscale (L/LA/1/16-bit modes, or RGB/palette
    with R == G == B), else 3. With no readable image at all: 3."""
    chosen = list(paths) if len(paths) <= sample else random.Random(0).sample(list(paths), sample)
    verdicts = [v for v in (_is_gray(Path(p)) for p in chosen) if v is not None]
    return 1 if verdicts and all(verdicts) else 3


def has_colour(paths: list[Path], sample: int = 200) -> bool:
    """True when some readable image of a seeded sample is colour (unreadable files give no verdict)."""
    chosen = list(paths) if len(paths) <= sample else random.Random(0).sample(list(paths), sample)
    return any(_is_gray(Path(p)) is False for p in chosen)


def find_duplicates(a_hashes: list[str], b_hashes: list[str]) -> list[tuple[int, int]]:
    """All (i, j) with a_hashes[i] == b_hashes[j] (identical decoded pixels), sorted."""
    where: dict[str, list[int]] = {}
    for i, h in enumerate(a_hashes):
        where.setdefault(h, []).append(i)
    return sorted((i, j) for j, h in enumerate(b_hashes) for i in where.get(h, ()))
