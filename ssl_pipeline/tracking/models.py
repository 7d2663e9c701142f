"""Logging torch models to MLflow in the safest form MLflow 3 offers for PyTorch.

`export_model=True, serialization_format="pt2"` stores a torch.export program instead of a pickled
module, so loading a model from the registry never unpickles arbitrary code. The trade-off: the
logged model is a traced graph (fixed architecture, no Python-side edits after loading), and
export needs a model without data-dependent Python control flow - true for our encoders/classifiers.
Beside the program, the model folder holds the plain state_dict (extra_files/state_dict.pt, read
with weights_only=True), so training can start from a registered model (pretrain.init).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import torch
from mlflow.models import infer_signature

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
