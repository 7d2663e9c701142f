"""pretrain.init resolved to a local file: paths, torchvision names (from a pre-filled hub cache: nothing
downloads), and MLflow models in a temporary SQLite store (an alias pinned to its version, the plain
state_dict logged beside the program, and the program's weights for models logged without it)."""
from __future__ import annotations

import mlflow
import pytest
import torch
from mlflow.models import infer_signature
from torchvision.models import resnet18

from ssl_core.fsutil import file_sha256
from ssl_core.models.spec import EncoderSpec, build_encoder
from ssl_pipeline.errors import StageError
from ssl_pipeline.outputs import INIT_WEIGHTS_DIR
from ssl_pipeline.tracking.init_weights import resolve_init
from ssl_pipeline.tracking.models import log_torch_model


def tiny_encoder(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_encoder(EncoderSpec("resnet_narrow", 1, 16, True, 1, 4, "simclr")).eval()


def same_weights(path, module) -> bool:
    loaded = torch.load(path, weights_only=True)
    return loaded.keys() == module.state_dict().keys() and all(torch.equal(loaded[k], v)
                                                               for k, v in module.state_dict().items())


def test_none_and_files(tmp_path):
    assert resolve_init("none", tmp_path) is None
    (tmp_path / "weights").mkdir()
    torch.save(tiny_encoder().state_dict(), tmp_path / "weights/start.pt")
    init = resolve_init("weights/start.pt", tmp_path)   # relative to the workspace
    assert init.path == tmp_path / "weights/start.pt"
    assert init.resolved == str((tmp_path / "weights/start.pt").resolve())
    assert init.sha256 == file_sha256(tmp_path / "weights/start.pt")
    assert init.record() == {"source": "weights/start.pt", "resolved": init.resolved, "sha256": init.sha256}
    with pytest.raises(StageError, match=r"^pretrain.init: weights/nope.pt is not a file"):
        resolve_init("weights/nope.pt", tmp_path)


def test_torchvision_name_is_read_from_the_hub_cache(tmp_path, monkeypatch):
    """torchvision's weights= names, as a user with network gets them: here the hub cache is filled
    with a locally made file under the name torchvision downloads to, so nothing is downloaded."""
    from torchvision.models import ResNet18_Weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    cached = tmp_path / "torch-home/hub/checkpoints" / ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    cached.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(resnet18(weights=None).state_dict(), cached)
    init = resolve_init("torchvision:ResNet18_Weights.IMAGENET1K_V1", tmp_path)
    assert init.path == cached and init.resolved == ResNet18_Weights.IMAGENET1K_V1.url
    assert init.sha256 == file_sha256(cached)
    with pytest.raises(StageError, match="'ResNet18_Weights.NOPE' is not a torchvision weights name"):
        resolve_init("torchvision:ResNet18_Weights.NOPE", tmp_path)


def test_registered_alias_is_pinned_and_its_plain_state_dict_read(tmp_path, mlflow_uri):
    first, second = tiny_encoder(0), tiny_encoder(1)
    for model in (first, second):
        with mlflow.start_run():
            uri = log_torch_model(model, torch.rand(2, 1, 16, 16), name="encoder")
        mlflow.register_model(uri, "enc")
    mlflow.MlflowClient().set_registered_model_alias("enc", "champion", "1")

    init = resolve_init("models:/enc@champion", tmp_path)
    assert init.source == "models:/enc@champion" and init.resolved == "models:/enc/1"
    assert init.path == tmp_path / INIT_WEIGHTS_DIR / f"{init.sha256}.pt"
    assert same_weights(init.path, first)
    assert same_weights(resolve_init("models:/enc/2", tmp_path).path, second)
    with pytest.raises(StageError, match=r"^pretrain.init: cannot fetch models:/enc@nope from MLflow"):
        resolve_init("models:/enc@nope", tmp_path)


def test_a_model_logged_as_a_program_only_gives_the_programs_weights(tmp_path, mlflow_uri):
    model, example = tiny_encoder(2), torch.rand(2, 1, 16, 16)
    with mlflow.start_run():
        info = mlflow.pytorch.log_model(model, name="encoder", serialization_format="pt2", input_example=example.numpy(),
                                        signature=infer_signature(example.numpy(), model(example).detach().numpy()))
    init = resolve_init(info.model_uri, tmp_path)
    assert init.resolved == info.model_uri
    assert same_weights(init.path, model)
