"""The registered classifier as people use it: `mlflow models serve -m models:/ssl-classifier@champion`
answering a JSON request with image arrays, and `ssl-pipeline predict` with its default model."""
from __future__ import annotations

import csv
import io
import json
import os
import urllib.request

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from ssl_pipeline.cli import main as cli
from ssl_pipeline.serving import servers
from ssl_pipeline.tracking.models import log_torch_model
from ssl_core.models import Classifier, build_backbone
from ui_process import READY_S

pytestmark = pytest.mark.slow
CLASSES = ["circle", "square", "star"]


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    """A tiny classifier logged as the pipeline logs it (torch.export, signature, class names),
    registered as ssl-classifier with alias champion, in its own SQLite store."""
    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    torch.manual_seed(0)
    model = Classifier(build_backbone("resnet_narrow", 1, 16, small_stem=True, width=4), len(CLASSES))
    model.train()
    with torch.no_grad():   # non-trivial BatchNorm statistics
        model(torch.rand(16, 1, 16, 16))
    model.eval()
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment_name="serving")
    with mlflow.start_run():
        model_uri = log_torch_model(model, torch.rand(2, 1, 16, 16), "classifier", metadata={"classes": CLASSES})
    version = mlflow.register_model(model_uri, "ssl-classifier")
    MlflowClient(uri).set_registered_model_alias("ssl-classifier", "champion", version.version)
    mlflow.set_tracking_uri(None)
    return root, uri, model


def test_served_champion_answers_like_the_local_model(champion):
    root, uri, model = champion
    server = servers.start_model_server("models:/ssl-classifier@champion", root,
                                        env={**os.environ, "MLFLOW_TRACKING_URI": uri})
    try:
        server.wait_ready(READY_S)
        images = torch.rand(3, 1, 16, 16)
        body = json.dumps({"inputs": images.numpy().tolist()}).encode()
        request = urllib.request.Request(server.url + "/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as resp:
            served = np.asarray(json.loads(resp.read())["predictions"], dtype=np.float32)
    finally:
        server.stop()
    assert not servers.group_alive(server.pid)
    with torch.no_grad():
        expected = model(images).numpy()
    assert served.shape == (3, len(CLASSES))
    np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-5)


def test_predict_uses_the_registry_champion_and_its_class_names(champion, tmp_path, monkeypatch, capsys):
    _, uri, model = champion
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)    # no params.yaml here: the default name ssl-classifier is used
    arr = np.random.default_rng(3).integers(0, 256, (16, 16), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "digit.png")
    assert cli.main(["predict", "digit.png"]) == 0
    captured = capsys.readouterr()
    assert "models:/ssl-classifier@champion" in captured.err
    [row] = list(csv.DictReader(io.StringIO(captured.out)))
    with torch.no_grad():
        probs = torch.softmax(model(torch.from_numpy(arr).float()[None, None] / 255), dim=1)[0]
    assert row["class"] == CLASSES[int(probs.argmax())]
    assert float(row["confidence"]) == pytest.approx(float(probs.max()), abs=1e-4)

    assert cli.main(["predict", "digit.png", "--model", "models:/ssl-classifier@nobody"]) == 2
    assert "error: cannot load the model models:/ssl-classifier@nobody" in capsys.readouterr().err
