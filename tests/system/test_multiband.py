"""13-band 16-bit TIFF and .npy tiles, end to end: `data import`, prepare (ranges measured and recorded),
pretrain, finetune, evaluate and predict, through the CLI as a user runs them; an RGB-only augmentation
asked for on those bands stops pretrain with one sentence naming the key."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import tifffile
from mlflow import MlflowClient

pytestmark = pytest.mark.slow
BANDS = 13


def write_tiles(folder, classes: int = 2, per_class: int = 14, size: int = 16) -> None:
    """Satellite-like tiles: each band its own 16-bit range; the class shifts bands 0-3 (learnable)."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        out = folder / f"class{c}"
        out.mkdir(parents=True)
        for i in range(per_class):
            base = rng.integers(0, 400, (BANDS, size, size)) + np.arange(BANDS)[:, None, None] * 1000
            base[:4] += 1500 * c
            tile = base.astype(np.uint16)
            if i % 2:
                tifffile.imwrite(out / f"{i:03d}.tif", tile, photometric="minisblack", planarconfig="separate")
            else:
                np.save(out / f"{i:03d}.npy", tile.transpose(1, 2, 0))


def test_13_band_tiles_pretrain_and_evaluate_end_to_end(tmp_path, monkeypatch, mlflow_uri, capsys):
    from fixtures_repo import make_workspace
    from workspace import write_params

    from ssl_pipeline.cli.main import main

    write_tiles(tmp_path / "tiles")
    root = make_workspace(tmp_path)
    write_params(root, {"data.image_size": 16, "pretrain.batch_size": 8, "finetune.batch_size": 8,
                        "data.label_fractions": [1.0], "finetune.protocols": ["linear"]})
    monkeypatch.chdir(root)
    assert main(["data", "import", str(tmp_path / "tiles"), "--as", "labeled"]) == 0
    for stage in ("prepare", "pretrain", "finetune", "evaluate"):
        assert main([stage]) == 0, stage
    meta = json.loads((root / "data/prepared/meta.json").read_text())
    assert meta["channels"] == BANDS and len(meta["channel_ranges"]) == BANDS
    client = MlflowClient(mlflow_uri)
    runs = {r.data.tags["mlflow.runName"]: r for r in client.search_runs(client.get_experiment_by_name(
        "ssl-pipeline").experiment_id)}
    assert json.loads(runs["prepare"].data.tags["data.channel_ranges"]) == [
        [round(a, 6), round(b, 6)] for a, b in meta["channel_ranges"]]
    table = pd.read_csv(root / "reports/label_efficiency.csv")
    assert table.accuracy.between(0, 1).all() and {"knn", "linear", "finetune"} <= set(table.protocol)
    encoder = json.loads((root / "models/encoder.json").read_text())
    assert encoder["in_channels"] == BANDS
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "tiles/class1"), "--model", "models/classifier.pt",
                 "--out", str(tmp_path / "preds.csv")]) == 0
    preds = pd.read_csv(tmp_path / "preds.csv")
    assert len(preds) == 14 and preds["error"].isna().all()

    # colour ops asked for on 13 bands: one sentence naming the key, before any training
    assert main(["pretrain", "--set", "pretrain.augment.gray_p=0.3"]) != 0
    err = capsys.readouterr().err
    assert "pretrain.augment.gray_p: grayscale is defined only for RGB (3-channel) images and the data has 13" in err
