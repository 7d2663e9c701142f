"""pretrain.init through the real pretrain stage: a run started from a saved encoder continues from it
(its first epoch's kNN monitor is the saved encoder's kNN, not a random encoder's), and where the weights
came from is recorded in MLflow and encoder.json; weights that do not fit fail before anything is written."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
import torch.nn.functional as F


def _prepared(tmp_path, **overrides):
    from ssl_pipeline.config.schema import load_params
    from ssl_pipeline.ingest.prepare import prepare
    from workspace import write_params, write_tiny_images

    # noisy stripes: a random encoder's kNN is far from a trained one's, so "continues from it" is visible
    write_tiny_images(tmp_path / "data/raw", classes=4, train_per_class=40, noise=60)
    write_params(tmp_path, {"pretrain.device": "cpu", "pretrain.stem_stride": 1, **overrides})
    params = load_params(tmp_path / "params.yaml")
    prepare(params, tmp_path)
    return params


def _supervised_encoder(params, root):
    """An encoder trained on the labels (what a user's good weights are), saved in torchvision's names."""
    from ssl_core.data.cache import load_meta, load_split
    from ssl_core.models import Classifier
    from ssl_pipeline.recipes import encoder_spec
    from ssl_core.models.spec import build_encoder

    prepared = root / params.data.prepared_dir
    train = load_split(prepared, "train")
    torch.manual_seed(1)
    model = Classifier(build_encoder(encoder_spec(params, load_meta(prepared))), 4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        loss = F.cross_entropy(model(train.images[0:len(train)].float() / 255), train.labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    (root / "weights").mkdir()
    torch.save({k[len("backbone.trunk."):]: v for k, v in model.state_dict().items() if k.startswith("backbone.")},
               root / "weights/start.pt")
    return model.backbone.eval()


def _monitor_knn(params, root, encoder) -> float:
    from ssl_core.data.cache import load_meta, load_split
    from ssl_core.evaluation.protocols import knn_accuracy

    prepared = root / params.data.prepared_dir
    return knn_accuracy(encoder, load_split(prepared, "train"), load_split(prepared, "val"),
                        load_meta(prepared)["num_classes"], torch.device("cpu"), params.pretrain.knn_k)


def test_a_run_from_a_saved_encoder_continues_from_it(tmp_path, mlflow_uri):
    from mlflow.tracking import MlflowClient

    from ssl_core.data.cache import load_meta
    from ssl_core.fsutil import file_sha256
    from ssl_core.recipes import build_method
    from ssl_pipeline import outputs
    from ssl_pipeline.config.schema import load_params
    from ssl_pipeline.recipes import pretrain_recipe
    from ssl_pipeline.stages import pretrain

    params = _prepared(tmp_path)
    saved = _monitor_knn(params, tmp_path, _supervised_encoder(params, tmp_path))
    meta = load_meta(tmp_path / params.data.prepared_dir)
    random = _monitor_knn(params, tmp_path, build_method(pretrain_recipe(params, meta)).backbone)
    assert saved - random >= 0.2, (saved, random)   # the test can tell the two apart

    from workspace import write_params
    write_params(tmp_path, {"pretrain.device": "cpu", "pretrain.stem_stride": 1, "pretrain.init": "weights/start.pt"})
    params = load_params(tmp_path / "params.yaml")
    pretrain.run(params, tmp_path)

    first_epoch = pd.read_csv(tmp_path / outputs.CURVE_CSV)["knn_accuracy"].iloc[0]
    assert abs(first_epoch - saved) <= 0.1 < abs(first_epoch - random), (first_epoch, saved, random)
    sha256 = file_sha256(tmp_path / "weights/start.pt")
    record = json.loads((tmp_path / outputs.ENCODER_JSON).read_text())["init"]
    assert record == {"source": "weights/start.pt", "resolved": str((tmp_path / "weights/start.pt").resolve()),
                      "sha256": sha256}
    client = MlflowClient(mlflow_uri)
    run = client.search_runs([client.get_experiment_by_name(params.tracking.experiment).experiment_id])[0]
    assert run.data.tags["init.sha256"] == sha256 and run.data.tags["init.source"] == "weights/start.pt"
    assert run.data.params["pretrain.init"] == "weights/start.pt"


def test_weights_that_do_not_fit_fail_before_anything_is_written(tmp_path, mlflow_uri):
    from mlflow.tracking import MlflowClient

    from ssl_core.models.spec import EncoderSpec, build_encoder
    from ssl_pipeline import outputs
    from ssl_pipeline.errors import StageError
    from ssl_pipeline.stages import pretrain

    params = _prepared(tmp_path, **{"pretrain.init": "other.pt"})
    torch.save(build_encoder(EncoderSpec("resnet_narrow", 1, 16, True, 1, 8, "simclr")).state_dict(),
               tmp_path / "other.pt")
    with pytest.raises(StageError, match=r"^pretrain.init: other.pt does not fit the resnet_narrow encoder: shapes "
                                         r"differ: conv1.weight \[8, 1, 3, 3\] in the file, \[4, 1, 3, 3\]"):
        pretrain.run(params, tmp_path)
    assert not (tmp_path / outputs.ENCODER_PT).exists()
    assert MlflowClient(mlflow_uri).get_experiment_by_name(params.tracking.experiment) is None   # no run started
