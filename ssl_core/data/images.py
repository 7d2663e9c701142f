"""Decode and validate listed image files into uint8 arrays [C, S, S] (listing: `listing.py`).

Decisions (documented here because `prepare` and the README rely on them):
- PIL may parse a file only as the format its extension names (PNG, JPEG incl. camera MPO files,
  BMP, TIFF, WebP): no other (riskier) decoder is reached. A file whose content is another format
  (TIFF bytes in a .png) is quarantined with a reason naming both ("rename it"), never guessed.
- .npy arrays and TIFFs beyond PIL (more than 4 bands, deep colour, float) come through `bands.py`:
  1-16 channels; data deeper than 8 bits is scaled per channel by the given ranges (the pipeline
  measures them on the training pool).
- Resizing (DecodeSettings.resize): "crop" scales the shorter side to `image_size` and crops the centre
  (aspect kept), "pad" scales the longer side and pads the rest with black, "squash" resizes both sides
  (aspect lost). Bicubic, antialiased. Large JPEGs are decoded at a reduced size (libjpeg's 1/2..1/8
  scaling, PIL's draft) that still covers the target, so a 6000x4000 photo costs what a small one does.
- Alpha is composited onto black (transparent pixels become 0), EXIF orientation is applied,
  colour profiles are ignored.
- Size limits: a file over MAX_FILE_BYTES, more than `max_megapixels` pixels, or a decompression bomb
  (more than BOMB_PIXELS_PER_BYTE pixels per byte of file beyond BOMB_FLOOR_PIXELS) -> "too large",
  from the header, before any pixel is decoded. An ordinary 8000x8000 camera photo passes.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import random
import struct
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageOps

from ssl_core.data import bands
from ssl_core.data.listing import EXT_TO_FORMAT, Rejected, relative_posix
from ssl_core.data.pil_convert import DEEP_MODES, Reject, convert_mode, match_channels

MAX_FILE_BYTES = 256 * 1024 * 1024
BOMB_PIXELS_PER_BYTE = 1024      # beyond deflate's ~1032:1 for 8-bit data: no honest file is that small
BOMB_FLOOR_PIXELS = 16_000_000   # below this, a tiny file is just a simple picture, and cheap to decode
RESIZE_POLICIES = ("crop", "pad", "squash")
DECODER_VERSION = 2              # part of every cache key: bump when decoded pixels change

# The only decoders PIL may use (camera multi-picture JPEGs come through "JPEG" as format MPO).
_PIL_FORMATS = tuple(sorted(set(EXT_TO_FORMAT.values())))
Image.MAX_IMAGE_PIXELS = None    # the limits above replace PIL's global warning/error thresholds


@dataclass(frozen=True)
class DecodeSettings:
    """Everything a decoded row depends on besides the file's bytes (part of its cache key)."""
    image_size: int
    channels: int
    resize: str = "crop"
    max_megapixels: float = 200.0
    ranges: tuple[tuple[float, float], ...] | None = None   # per channel, for sources deeper than 8 bits

    def __post_init__(self) -> None:
        if not 1 <= self.channels <= bands.MAX_BANDS:
            raise ValueError(f"channels must be 1..{bands.MAX_BANDS}, got {self.channels}")
        if self.resize not in RESIZE_POLICIES:
            raise ValueError(f"resize must be one of {', '.join(RESIZE_POLICIES)}, got {self.resize!r}")

    def digest(self) -> str:
        text = json.dumps({**asdict(self), "decoder": DECODER_VERSION}, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:16]


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


def read_file(path: Path) -> bytes:
    try:
        size = os.stat(path).st_size
        if size > MAX_FILE_BYTES:
            raise Reject(f"too large (file of {size} bytes > {MAX_FILE_BYTES})")
        data = Path(path).read_bytes() if size else b""
    except OSError as exc:  # vanished or unreadable since it was listed
        raise Reject(f"unreadable file ({exc.strerror or exc})") from exc
    if not data:
        raise Reject("empty file (0 bytes)")
    return data


def check_size(w: int, h: int, file_bytes: int, max_megapixels: float) -> None:
    pixels = w * h
    if pixels > max_megapixels * 1e6:
        raise Reject(f"too large ({w}x{h} = {pixels} pixels > data.max_megapixels {max_megapixels:g} M)")
    if pixels > BOMB_FLOOR_PIXELS and pixels > BOMB_PIXELS_PER_BYTE * file_bytes:
        raise Reject(f"too large ({w}x{h} pixels from a {file_bytes}-byte file: a decompression bomb)")


def _open(data: bytes, formats) -> Image.Image:
    return Image.open(io.BytesIO(data), formats=formats)


