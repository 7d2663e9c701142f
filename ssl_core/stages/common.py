"""What every stage shares: errors users can act on, dataset identities for tracking, device setup."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import torch

from ssl_core.dvcops import MissingDataError, dataset_md5s, require_data
from ssl_core.train import resolve_device

__all__ = ["StageError", "MissingDataError", "require_raw_data", "dataset_infos", "setup_torch", "write_json"]


class StageError(RuntimeError):
    """A stage cannot do its work; the message says why and what to do."""


def require_raw_data(root: Path, raw_dir: str) -> None:
    require_data(root, [f"{raw_dir}/labeled"])


def dataset_infos(root: Path, raw_dir: str, prepared_dir: str | None = None) -> dict[str, dict]:
    """name -> {path, md5 (DVC), manifest}: what MLflow records as the run's dataset inputs."""
    md5s = dataset_md5s(root)
    manifest = None
    if prepared_dir and (root / prepared_dir / "manifest.csv").exists():
        manifest = pd.read_csv(root / prepared_dir / "manifest.csv")
    infos = {}
    for name in ("unlabeled", "labeled"):
        path = f"{raw_dir}/{name}"
        if not (root / path).exists() and path not in md5s:
            continue
        frame = None
        if manifest is not None:
            sel = manifest[manifest["split"] == "unlabeled"] if name == "unlabeled" else manifest[manifest["split"] != "unlabeled"]
            frame = sel[["path", "split", "label"]].reset_index(drop=True)
        infos[name] = {"path": path, "md5": md5s.get(path, "untracked"), "manifest": frame}
    return infos


def setup_torch(device_name: str) -> torch.device:
    device = resolve_device(device_name)
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(os.cpu_count() or 1, 1))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
    return device


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
