"""Resolve pretrain.init to a local weights file (and its SHA-256), fetching MLflow models.

An MLflow URI (models:/name@alias, models:/name/3, runs:/<id>/encoder) is pinned first (an alias to
the version it points at now, so the record says exactly what was used), then its model folder is
downloaded and only the project's own weights are read from it: the plain state_dict that
tracking/models.py logs beside the program (extra_files/state_dict.pt). Models logged before that
file existed carry only the pt2 program; their weights are taken from it through
mlflow.pytorch.load_model, MLflow's pickle-free pt2 loader. No model code is imported here: the file
goes to ssl_core.models.init, which fits it to the encoder. Fetched files are kept under
INIT_WEIGHTS_DIR named by their SHA-256, so every process of a distributed run reads the same bytes.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import torch

from ssl_core.fsutil import atomic_write_bytes, file_sha256
from ssl_pipeline.errors import StageError
from ssl_pipeline.ingest.weights import (TORCHVISION, InitSource, from_file, from_torchvision, is_mlflow,
                                         is_none)
from ssl_pipeline.outputs import INIT_WEIGHTS_DIR
from ssl_pipeline.tracking.model_loading import UnsafeModelError, load_project_model
from ssl_pipeline.tracking.models import WEIGHTS_FILE, WEIGHTS_IN_MODEL
from ssl_pipeline.tracking.runs import TRACKING_ERRORS, client, tracking_uri


def resolve_init(source: str, root: Path) -> InitSource | None:
    """pretrain.init -> the local file to start from (None for `none`); StageError when it cannot be had."""
    if is_none(source):
        return None
    if source.startswith(TORCHVISION):
        return from_torchvision(source)
    if is_mlflow(source):
        return from_mlflow(source, Path(root) / INIT_WEIGHTS_DIR)
    return from_file(source, root)


def pinned(uri: str) -> str:
    """models:/name@alias -> models:/name/<version it points at>; other URIs unchanged."""
    rest = uri[len("models:/"):] if uri.startswith("models:/") else ""
    if "@" not in rest:
        return uri
    name, alias = rest.split("@", 1)
    mlflow.set_tracking_uri(tracking_uri())
    version = client().get_model_version_by_alias(name, alias).version
    return f"models:/{name}/{version}"


def from_mlflow(uri: str, cache_dir: Path) -> InitSource:
    try:
        resolved = pinned(uri)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=resolved, dst_path=tmp))
            weights = folder / WEIGHTS_IN_MODEL
            if not weights.is_file():
                weights = _weights_from_program(folder, Path(tmp) / WEIGHTS_FILE)
            sha256 = file_sha256(weights)
            local = cache_dir / f"{sha256}.pt"
            if not local.is_file():
                cache_dir.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(weights.read_bytes(), local)
    except UnsafeModelError as err:
        raise StageError(f"pretrain.init: {err}") from None
    except TRACKING_ERRORS as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise StageError(f"pretrain.init: cannot fetch {uri} from MLflow at {tracking_uri()}: {first}") from None
    return InitSource(uri, resolved, local, sha256)


def _weights_from_program(folder: Path, out: Path) -> Path:
    """The state_dict of a model folder that holds only the pt2 program, loaded by the checked loader
    (model_loading.py: no model-supplied code, no pickles)."""
    if not (folder / "MLmodel").is_file():
        raise StageError(f"pretrain.init: {folder.name} is not an MLflow model folder (no MLmodel file)")
    module, _ = load_project_model(str(folder))
    torch.save({k: v.detach().clone() for k, v in module.state_dict().items()}, out)
    return out



def log_init(init: InitSource, notes: tuple[str, ...] = ()) -> None:
    """Tag the active run with where its encoder started (source, pinned source, digest, adaptations)."""
    tags = {f"init.{k}": v for k, v in init.record().items()}
    if notes:
        tags["init.notes"] = "; ".join(notes)[:5000]
    mlflow.set_tags(tags)
