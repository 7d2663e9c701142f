"""Nothing the project loads is unpickled as code: every torch.load is weights_only=True (checked
on the source), and crafted files whose unpickling would run a payload are refused by every loader
without the payload running."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

import crash_worker as cw

from fixtures_repo import PROJECT_ROOT as PROJECT
SOURCES = sorted(p for package in ("ssl_core", "ssl_pipeline", "flows") for p in PROJECT.joinpath(package).rglob("*.py"))
UNSAFE_CALLS = {"pickle.load", "pickle.loads", "cloudpickle.load", "dill.load", "joblib.load", "pd.read_pickle",
                "pandas.read_pickle", "torch.jit.load", "torch.serialization.load"}


def dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    return ""


def keyword_is_true(call: ast.Call, name: str) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is True for k in call.keywords)


def unsafe_loads(path: Path, base: Path = PROJECT) -> list[str]:
    problems = []
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        where = f"{path.relative_to(base)}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.ImportFrom) and node.module in ("torch", "pickle", "torch.serialization"):
            problems += [f"{where}: from {node.module} import {a.name}" for a in node.names if a.name in ("load", "loads")]
        if not isinstance(node, ast.Call):
            continue
        name = dotted(node.func)
        if name == "torch.load" and not keyword_is_true(node, "weights_only"):
            problems.append(f"{where}: torch.load without weights_only=True")
        elif name in UNSAFE_CALLS:
            problems.append(f"{where}: {name}")
        elif name in ("np.load", "numpy.load") and keyword_is_true(node, "allow_pickle"):
            problems.append(f"{where}: {name}(allow_pickle=True)")
    return problems


def test_every_load_in_the_project_is_weights_only():
    assert len(SOURCES) > 20
    assert sum("torch.load(" in p.read_text() for p in SOURCES) >= 4   # the scan sees the real loaders
    problems = [problem for path in SOURCES for problem in unsafe_loads(path)]
    assert problems == []


def test_the_scan_catches_unsafe_loads(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import torch, pickle\nfrom torch import load\n"
                   "a = torch.load('x')\nb = torch.load('x', weights_only=False)\nc = pickle.loads(b'')\n"
                   "d = torch.load('x', weights_only=True)\n")
    found = sorted(p.split(": ", 1)[1] for p in unsafe_loads(bad, tmp_path))
    assert found == ["from torch import load", "pickle.loads", "torch.load without weights_only=True",
                     "torch.load without weights_only=True"]


class Payload:
    """Unpickling this runs code: it writes `marker`. A file holding it is a malicious checkpoint."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('payload ran')",))


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "PAYLOAD_RAN"
    yield path
    assert not path.exists(), "a project loader unpickled the payload"


def plant(path: Path, marker: Path, wrap=lambda payload: payload) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(wrap(Payload(marker)), path)
    return path


def test_the_payload_is_live_for_a_plain_unpickler(tmp_path):
    marker = tmp_path / "ran"
    torch.load(plant(tmp_path / "evil.pt", marker), weights_only=False)
    assert marker.read_text() == "payload ran"


def test_a_malicious_checkpoint_is_refused_and_training_starts_fresh(tmp_path, marker, caplog):
    from ssl_core.training.checkpoint import FORMAT_VERSION, Checkpointer
    from ssl_core.training.optim import build_optimizer, warmup_cosine

    ckpt = Checkpointer(tmp_path / "ckpt", "fp")
    plant(ckpt.path, marker, lambda p: {"format": FORMAT_VERSION, "fingerprint": ckpt.fingerprint, "method": p})
    assert ckpt.resume_info() is None and "unreadable" in caplog.text
    method = cw.build("simclr")
    optimizer = build_optimizer(method, "adamw", 1e-3, 0)
    assert ckpt.restore(method, optimizer, warmup_cosine(optimizer, 0, 10)) is None