def _open_as_extension(data: bytes, path: Path) -> Image.Image:
    """Open with the decoder the extension names; content of another known format is a Reject."""
    expected = EXT_TO_FORMAT[path.suffix.lower()]
    try:
        return _open(data, [expected])   # camera MPO files open through "JPEG"
    except Image.UnidentifiedImageError:
        try:
            actual = _open(data, _PIL_FORMATS).format
        except Exception:  # noqa: BLE001 - not an image at all: the caller's generic reason
            raise Image.UnidentifiedImageError(str(path)) from None
        actual = "JPEG" if actual == "MPO" else actual
        raise Reject(f"content is {actual} but the extension is {path.suffix} (rename the file)") from None


def load_pil(data: bytes, path: Path, s: DecodeSettings, notes: list[str]) -> tuple[Image.Image, tuple[int, int]]:
    """Open, check the header size, verify, reopen and fully load one file (never partially)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        im = _open_as_extension(data, path)
        w, h = im.size
        check_size(w, h, len(data), s.max_megapixels)
        if im.format == "PNG":  # the only format whose verify() checks anything: chunk CRCs,
            im.verify()  # which load() skips; verify() consumes the image, so open it again
            im = _open_as_extension(data, path)
        if im.format in ("JPEG", "MPO"):
            # libjpeg decodes at 1/2..1/8 scale when that still covers the target (big photos)
            im.draft(None, (s.image_size, s.image_size))
            if im.size != (w, h):
                notes.append(f"JPEG decoded at {im.size[0]}x{im.size[1]} (reduced-size decoding)")
        im.load()
    notes.extend(f"decoder warning: {warning.message}" for warning in caught)
    return im, (w, h)


def _pil_to_array(im: Image.Image, notes: list[str]) -> Image.Image | np.ndarray:
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
        return convert_mode(im, notes)


def read_bands(data: bytes, path: Path, s: DecodeSettings) -> tuple[np.ndarray, tuple[int, int]]:
    if path.suffix.lower() == ".npy":
        shape, dtype = bands.npy_shape(data)
        bands.check_dtype(dtype)   # from the header: an object array is refused before np.load sees it
        _, h, w = bands.band_layout(shape)
        check_size(w, h, len(data), s.max_megapixels)
        return bands.read_npy(data), (w, h)
    (_, h, w), _ = bands.tiff_layout(data)
    check_size(w, h, len(data), s.max_megapixels)
    return bands.read_tiff(data), (w, h)


def tiff_beyond_pil(data: bytes) -> bool:
    """A TIFF PIL cannot open, or opens only as float/32-bit: read it through tifffile."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _open(data, ["TIFF"]).mode in ("F", "I;32", "I;32B", "I;32L")
    except Exception:  # noqa: BLE001 - multi-band or unknown: tifffile decides (or rejects)
        return True


def decode_file(path: Path, s: DecodeSettings) -> tuple[np.ndarray, list[str]]:
    """One file -> uint8 [C, S, S] plus conversion notes; raises Reject (or a decoder error) when unusable."""
    path = Path(path)
    data = read_file(path)
    notes: list[str] = []
    if path.suffix.lower() == ".npy" or (path.suffix.lower() in (".tif", ".tiff") and tiff_beyond_pil(data)):
        try:
            array, original = read_bands(data, path, s)
        except bands.BandError as err:
            raise Reject(str(err)) from None
        if array.dtype != np.uint8:
            notes.append(f"{array.dtype} -> 8-bit" + (" (per-channel range of the training pool)" if s.ranges else ""))
        pixels = bands.to_uint8(array, list(s.ranges) if s.ranges else None)
    else:
        im, original = load_pil(data, path, s, notes)
        pixels = _pil_to_array(im, notes)
        if isinstance(pixels, np.ndarray):   # deep grayscale: scaled like any deep source
            notes.append("16-bit -> 8-bit" + (" (per-channel range of the training pool)" if s.ranges else ""))
            pixels = bands.to_uint8(pixels, list(s.ranges) if s.ranges else None)
    pixels = match_channels(pixels, s.channels, notes)
    return resize(pixels, s.image_size, s.resize, original, notes), notes


def resize(pixels: Image.Image | np.ndarray, size: int, policy: str, original: tuple[int, int],
           notes: list[str]) -> np.ndarray:
    """L/RGB image or uint8 [C, H, W] -> uint8 [C, size, size] by `policy` (see the module docstring)."""
    layers = [pixels] if isinstance(pixels, Image.Image) else [Image.fromarray(band, "L") for band in pixels]
    w, h = layers[0].size
    if (w, h) != (size, size):
        layers = [_resize_layer(layer, size, policy) for layer in layers]
        how = {"crop": " (centre crop)", "pad": " (padded)", "squash": " (squashed)"}[policy]
        notes.append(f"resized {original[0]}x{original[1]} -> {size}x{size}" + ("" if original[0] == original[1] else how))
    arrays = [np.asarray(layer, dtype=np.uint8) for layer in layers]
    if len(arrays) == 1 and arrays[0].ndim == 3:
        return np.ascontiguousarray(arrays[0].transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(arrays))


