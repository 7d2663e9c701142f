"""ssl_core.data.images (decoding and validation) against real files written with PIL or raw bytes."""
from __future__ import annotations

import hashlib
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from image_files import RNG, reasons, rgb, save
from ssl_core.data import images as im_mod
from ssl_core.data.images import decode_images, detect_channels, find_duplicates
from ssl_core.data.listing import IMAGE_EXTENSIONS, list_unlabeled


def decode(tmp_path: Path, paths: list[Path], size: int = 8, channels: int = 3):
    return decode_images([(p, -1) for p in paths], tmp_path, size, channels)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


# ----------------------------------------------------------------------------- bad files
def test_bad_files_are_rejected_and_the_run_continues(tmp_path):
    good = save(tmp_path / "good.png", rgb())
    png = io.BytesIO()
    Image.fromarray(rgb(32, 32)).save(png, "PNG")
    jpg = io.BytesIO()
    Image.fromarray(rgb(32, 32)).save(jpg, "JPEG")
    files = {
        "zero.png": b"",
        "trunc.png": png.getvalue()[: len(png.getvalue()) // 2],
        "trunc.jpg": jpg.getvalue()[: len(jpg.getvalue()) // 2],
        "text.png": b"this is not an image\n",
        "gif_inside.png": b"GIF89a\x01\x00\x01\x00\x00\x00\x00;",
        "eps_inside.jpg": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n",
    }
    paths = [good]
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        paths.append(tmp_path / name)
    out = decode(tmp_path, paths)
    assert out.paths == ["good.png"] and out.images.shape == (1, 3, 8, 8)
    got = reasons(out.rejected)
    assert got["zero.png"] == "empty file (0 bytes)"
    assert got["trunc.png"].startswith("truncated or corrupt image")
    assert got["trunc.jpg"].startswith("truncated or corrupt image")
    for name in ["text.png", "gif_inside.png", "eps_inside.jpg"]:
        assert got[name].startswith("not a readable image"), name


def test_corrupt_crc_png_is_rejected(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(rgb()).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[-20] ^= 0xFF  # inside the IDAT CRC / data: load() alone would not notice a CRC change
    (tmp_path / "crc.png").write_bytes(bytes(data))
    out = decode(tmp_path, [tmp_path / "crc.png"])
    assert out.paths == [] and out.rejected[0].reason.startswith("truncated or corrupt image")


def test_decompression_bomb_rejected_from_the_header(tmp_path):
    # A valid 8000x8000 1-bit PNG (64 Mpx) of a few kB: rejected before any pixel is decoded.
    w = h = 8000
    raw = zlib.compress((b"\0" + b"\0" * (w // 8)) * h, 9)
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", raw) + png_chunk(b"IEND", b"")
    (tmp_path / "bomb.png").write_bytes(data)
    # Header claiming 30000x30000 (past PIL's own bomb limit) with no pixel data at all.
    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    liar = png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + png_chunk(b"IEND", b"")
    (tmp_path / "liar.png").write_bytes(b"\x89PNG\r\n\x1a\n" + liar)
    with Image.open(tmp_path / "bomb.png") as probe:  # it really is a readable image
        assert probe.size == (w, h)
    out = decode(tmp_path, [tmp_path / "bomb.png", tmp_path / "liar.png"])
    got = reasons(out.rejected)
    assert got["bomb.png"].startswith("too large") and "8000x8000" in got["bomb.png"]
    assert got["liar.png"].startswith("too large")


def test_file_size_limit(tmp_path, monkeypatch):
    save(tmp_path / "a.png", rgb(16, 16))
    monkeypatch.setattr(im_mod, "MAX_FILE_BYTES", 10)
    out = decode(tmp_path, [tmp_path / "a.png"])
    assert out.rejected[0].reason.startswith("too large (file of")


def test_float_tiff_comes_through_tifffile_scaled_by_its_range(tmp_path):
    # PIL holds one-band float TIFFs only as mode F: they are read by tifffile and scaled like any deep
    # source (no range given: floats are taken as [0, 1]).
    values = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(values, "F").save(tmp_path / "f.tif")
    img, notes = one(tmp_path, tmp_path / "f.tif", channels=1)
    assert np.array_equal(img[0], np.rint(values.astype(np.float64) * 255).astype(np.uint8))
    assert notes == ["float32 -> 8-bit"]
    Image.fromarray(np.full((8, 8), np.nan, np.float32), "F").save(tmp_path / "nan.tif")
    assert reasons(decode(tmp_path, [tmp_path / "nan.tif"], channels=1).rejected) == {
        "nan.tif": "non-finite pixel values (NaN or infinity)"}


# ----------------------------------------------------------------------------- conversions
def one(tmp_path: Path, path: Path, size: int = 8, channels: int = 3):
    out = decode(tmp_path, [path], size, channels)
    assert out.rejected == [], out.rejected
    return out.images[0], [n.note for n in out.notes]


def test_exact_size_rgb_and_gray_are_unchanged(tmp_path):
    a, g = rgb(), RNG.integers(0, 256, (8, 8), dtype=np.uint8)
    img, notes = one(tmp_path, save(tmp_path / "a.png", a))
    assert notes == [] and np.array_equal(img, a.transpose(2, 0, 1))
    img, notes = one(tmp_path, save(tmp_path / "g.png", g), channels=1)
    assert notes == [] and np.array_equal(img[0], g)
    for name in ["b.bmp", "t.tif"] + (["w.webp"] if ".webp" in IMAGE_EXTENSIONS else []):
        kw = {"lossless": True} if name.endswith(".webp") else {}
        img, notes = one(tmp_path, save(tmp_path / name, a, **kw))
        assert notes == [] and np.array_equal(img, a.transpose(2, 0, 1)), name


def test_sixteen_bit_png(tmp_path):
    v = RNG.integers(0, 256, (8, 8), dtype=np.uint16)
    path = save(tmp_path / "deep.png", v * 257)
    with Image.open(path) as check:
        assert check.mode.startswith("I")
    img, notes = one(tmp_path, path, channels=1)
    assert np.array_equal(img[0], v) and notes == ["16-bit -> 8-bit"]


def test_palette_images(tmp_path):
    p = Image.fromarray(rgb()).quantize(16)
    p.save(tmp_path / "p.png")
    img, notes = one(tmp_path, tmp_path / "p.png")
    assert np.array_equal(img, np.asarray(p.convert("RGB")).transpose(2, 0, 1))
    assert notes == ["palette -> RGB"]
    idx = np.asarray(p)
    p.save(tmp_path / "pt.png", transparency=int(idx[0, 0]))
    img, notes = one(tmp_path, tmp_path / "pt.png")
    expected = np.asarray(p.convert("RGB")).copy()
    expected[idx == idx[0, 0]] = 0  # the transparent index lands on black
    assert np.array_equal(img, expected.transpose(2, 0, 1))
    assert notes == ["P -> RGB (alpha composited on black)"]


def test_alpha_is_composited_on_black(tmp_path):
    colour, alpha = rgb(), RNG.integers(0, 256, (8, 8, 1), dtype=np.uint8)
    img, notes = one(tmp_path, save(tmp_path / "a.png", np.concatenate([colour, alpha], 2)))
    reference = colour.astype(float) * alpha / 255
    assert np.abs(img.transpose(1, 2, 0) - reference).max() <= 1
    assert notes == ["RGBA -> RGB (alpha composited on black)"]
    opaque = np.concatenate([colour, np.full((8, 8, 1), 255, np.uint8)], 2)
    img, notes = one(tmp_path, save(tmp_path / "o.png", opaque))
    assert np.array_equal(img.transpose(1, 2, 0), colour) and notes == ["RGBA -> RGB (opaque alpha dropped)"]
    gray = RNG.integers(0, 256, (8, 8), dtype=np.uint8)
    la = Image.merge("LA", [Image.fromarray(gray), Image.fromarray(alpha[..., 0])])
    la.save(tmp_path / "la.png")
    img, notes = one(tmp_path, tmp_path / "la.png", channels=1)
    assert np.abs(img[0] - gray.astype(float) * alpha[..., 0] / 255).max() <= 1
    assert notes == ["LA -> L (alpha composited on black)"]


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (8, 8), (255, 0, 0, 0)).save(tmp_path / "c.jpg", quality=100)  # pure cyan
    img, notes = one(tmp_path, tmp_path / "c.jpg")
    assert np.abs(img.reshape(3, -1).mean(1) - [0, 255, 255]).max() < 4
    assert notes == ["CMYK -> RGB"]


def test_gray_in_colour_set_and_colour_in_gray_set(tmp_path):
    g = RNG.integers(0, 256, (8, 8), dtype=np.uint8)
    img, notes = one(tmp_path, save(tmp_path / "g.png", g), channels=3)
    assert np.array_equal(img, np.stack([g, g, g])) and notes == ["grayscale in colour set -> replicated to 3 channels"]
    a = rgb()
    img, notes = one(tmp_path, save(tmp_path / "c.png", a), channels=1)
    luma = a @ np.array([0.299, 0.587, 0.114])
    assert np.abs(img[0] - luma).max() <= 1 and notes == ["colour in grayscale set -> converted to luma"]
    img, notes = one(tmp_path, save(tmp_path / "rgbgray.png", np.stack([g, g, g], 2)), channels=1)
    assert np.array_equal(img[0], g) and notes == []
    bits = RNG.integers(0, 2, (8, 8)).astype(bool)
    Image.fromarray(bits).save(tmp_path / "b.png")
    img, notes = one(tmp_path, tmp_path / "b.png", channels=1)
    assert np.array_equal(img[0], bits * 255) and notes == ["1-bit -> 8-bit"]


@pytest.mark.parametrize("shape,box", [((30, 40), (5, 0, 35, 30)), ((40, 30), (0, 5, 30, 35)),
                                       ((4, 4), (0, 0, 4, 4))])
def test_resize_shorter_side_then_centre_crop(tmp_path, shape, box):
    a = rgb(*shape)
    img, notes = one(tmp_path, save(tmp_path / "a.png", a))
    reference = Image.fromarray(a).crop(box).resize((8, 8), Image.Resampling.BICUBIC)
    assert np.array_equal(img, np.asarray(reference).transpose(2, 0, 1))
    h, w = shape
    assert notes == [f"resized {w}x{h} -> 8x8" + ("" if w == h else " (centre crop)")]


def test_big_jpeg_is_accepted_and_deterministic(tmp_path):
    yy, xx = np.mgrid[0:600, 0:800]
    smooth = np.stack([xx * 255 // 800, yy * 255 // 600, (xx + yy) * 255 // 1400], 2).astype(np.uint8)
    path = save(tmp_path / "photo.jpg", smooth, quality=95)
    first, notes = one(tmp_path, path, size=16)
    again, _ = one(tmp_path, path, size=16)
    assert np.array_equal(first, again)
    assert notes == ["JPEG decoded at 100x75 (reduced-size decoding)", "resized 800x600 -> 16x16 (centre crop)"]
    reference = Image.fromarray(smooth).crop((100, 0, 700, 600)).resize((16, 16), Image.Resampling.BICUBIC)
    assert np.abs(first.astype(int) - np.asarray(reference).transpose(2, 0, 1)).mean() < 4


def test_content_mismatch_multiframe_and_exif_orientation(tmp_path):
    a = rgb()
    (tmp_path / "really_jpeg.png").write_bytes((buf := io.BytesIO(), Image.fromarray(a).save(buf, "JPEG"))[0].getvalue())
    (tmp_path / "really_tiff.png").write_bytes((buf := io.BytesIO(), Image.fromarray(a).save(buf, "TIFF"))[0].getvalue())
    out = decode(tmp_path, [tmp_path / "really_jpeg.png", tmp_path / "really_tiff.png"])
    assert out.paths == [] and reasons(out.rejected) == {
        "really_jpeg.png": "content is JPEG but the extension is .png (rename the file)",
        "really_tiff.png": "content is TIFF but the extension is .png (rename the file)"}
    frames = [Image.fromarray(a), Image.fromarray(rgb())]
    frames[0].save(tmp_path / "multi.tif", save_all=True, append_images=frames[1:])
    img, notes = one(tmp_path, tmp_path / "multi.tif")
    assert np.array_equal(img, a.transpose(2, 0, 1)) and notes == ["2 frames -> first frame used"]
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    Image.fromarray(a).save(tmp_path / "rot.png", exif=exif)
    img, notes = one(tmp_path, tmp_path / "rot.png")
    assert np.array_equal(img, np.rot90(a, k=-1).transpose(2, 0, 1)) and notes == ["EXIF orientation applied"]


# ----------------------------------------------------------------------------- set level
def test_labels_paths_hashes_and_progress(tmp_path):
    a, b = save(tmp_path / "x" / "a.png", rgb()), save(tmp_path / "x" / "b.png", rgb())
    (tmp_path / "bad.png").write_bytes(b"nope")
    items = [(a, 0), (tmp_path / "bad.png", 1), (b, 2)] * 100
    calls: list[tuple[int, int]] = []
    out = decode_images(items, tmp_path, 8, 3, progress=lambda d, t: calls.append((d, t)))
    assert out.images.shape == (200, 3, 8, 8) and out.images.dtype == np.uint8
    assert out.labels.dtype == np.int64 and out.labels.tolist() == [0, 2] * 100
    assert out.paths == ["x/a.png", "x/b.png"] * 100 and len(out.rejected) == 100
    assert out.content_hash == [hashlib.sha1(i.tobytes()).hexdigest() for i in out.images]
    assert calls[-1] == (300, 300) and len(calls) <= 101
    assert [d for d, _ in calls] == sorted({d for d, _ in calls})
    again = decode_images(items, tmp_path, 8, 3)
    assert np.array_equal(out.images, again.images) and out.content_hash == again.content_hash
    unlabeled = decode_images([(a, -1)], tmp_path, 8, 3)
    assert unlabeled.labels.tolist() == [-1]
    empty = decode_images([], tmp_path, 8, 1)
    assert empty.images.shape == (0, 1, 8, 8) and empty.labels.shape == (0,)


def test_find_duplicates_matches_brute_force_and_real_leakage(tmp_path):
    a = ["h1", "h2", "h1", "h3"]
    b = ["h3", "h9", "h1"]
    brute = sorted((i, j) for i in range(len(a)) for j in range(len(b)) if a[i] == b[j])
    assert find_duplicates(a, b) == brute == [(0, 2), (2, 2), (3, 0)]
    pixels = rgb()
    train = decode(tmp_path, [save(tmp_path / "train.png", pixels), save(tmp_path / "other.png", rgb())])
    test = decode(tmp_path, [save(tmp_path / "test.bmp", pixels)])  # same pixels, other format
    assert find_duplicates(train.content_hash, test.content_hash) == [(0, 0)]


def test_detect_channels(tmp_path):
    g = RNG.integers(0, 256, (8, 8), dtype=np.uint8)
    gray = [save(tmp_path / "l.png", g), save(tmp_path / "rgbgray.png", np.stack([g, g, g], 2)),
            save(tmp_path / "deep.png", g.astype(np.uint16) * 257)]
    (tmp_path / "junk.png").write_bytes(b"junk")
    assert detect_channels(gray + [tmp_path / "junk.png"]) == 1
    colour = save(tmp_path / "c.png", rgb())
    assert detect_channels(gray + [colour]) == 3
    assert detect_channels([tmp_path / "junk.png"]) == 3  # nothing readable: assume colour
    many = gray * 50 + [colour]
    # A seeded sample: the same answer every time, and the sample really is limited.
    assert detect_channels(many, sample=10) == detect_channels(many, sample=10)
    assert detect_channels(many, sample=len(many)) == 3


def test_symlinked_file_decodes_and_vanished_file_is_reported(tmp_path):
    target = save(tmp_path / "sub" / "x.png", rgb())
    (tmp_path / "link.png").symlink_to(target)
    gone = save(tmp_path / "gone.png", rgb())
    files, _ = list_unlabeled(tmp_path)
    gone.unlink()  # vanished between listing and decoding
    out = decode(tmp_path, files)
    assert out.paths == ["link.png", "sub/x.png"] and np.array_equal(out.images[0], out.images[1])
    assert reasons(out.rejected) == {"gone.png": "unreadable file (No such file or directory)"}


def test_detect_channels_other_modes(tmp_path):
    g = RNG.integers(0, 256, (8, 8), dtype=np.uint8)
    gray_rgba = save(tmp_path / "ga.png", np.stack([g, g, g, g], 2))
    Image.fromarray(np.stack([g, g, g], 2)).quantize(8).save(tmp_path / "gp.png")
    assert detect_channels([gray_rgba, tmp_path / "gp.png"]) == 1
    Image.new("CMYK", (8, 8), (0, 0, 0, 255)).save(tmp_path / "k.jpg")
    assert detect_channels([gray_rgba, tmp_path / "k.jpg"]) == 3
