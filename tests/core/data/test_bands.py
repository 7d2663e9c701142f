"""Multi-band and large sources against straightforward references: 13-band 16-bit TIFF and .npy tiles,
per-channel ranges, the resize policies, reduced-size decoding of huge JPEGs, the size limits."""
from __future__ import annotations

import io

import numpy as np
import pytest
import tifffile
from PIL import Image

from image_files import RNG, reasons, rgb, save
from ssl_core.data import bands
from ssl_core.data.decode_task import ShardTask, decode_shard, sample_deep_pixels
from ssl_core.data.images import DecodeSettings, decode_file, decode_images, detect_channels
from ssl_core.data.pil_convert import Reject


def deep_bands(c=13, h=32, w=24, seed=0) -> np.ndarray:
    # each band with its own range, as satellite bands have
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 1000, (c, h, w)) + np.arange(c)[:, None, None] * 2000).astype(np.uint16)


def scaled(array: np.ndarray, ranges) -> np.ndarray:
    out = np.empty(array.shape, np.uint8)
    for c, (low, high) in enumerate(ranges):
        out[c] = np.clip(np.rint((array[c].astype(float) - low) * 255 / (high - low)), 0, 255)
    return out


def test_13_band_16_bit_tiff_scaled_by_per_channel_ranges(tmp_path):
    array = deep_bands(h=8, w=8)
    tifffile.imwrite(tmp_path / "tile.tif", array, photometric="minisblack", planarconfig="separate")
    ranges = tuple((float(c * 2000), float(c * 2000 + 999)) for c in range(13))
    pixels, notes = decode_file(tmp_path / "tile.tif", DecodeSettings(8, 13, ranges=ranges))
    assert pixels.shape == (13, 8, 8) and np.array_equal(pixels, scaled(array, ranges))
    assert notes == ["uint16 -> 8-bit (per-channel range of the training pool)"]
    # without measured ranges: the dtype's full range (16-bit: v / 257)
    pixels, _ = decode_file(tmp_path / "tile.tif", DecodeSettings(8, 13))
    assert np.array_equal(pixels, ((array.astype(np.uint32) + 128) // 257).astype(np.uint8))
    assert detect_channels([tmp_path / "tile.tif"]) == 13


@pytest.mark.parametrize("layout", ["chw", "hwc", "2d"])
def test_npy_tiles_in_any_layout(tmp_path, layout):
    array = RNG.integers(0, 256, (4, 8, 8), dtype=np.uint8)
    stored = {"chw": array, "hwc": array.transpose(1, 2, 0), "2d": array[0]}[layout]
    np.save(tmp_path / "t.npy", stored)
    c = 1 if layout == "2d" else 4
    pixels, notes = decode_file(tmp_path / "t.npy", DecodeSettings(8, c))
    assert np.array_equal(pixels, array[:c]) and notes == []


def test_bad_arrays_are_rejected_with_a_reason(tmp_path):
    np.save(tmp_path / "nan.npy", np.full((3, 4, 4), np.nan, np.float32))
    np.save(tmp_path / "wide.npy", np.zeros((20, 4, 20), np.uint8))
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(tmp_path / "bands.npy", np.zeros((5, 8, 8), np.uint8))
    (tmp_path / "junk.npy").write_bytes(b"\x93NUMPY garbage")
    paths = [tmp_path / n for n in ("nan.npy", "wide.npy", "objects.npy", "bands.npy", "junk.npy")]
    got = reasons(decode_images([(p, -1) for p in paths], tmp_path, 4, 3).rejected)
    assert got["nan.npy"] == "non-finite pixel values (NaN or infinity)"
    assert got["wide.npy"].startswith("array of shape (20, 4, 20) is not an image")
    assert "objects.npy" in got   # never unpickled
    assert got["bands.npy"] == "5 channel(s) but the data set has 3 (data.channels)"
    assert "junk.npy" in got


def test_measured_ranges_are_the_percentiles_of_the_pooled_samples(tmp_path):
    arrays = [deep_bands(seed=s) for s in range(3)]
    for k, a in enumerate(arrays):
        np.save(tmp_path / f"{k}.npy", a)
    settings = DecodeSettings(8, 13)
    samples = sample_deep_pixels(tuple(str(tmp_path / f"{k}.npy") for k in range(3)), settings, per_image=10_000)
    ranges = bands.measure_ranges(samples, (1.0, 99.0))
    pooled = np.concatenate([a.reshape(13, -1) for a in arrays], axis=1)
    assert np.allclose(ranges, np.percentile(pooled, [1.0, 99.0], axis=1).T)
    save(tmp_path / "eight_bit.png", rgb())
    assert sample_deep_pixels((str(tmp_path / "eight_bit.png"),), DecodeSettings(8, 3)) == []


@pytest.mark.parametrize("policy", ["pad", "squash"])
def test_resize_policies_against_pil(tmp_path, policy):
    a = rgb(20, 40)   # 40 wide, 20 high
    out, notes = decode_file(save(tmp_path / "a.png", a), DecodeSettings(8, 3, policy))
    im = Image.fromarray(a)
    if policy == "squash":
        reference = im.resize((8, 8), Image.Resampling.BICUBIC)
    else:
        reference = Image.new("RGB", (8, 8), 0)
        reference.paste(im.resize((8, 4), Image.Resampling.BICUBIC), (0, 2))
    assert np.array_equal(out, np.asarray(reference).transpose(2, 0, 1))
    assert notes == [f"resized 40x20 -> 8x8 ({'padded' if policy == 'pad' else 'squashed'})"]


def test_6000x4000_jpeg_is_decoded_at_reduced_size(tmp_path):
    yy, xx = np.mgrid[0:4000, 0:6000]
    photo = np.stack([xx * 255 // 6000, yy * 255 // 4000, (xx + yy) * 255 // 10000], 2).astype(np.uint8)
    path = save(tmp_path / "photo.jpg", photo, quality=90)
    out, notes = decode_file(path, DecodeSettings(96, 3))
    assert notes == ["JPEG decoded at 750x500 (reduced-size decoding)", "resized 6000x4000 -> 96x96 (centre crop)"]
    with Image.open(path) as im:
        im.draft("RGB", (96, 96))
        assert im.size == (750, 500)
        reference = im.convert("RGB").crop((125, 0, 625, 500)).resize((96, 96), Image.Resampling.BICUBIC)
    assert np.array_equal(out, np.asarray(reference).transpose(2, 0, 1))


def test_an_8000x8000_photo_passes_and_a_bomb_does_not(tmp_path):
    # a valid 64-megapixel camera-sized JPEG is an image, not a decompression bomb
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (500, 500, 3), dtype=np.uint8)
    big = Image.fromarray(small).resize((8000, 8000), Image.Resampling.BILINEAR)
    big.save(tmp_path / "big.jpg", quality=85)
    del big
    out, notes = decode_file(tmp_path / "big.jpg", DecodeSettings(32, 3))
    assert out.shape == (3, 32, 32) and notes[0] == "JPEG decoded at 1000x1000 (reduced-size decoding)"
    with pytest.raises(Reject, match="data.max_megapixels 50"):
        decode_file(tmp_path / "big.jpg", DecodeSettings(32, 3, max_megapixels=50))


def test_shard_task_streams_rows_and_reports_rejections(tmp_path):
    files = [save(tmp_path / "src" / f"{i}.png", rgb()) for i in range(3)]
    (tmp_path / "src" / "bad.png").write_bytes(b"nope")
    task = ShardTask(str(tmp_path), "shard-00000.u8",
                     ((str(files[0]), "k0"), (str(tmp_path / "src" / "bad.png"), "kb"), (str(files[1]), "k1")),
                     DecodeSettings(8, 3))
    result = decode_shard(task)
    assert [r[0] for r in result.rows] == ["k0", "k1"] and result.rejected[0][0] == "kb"
    data = np.frombuffer((tmp_path / "shard-00000.u8").read_bytes(), np.uint8).reshape(2, 3, 8, 8)
    first = np.asarray(Image.open(files[0])).transpose(2, 0, 1)
    assert np.array_equal(data[0], first) and not list(tmp_path.glob(".*partial*"))


def test_tiff_bytes_in_a_png_are_quarantined_naming_both(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(rgb()).save(buf, "TIFF")
    (tmp_path / "x.png").write_bytes(buf.getvalue())
    with pytest.raises(Reject, match=r"content is TIFF but the extension is \.png"):
        decode_file(tmp_path / "x.png", DecodeSettings(8, 3))
