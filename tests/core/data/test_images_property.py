"""Property test: random or damaged bytes saved as images never crash decode_images, and whatever
it accepts is a genuinely decodable image (no silent acceptance of garbage)."""
from __future__ import annotations

import io
import tempfile
import warnings
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from ssl_core.data.images import decode_images


def _encoded(fmt: str, seed: int, mode: str) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    im = Image.fromarray(pixels).convert(mode)
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


VALID = {(fmt, mode): _encoded(fmt, 0, mode) for fmt in ("PNG", "JPEG") for mode in ("RGB", "L")}
VALID.update({("PNG", m): _encoded("PNG", 1, m) for m in ("RGBA", "P")})
HEADERS = [b"\x89PNG\r\n\x1a\n", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", b"\xff\xd8\xff\xe0",
           b"\xff\xd8\xff\xdb", b"BM", b"II*\x00", b"GIF89a"]


@st.composite
def damaged(draw) -> bytes:
    """A valid small PNG/JPEG with bytes flipped, cut short or spliced with noise."""
    data = bytearray(draw(st.sampled_from(sorted(VALID.items())))[1])
    how = draw(st.sampled_from(["flip", "truncate", "splice"]))
    if how == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= draw(st.integers(1, 255))
    elif how == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    else:
        i = draw(st.integers(0, len(data)))
        data[i:i] = draw(st.binary(min_size=1, max_size=64))
    return bytes(data)


payloads = st.one_of(
    st.binary(max_size=512),
    st.builds(lambda h, tail: h + tail, st.sampled_from(HEADERS), st.binary(max_size=512)),
    damaged(),
)


@settings(max_examples=100, deadline=None, database=None,  # no .hypothesis/ folder in the repo
          suppress_health_check=[HealthCheck.too_slow])
@given(files=st.lists(st.tuples(payloads, st.sampled_from([".png", ".jpg"])), min_size=1, max_size=4))
def test_random_bytes_never_crash_nor_slip_through(files):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        items = []
        for i, (data, ext) in enumerate(files):
            path = root / f"f{i}{ext}"
            path.write_bytes(data)
            items.append((path, i))
        out = decode_images(items, root, 8, 3)  # must not raise
        assert len(out.paths) + len(out.rejected) == len(items)
        assert sorted(out.paths + [r.path for r in out.rejected]) == sorted(p.name for p, _ in items)
        assert out.images.shape == (len(out.paths), 3, 8, 8)
        assert all(r.reason for r in out.rejected)
        for rel, label in zip(out.paths, out.labels):
            assert items[label][0].name == rel
            # An accepted file re-opens, verifies and fully decodes with plain PIL.
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(root / rel) as check:
                    check.verify()
                with Image.open(root / rel) as check:
                    check.load()
                    assert check.size[0] > 0 and check.size[1] > 0


def test_untouched_valid_payloads_are_accepted():
    # The generator's seeds themselves are good images: the property above is not vacuous.
    with tempfile.TemporaryDirectory() as tmp:
        items = []
        for i, ((fmt, mode), data) in enumerate(sorted(VALID.items())):
            path = Path(tmp) / f"v{i}.{fmt.lower()}"
            path.write_bytes(data)
            items.append((path, i))
        out = decode_images(items, Path(tmp), 8, 3)
        assert out.rejected == [] and len(out.paths) == len(VALID)
