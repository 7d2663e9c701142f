"""The datasets a run read, as MLflow records them: path, DVC md5 and the prepared manifest."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ssl_pipeline.versioning.workspace import DATASETS, dataset_md5s


def dataset_infos(root: Path, raw_dir: str, prepared_dir: str | None = None) -> dict[str, dict]:
    """name -> {path, md5 (DVC), manifest}: what MLflow records as the run's dataset inputs."""
    md5s = dataset_md5s(root)
    manifest = None
    if prepared_dir and (root / prepared_dir / "manifest.csv").exists():
        manifest = pd.read_csv(root / prepared_dir / "manifest.csv")
    infos = {}
    for name in DATASETS:
        path = f"{raw_dir}/{name}"
        if not (root / path).exists() and path not in md5s:
            continue
        frame = None
        if manifest is not None:
            unlabeled = manifest["split"] == "unlabeled"
            sel = manifest[unlabeled] if name == "unlabeled" else manifest[~unlabeled]
            frame = sel[["path", "split", "label"]].reset_index(drop=True)
        infos[name] = {"path": path, "md5": md5s.get(path, "untracked"), "manifest": frame}
    return infos