def _resize_layer(im: Image.Image, size: int, policy: str) -> Image.Image:
    w, h = im.size
    if policy == "squash" or w == h:
        return im.resize((size, size), Image.Resampling.BICUBIC)
    if policy == "crop":
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        return im.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)
    scale = size / max(w, h)
    inner = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC)
    canvas = Image.new(im.mode, (size, size), 0)
    canvas.paste(inner, ((size - inner.size[0]) // 2, (size - inner.size[1]) // 2))
    return canvas


def reason(exc: BaseException) -> str:
    """The quarantine reason for an exception raised while decoding one file."""
    if isinstance(exc, Reject):
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
                  progress: Callable[[int, int], None] | None = None, resize: str = "crop",
                  ranges: tuple[tuple[float, float], ...] | None = None) -> ImageSet:
    """Decode `items` [(path, label)] in order into memory (predict, tests; prepare streams to shards).

    Unusable files go to `rejected` with a reason and the run continues; conversions are noted.
    `progress(done, total)` is called about every 1 % and once at the end.
    """
    settings = DecodeSettings(image_size, channels, resize, ranges=ranges)
    root = Path(root)
    total = len(items)
    images = np.empty((total, channels, image_size, image_size), dtype=np.uint8)
    out = ImageSet(images, np.zeros(0, np.int64), [], [])
    labels: list[int] = []
    step = max(1, -(-total // 100))  # about 100 calls in all
    for i, (path, label) in enumerate(items):
        rel = relative_posix(Path(path), root)
        try:
            arr, file_notes = decode_file(Path(path), settings)
        except Exception as exc:  # noqa: BLE001 - one bad file must never stop the run
            out.rejected.append(Rejected(rel, reason(exc)))
        else:
            images[len(out.paths)] = arr
            labels.append(int(label))
            out.paths.append(rel)
            out.content_hash.append(hashlib.sha1(arr.tobytes()).hexdigest())
            out.notes.extend(Note(rel, n) for n in file_notes)
        if progress is not None and ((i + 1) % step == 0 or i + 1 == total):
            progress(i + 1, total)
    kept = len(out.paths)
    out.images = images if kept == total else images[:kept].copy()
    out.labels = np.asarray(labels, dtype=np.int64)
    return out


# ----------------------------------------------------------------------------- helpers
def band_count(path: Path) -> int | None:
    """1 (grayscale), 3 (colour) or the band count of a multi-band file; None when it cannot be read."""
    try:
        data = read_file(Path(path))
        suffix = Path(path).suffix.lower()
        if suffix == ".npy":
            return bands.band_layout(bands.npy_shape(data)[0])[0]
        if suffix in (".tif", ".tiff") and tiff_beyond_pil(data):
            return bands.tiff_layout(data)[0][0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = _open_as_extension(data, Path(path))
            w, h = im.size
            check_size(w, h, len(data), 200.0)
            if im.mode in DEEP_MODES or im.mode in ("1", "L", "LA", "La"):
                return 1
            if im.mode not in ("RGB", "RGBA", "RGBX", "P", "PA"):
                return 3   # CMYK, YCbCr, LAB, HSV: colour
            if im.format in ("JPEG", "MPO"):
                im.draft("RGB", (64, 64))  # a small decode is enough to judge the colours
            rgb = np.asarray(im.convert("RGB"))
        gray = np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])
        return 1 if gray else 3
    except Exception:  # noqa: BLE001 - unreadable files are judged (and rejected) by the decoder
        return None


def detect_channels(paths: list[Path], sample: int = 200) -> int:
    """Over a seeded sample of the readable files: their band count when any has more than 3, else 1 if
    every one is grayscale (L/LA/1/16-bit modes, or RGB/palette with R == G == B), else 3 (also when
    nothing is readable)."""
    chosen = list(paths) if len(paths) <= sample else random.Random(0).sample(list(paths), sample)
    counts = [c for c in (band_count(Path(p)) for p in chosen) if c is not None]
    if any(c > 3 for c in counts):
        return max(counts)
    return 1 if counts and all(c == 1 for c in counts) else 3


def has_colour(paths: list[Path], sample: int = 200) -> bool:
    """True when some readable image of a seeded sample is colour (unreadable files give no verdict)."""
    chosen = list(paths) if len(paths) <= sample else random.Random(0).sample(list(paths), sample)
    return any((band_count(Path(p)) or 1) > 1 for p in chosen)


def find_duplicates(a_hashes: list[str], b_hashes: list[str]) -> list[tuple[int, int]]:
    """All (i, j) with a_hashes[i] == b_hashes[j] (identical decoded pixels), sorted."""
    where: dict[str, list[int]] = {}
    for i, h in enumerate(a_hashes):
        where.setdefault(h, []).append(i)
    return sorted((i, j) for j, h in enumerate(b_hashes) for i in where.get(h, ()))
