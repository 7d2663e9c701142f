"""`ssl-pipeline embed` streams: a folder larger than one chunk is written one Parquet row group per chunk,
with a local encoder file (no registry needed), and unreadable files are listed, not fatal."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

from ssl_core.embeddings.files import CHUNK
from ssl_core.models.spec import EncoderSpec, build_encoder
from ssl_pipeline.cli import main as cli


def test_a_big_folder_is_written_chunk_by_chunk(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = EncoderSpec("resnet_narrow", 1, 16, True, 2, 4, "simclr")
    torch.manual_seed(0)
    encoder = build_encoder(spec).eval()
    (tmp_path / "models").mkdir()
    torch.save(encoder.state_dict(), tmp_path / "models/encoder.pt")
    (tmp_path / "models/encoder.json").write_text(json.dumps(spec.to_dict()))
    rng = np.random.default_rng(0)
    (tmp_path / "photos").mkdir()
    for i in range(CHUNK + 44):
        Image.fromarray(rng.integers(0, 256, (20, 24), dtype=np.uint8)).save(tmp_path / f"photos/img_{i:04d}.png")
    (tmp_path / "photos/broken.png").write_bytes(b"not an image")
    code = cli.main(["embed", "photos", "--model", "models/encoder.pt", "--out", "out/e.parquet"])
    out = capsys.readouterr()
    assert code == 0 and f"{CHUNK + 44} embeddings of dimension {encoder.out_dim}, 1 file(s) skipped" in out.out
    assert "skipped broken.png" in out.err
    meta = pq.ParquetFile(tmp_path / "out/e.parquet").metadata
    # broken.png sorts first: the first chunk of CHUNK files holds CHUNK - 1 images
    assert meta.num_row_groups == 2 and meta.row_group(0).num_rows == CHUNK - 1 and meta.num_rows == CHUNK + 44
    table = pq.read_table(tmp_path / "out/e.parquet")
    assert set(table.column("split").to_pylist()) == {"folder"} and set(table.column("label").to_pylist()) == {""}
