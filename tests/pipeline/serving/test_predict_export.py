"""`ssl-pipeline predict` against a straightforward reference (PIL -> tensor -> model -> softmax),
and `ssl-pipeline export`: every exported form gives the original encoder's features."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_pipeline.cli import main as cli
from ssl_pipeline.serving.export import rebuild_snippet, torchvision_state_dict
from ssl_pipeline.tracking.models import record_logged_model
from ssl_core.models import Classifier
from ssl_core.models.spec import EncoderSpec, build_encoder as build_from_spec


def build_encoder(spec: dict) -> torch.nn.Module:
    return build_from_spec(EncoderSpec.from_dict(spec))

CLASSES = ["cat", "dog", "eel"]
SPEC = {"backbone": "resnet_narrow", "in_channels": 1, "image_size": 16, "small_stem": True, "stem_stride": 1,
        "width": 4, "method": "simclr"}


def _with_bn_statistics(model: torch.nn.Module, shape: tuple[int, ...]) -> torch.nn.Module:
    """Non-trivial BatchNorm running stats (so exports that drop buffers would be caught)."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(8, *shape) * 0.8 + 0.1)
    return model.eval()


def write_models(root: Path, spec: dict = SPEC) -> tuple[torch.nn.Module, Classifier]:
    """models/encoder.pt/.json and models/classifier.pt/.json as the pipeline writes them."""
    torch.manual_seed(0)
    shape = (spec["in_channels"], spec["image_size"], spec["image_size"])
    encoder = _with_bn_statistics(build_encoder(spec), shape)
    clf = Classifier(build_encoder(spec), len(CLASSES))
    clf.backbone.load_state_dict(encoder.state_dict())
    clf = _with_bn_statistics(clf, shape)
    (root / "models").mkdir(parents=True, exist_ok=True)
    torch.save(encoder.state_dict(), root / "models/encoder.pt")
    (root / "models/encoder.json").write_text(json.dumps(spec))
    record_logged_model(root, root / "models/encoder.pt", "r1", "models:/m-1")
    torch.save(clf.state_dict(), root / "models/classifier.pt")
    (root / "models/classifier.json").write_text(json.dumps({**spec, "num_classes": 3, "classes": CLASSES,
                                                             "test_accuracy": 0.5}))
    record_logged_model(root, root / "models/classifier.pt", "r2", "models:/m-2")
    return encoder, clf


def write_images(folder: Path, n: int = 5, size: int = 16) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    arrays = {}
    for i in range(n):
        sub = folder / ("nested" if i == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        arr = rng.integers(0, 256, (size, size), dtype=np.uint8)
        Image.fromarray(arr).save(sub / f"img{i}.png")
        arrays[str(sub / f"img{i}.png")] = arr
    return arrays


def reference(model: torch.nn.Module, arrays: dict[str, np.ndarray]) -> dict[str, tuple[str, float]]:
    out = {}
    with torch.no_grad():
        for path, arr in arrays.items():
            probs = torch.softmax(model(torch.from_numpy(arr).float()[None, None] / 255), dim=1)[0]
            out[path] = (CLASSES[int(probs.argmax())], float(probs.max()))
    return out


def test_predict_folder_matches_reference_and_reports_bad_files(tmp_path, capsys):
    _, clf = write_models(tmp_path)
    images = tmp_path / "images"
    arrays = write_images(images)
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (images / "empty.jpg").write_bytes(b"")
    out_csv = tmp_path / "preds.csv"

    code = cli.main(["predict", str(images), "--model", str(tmp_path / "models/classifier.pt"), "--out", str(out_csv)])
    assert code == 0
    captured = capsys.readouterr()
    printed = list(csv.DictReader(io.StringIO(captured.out)))
    expected = reference(clf, arrays)
    assert {r["path"] for r in printed} == set(expected)
    for row in printed:
        name, conf = expected[row["path"]]
        assert row["class"] == name
        assert float(row["confidence"]) == pytest.approx(conf, abs=1e-4)
    assert f"skipped {images / 'broken.png'}" in captured.err
    assert f"skipped {images / 'empty.jpg'}" in captured.err

    written = {r["path"]: r for r in csv.DictReader(out_csv.open())}
    assert set(written) == set(expected) | {str(images / "broken.png"), str(images / "empty.jpg")}
    assert written[str(images / "broken.png")]["error"] and not written[str(images / "broken.png")]["class"]
    assert all(written[p]["class"] == expected[p][0] for p in expected)


def test_predict_resizes_like_training_and_fails_cleanly(tmp_path, capsys):
    write_models(tmp_path)
    big = tmp_path / "big.jpg"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (40, 64, 3), dtype=np.uint8)).save(big)
    # A colour photo for a grayscale model: refused in one sentence, unless the conversion is asked for.
    assert cli.main(["predict", str(big), "--model", str(tmp_path / "models")]) == 2
    err = capsys.readouterr().err
    assert "takes grayscale (1-channel) images and" in err and "holds colour images" in err
    assert err.splitlines()[0].startswith("model: ") and "3 classes: cat, dog, eel" in err.splitlines()[0]
    assert cli.main(["predict", str(big), "--model", str(tmp_path / "models"), "--convert-to-gray"]) == 0
    [row] = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert row["class"] in CLASSES

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    assert cli.main(["predict", str(bad), "--model", str(tmp_path / "models/classifier.pt")]) == 1
    assert "0 classified, 1 skipped" in capsys.readouterr().err
    assert cli.main(["predict", str(big), "--model", str(tmp_path / "nope/classifier.pt")]) == 2
    assert "error: model file" in capsys.readouterr().err


