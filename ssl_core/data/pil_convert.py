"""Pixel modes to what the cache holds: PIL's many modes to 8-bit L or RGB (deep grayscale to an array
that is scaled like any deep source), and a decoded image to the data set's channel count."""
from __future__ import annotations

import numpy as np
from PIL import Image

DEEP_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}


class Reject(Exception):
    """A file is unusable; the message is the quarantine reason."""


def _composite_alpha(im: Image.Image, base_mode: str, notes: list[str], label: str) -> Image.Image:
    rgba = im.convert("RGBA" if base_mode == "RGB" else "LA")
    alpha = rgba.getchannel("A")
    base = rgba.convert(base_mode)
    if alpha.getextrema() == (255, 255):
        notes.append(f"{label} -> {base_mode} (opaque alpha dropped)")
        return base
    notes.append(f"{label} -> {base_mode} (alpha composited on black)")
    return Image.composite(base, Image.new(base_mode, base.size, 0), alpha)


def convert_mode(im: Image.Image, notes: list[str]) -> Image.Image | np.ndarray:
    """Any decoded mode -> 8-bit L or RGB; 16/32-bit grayscale -> uint16 [1, H, W] (scaled later)."""
    mode = im.mode
    if mode in ("L", "RGB"):
        return im
    if mode == "1":
        notes.append("1-bit -> 8-bit")
        return im.convert("L")
    if mode in DEEP_MODES:
        return np.clip(np.asarray(im).astype(np.int64), 0, 65535).astype(np.uint16)[None]
    if mode in ("LA", "La"):
        return _composite_alpha(im, "L", notes, "LA")
    if mode in ("RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in im.info):
        return _composite_alpha(im, "RGB", notes, mode)
    if mode in ("P", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        notes.append(f"{'palette' if mode == 'P' else mode} -> RGB")
        return im.convert("RGB")
    raise Reject(f"unsupported pixel mode {mode}")


def match_channels(pixels: Image.Image | np.ndarray, channels: int, notes: list[str]) -> Image.Image | np.ndarray:
    """An L/RGB image or uint8 [C, H, W] -> `channels` channels (grey replicated, colour to luma);
    any other mismatch (e.g. a 3-band file in a 13-band set) is a Reject."""
    if isinstance(pixels, np.ndarray):
        have = pixels.shape[0]
        if have in (1, 3) and channels in (1, 3) and have != channels:
            mode = "L" if have == 1 else "RGB"
            pixels = Image.fromarray(pixels[0] if have == 1 else pixels.transpose(1, 2, 0), mode)
        elif have != channels:
            raise Reject(f"{have} channel(s) but the data set has {channels} (data.channels)")
        else:
            return pixels
    have = 1 if pixels.mode == "L" else 3
    if channels == have:
        return pixels
    if channels == 3:
        notes.append("grayscale in colour set -> replicated to 3 channels")
        return pixels.convert("RGB")
    if channels == 1:
        rgb = np.asarray(pixels)
        if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
            notes.append("colour in grayscale set -> converted to luma")
        return pixels.convert("L")
    raise Reject(f"{have} channel(s) but the data set has {channels} (data.channels)")
