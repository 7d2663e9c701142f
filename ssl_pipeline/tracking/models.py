"""Logging torch models to MLflow in the safest form MLflow 3 offers for PyTorch.

`export_model=True, serialization_format="pt2"` stores a torch.export program instead of a pickled
module, so loading a model from the registry never unpickles arbitrary code. The trade-off: the
logged model is a traced graph (fixed architecture, no Python-side edits after loading), and
export needs a model without data-dependent Python control flow - true for our encoders/classifiers.
Beside the program, the model folder holds the plain state_dict (extra_files/state_dict.pt, read
with weights_only=True), so training can start from a registered model (pretrain.init).
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlflow
import torch
from mlflow.models import infer_signature

from ssl_core.fsutil import atomic_write_bytes, exclusive_lock, file_sha256
from ssl_pipeline.outputs import LOGGED_MODELS_JSON

WEIGHTS_FILE = "state_dict.pt"                      # the plain state_dict beside the pt2 program
WEIGHTS_IN_MODEL = f"extra_files/{WEIGHTS_FILE}"    # where MLflow puts it inside the model folder


def log_torch_model(model: torch.nn.Module, example: torch.Tensor, name: str, metadata: dict | None = None) -> str:
    """Log `model` (eval mode, CPU) under the active run; returns its models:/ URI.

    `metadata` lands in the MLmodel file (e.g. {"classes": [...]}, read back by `ssl-pipeline predict`)."""
    model = model.cpu().eval()
    with torch.no_grad():
        output = model(example)
    signature = infer_signature(example.numpy(), output.numpy())
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / WEIGHTS_FILE
        torch.save(model.state_dict(), weights)
        info = mlflow.pytorch.log_model(model, name=name, signature=signature, input_example=example.numpy(),
                                        export_model=True, serialization_format="pt2", metadata=metadata,
                                        extra_files=[str(weights)],
                                        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
    return info.model_uri


# Which MLflow run logged the model in a stage output. Kept out of the outputs DVC hashes (models/*.json):
# a run id differs on every run, and dvc.lock must not (a fresh clone's `make run` leaves git clean).
# Keyed by the sha256 of the weights file, so outputs that DVC restores (run cache, `dvc checkout`) still
# find the run that logged exactly those weights (the key: fsutil.file_sha256).


def record_logged_model(root: Path, weights: Path, run_id: str, model_uri: str) -> None:
    """Remember that run `run_id` logged `weights` (a stage output) as `model_uri`."""
    path = Path(root) / LOGGED_MODELS_JSON
    with exclusive_lock(path.with_name(path.name + ".lock")):
        known = json.loads(path.read_text()) if path.exists() else {}
        known[file_sha256(weights)] = {"file": str(Path(weights).relative_to(root)), "run_id": run_id,
                                        "model_uri": model_uri}
        atomic_write_bytes((json.dumps(known, indent=1) + "\n").encode(), path)


def logged_model(root: Path, weights: Path) -> dict | None:
    """{"run_id", "model_uri"} of the run that logged these weights in this workspace, or None."""
    path = Path(root) / LOGGED_MODELS_JSON
    if not path.exists() or not Path(weights).exists():
        return None
    return json.loads(path.read_text()).get(file_sha256(weights))