@pytest.mark.parametrize("spec", [
    SPEC,
    {"backbone": "resnet18", "in_channels": 3, "image_size": 32, "small_stem": False, "width": 4},
    {"backbone": "resnet18", "in_channels": 3, "image_size": 16, "small_stem": True, "stem_stride": 2, "width": 4},
    {"backbone": "vit_tiny", "in_channels": 1, "image_size": 16, "small_stem": True, "width": 4, "patch_size": 4},
], ids=["narrow-gray", "resnet18-torchvision-stem", "resnet18-small-stem", "vit-gray"])
def test_state_dict_loads_into_the_documented_torchvision_module(tmp_path, monkeypatch, spec):
    torch.manual_seed(0)
    shape = (spec["in_channels"], spec["image_size"], spec["image_size"])
    encoder = _with_bn_statistics(build_encoder(spec), shape)
    torch.save(torchvision_state_dict(encoder), tmp_path / "encoder_state_dict.pt")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(rebuild_snippet(spec), scope)   # the exact code README.txt shows users
    net = scope["net"]
    head = "heads.head" if spec["backbone"] == "vit_tiny" else "fc"
    assert sorted(scope["missing"]) == [f"{head}.bias", f"{head}.weight"] and scope["unexpected"] == []
    x = torch.rand(3, *shape)
    with torch.no_grad():
        torch.testing.assert_close(net((x - 0.5) / 0.25), encoder(x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_export_writes_programs_with_the_same_outputs(tmp_path, capsys, monkeypatch):
    encoder, clf = write_models(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["export", "--out", "exported"]) == 0
    out = tmp_path / "exported"
    assert "see exported/README.txt" in capsys.readouterr().out
    info = json.loads((out / "spec.json").read_text())
    assert info["classes"] == CLASSES and info["out_dim"] == encoder.out_dim
    # which runs logged these weights (kept beside the outputs, out of what DVC hashes)
    assert (info["encoder_run_id"], info["encoder_model_uri"], info["classifier_run_id"]) == ("r1", "models:/m-1", "r2")
    assert set(info["files"]) == {"encoder_state_dict.pt", "encoder.pt2", "encoder.torchscript.pt",
                                  "classifier.pt2", "classifier.torchscript.pt"}
    assert "net = narrow_resnet(4)" in (out / "README.txt").read_text()

    x = torch.rand(5, 1, 16, 16)   # another batch size than the export example: the batch dim is dynamic
    with torch.no_grad():
        feats, logits = encoder(x), clf(x)
        torch.testing.assert_close(torch.export.load(out / "encoder.pt2").module()(x), feats, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(torch.jit.load(out / "encoder.torchscript.pt")(x), feats, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(torch.export.load(out / "classifier.pt2").module()(x), logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(torch.jit.load(out / "classifier.torchscript.pt")(x), logits, rtol=1e-5, atol=1e-5)
    state = torch.load(out / "encoder_state_dict.pt", weights_only=True)
    assert state.keys() == {k[len("trunk."):] for k in encoder.state_dict()}


def test_export_without_a_trained_encoder_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["export"]) == 2
    assert "models/encoder.pt and models/encoder.json are missing" in capsys.readouterr().err