def test_a_malicious_data_cache_is_refused(tmp_path, marker):
    # The cache's split files are .npy row lists, read with allow_pickle=False: an object array whose
    # element runs code when unpickled is refused (as are the .npy tiles prepare decodes).
    import numpy as np

    from ssl_core.data.cache import load_split, save_split
    from ssl_core.data.images import DecodeSettings, decode_file
    from ssl_core.data.pil_convert import Reject

    prepared = tmp_path / "prepared"
    save_split(prepared / "unlabeled.pt", np.zeros((2, 1, 4, 4), np.uint8), np.full(2, -1))
    evil = np.empty(1, dtype=object)
    evil[0] = Payload(marker)
    np.save(prepared / "unlabeled.rows.npy", evil, allow_pickle=True)
    with pytest.raises(ValueError, match="allow_pickle=False"):
        load_split(prepared, "unlabeled")
    tile = np.empty((4, 4), dtype=object)
    tile[:] = Payload(marker)
    np.save(tmp_path / "tile.npy", tile, allow_pickle=True)
    with pytest.raises(Reject, match="unsupported pixel type object"):
        decode_file(tmp_path / "tile.npy", DecodeSettings(4, 1))


def test_a_malicious_encoder_or_classifier_file_is_refused(tmp_path, marker):
    from ssl_pipeline.serving.predict import load_predictor
    from ssl_core.models.spec import load_encoder

    spec = {"backbone": "resnet_narrow", "in_channels": 1, "image_size": 16, "small_stem": True, "stem_stride": 1,
            "width": 4, "method": "simclr"}
    (tmp_path / "models").mkdir()
    (tmp_path / "models/encoder.json").write_text(json.dumps(spec))
    plant(tmp_path / "models/encoder.pt", marker, lambda p: {"trunk.conv1.weight": p})
    with pytest.raises(Exception, match="(?i)weights.only"):
        load_encoder(tmp_path / "models/encoder.json", tmp_path / "models/encoder.pt")
    (tmp_path / "models/classifier.json").write_text(json.dumps({**spec, "num_classes": 3, "classes": ["a", "b", "c"]}))
    plant(tmp_path / "models/classifier.pt", marker)
    with pytest.raises(Exception, match="(?i)weights.only"):
        load_predictor(str(tmp_path / "models/classifier.pt"), tmp_path)


def test_a_pickled_mlflow_model_is_refused(tmp_path, marker):
    """The project logs pt2 models; a pickle-format MLflow model folder (e.g. handed to `predict`) is
    refused by the project's loader before MLflow sees it (tracking/model_loading.py)."""
    import mlflow

    from ssl_pipeline.serving.predict import load_predictor
    from ssl_pipeline.tracking.model_loading import UnsafeModelError

    folder = tmp_path / "evil-model"
    mlflow.pytorch.save_model(torch.nn.Linear(2, 2), str(folder), serialization_format="pickle")
    [weights] = list(folder.rglob("model.pth"))
    plant(weights, marker)
    with pytest.raises(UnsafeModelError, match="data folder holds model.pth"):
        load_predictor(str(folder), tmp_path)


def test_a_pt2_archive_carrying_a_pickle_is_refused_even_if_the_environment_allows_pickles(tmp_path, marker,
                                                                                           monkeypatch):
    """The folder has the project's shape, but a record of its pt2 archive is a pickle payload:
    MLflow's archive check refuses it, with pickle deserialization forced off for the project's loads."""
    import zipfile

    import mlflow
    import numpy as np

    from ssl_pipeline.serving.predict import load_predictor

    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    folder = tmp_path / "model"
    mlflow.pytorch.save_model(torch.nn.Linear(2, 2), str(folder), serialization_format="pt2",
                              input_example=np.zeros((2, 2), np.float32))
    archive = folder / "data" / "model.pt2"
    payload = plant(tmp_path / "payload.pt", marker)
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr("model/data/constants/tensor_evil", payload.read_bytes())
    with pytest.raises(FileNotFoundError, match="(?i)pickle"):
        load_predictor(str(folder), tmp_path)
