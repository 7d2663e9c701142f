"""pretrain.init's sources that are files: a path, or a torchvision weights name.

    pretrain.init: none                                   # random init (the default)
    pretrain.init: weights/resnet50-imagenet.pt           # a state_dict file (relative to the workspace)
    pretrain.init: torchvision:ResNet50_Weights.IMAGENET1K_V2
    pretrain.init: models:/ssl-encoder@champion           # MLflow: ssl_pipeline/tracking/init_weights.py

A torchvision name is read from torch's hub cache (`$TORCH_HOME/hub/checkpoints/<file>`, where
torchvision's `weights=` puts it); only when it is not there is it downloaded, once, with torch.hub
(checking the hash prefix in its file name). Nothing here unpickles anything: the file is handed to
ssl_core.models.init, which reads it with weights_only=True.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ssl_core.fsutil import file_sha256
from ssl_pipeline.config.schema import init_is_none
from ssl_pipeline.errors import StageError
from ssl_pipeline.outputs import user_workspace

TORCHVISION = "torchvision:"
MLFLOW_SCHEMES = ("models:/", "runs:/")
HASH_IN_NAME = re.compile(r"-([a-f0-9]+)\.")   # torch.hub's convention: resnet50-11ad3fa6.pth


@dataclass(frozen=True)
class InitSource:
    """Where the encoder's starting weights came from: what params.yaml said, what that resolved to
    (an alias pinned to its version, a path made absolute, a torchvision name's URL), the local file
    read, and its SHA-256: what MLflow, encoder.json and the checkpoint fingerprint record."""
    source: str
    resolved: str
    path: Path
    sha256: str

    def record(self) -> dict[str, str]:
        return {"source": self.source, "resolved": self.resolved, "sha256": self.sha256}


def is_none(source: str) -> bool:
    return init_is_none(source)


def is_mlflow(source: str) -> bool:
    return source.startswith(MLFLOW_SCHEMES)


def from_file(source: str, root: Path) -> InitSource:
    path = Path(source).expanduser()
    path = path if path.is_absolute() else user_workspace(root) / path   # a run workspace: the user's files
    if not path.is_file():
        raise StageError(f"pretrain.init: {source} is not a file ({path.resolve()}); give a state_dict file, "
                         "an MLflow model URI (models:/ssl-encoder@champion), a torchvision weights name "
                         "(torchvision:ResNet18_Weights.IMAGENET1K_V1) or none")
    return InitSource(source, str(path.resolve()), path, file_sha256(path))


def from_torchvision(source: str) -> InitSource:
    """torchvision:<Enum>.<NAME> from the hub cache, downloading it there when missing."""
    import torch
    from torchvision.models import get_weight

    name = source[len(TORCHVISION):]
    try:
        url = get_weight(name).url
    except (ValueError, KeyError, AttributeError):
        raise StageError(f"pretrain.init: {name!r} is not a torchvision weights name; they look like "
                         "ResNet50_Weights.IMAGENET1K_V2 (torchvision.models.list_models() and each model's "
                         "page list them)") from None
    path = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        found = HASH_IN_NAME.search(path.name)
        try:
            torch.hub.download_url_to_file(url, str(path), hash_prefix=found.group(1) if found else None)
        except Exception as err:  # noqa: BLE001 - no network, proxy, HTTP or hash errors all mean the same here
            raise StageError(f"pretrain.init: {name} is not in torch's hub cache ({path}) and downloading {url} "
                             f"failed ({type(err).__name__}: {str(err)[:200]}); fetch it once where there is "
                             "network, or point pretrain.init at a saved state_dict file") from None
    return InitSource(source, url, path, file_sha256(path))
