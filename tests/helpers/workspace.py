"""A complete, tiny pipeline workspace for tests: git + DVC repo, the project's dvc.yaml and code,
a small synthetic labeled/unlabeled image set (dvc add-ed) and a params.yaml sized for seconds.

    from workspace import make_pipeline_workspace
    root = make_pipeline_workspace(tmp_path, **{"pretrain.epochs": 2})
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from fixtures_repo import PROJECT_ROOT, make_workspace
from ssl_pipeline.versioning import workspace as dvcops

# Small enough for seconds on one CPU thread, big enough that every stage has real work.
TINY_PARAMS = {
    "data.image_size": 16,
    "data.label_fractions": [0.25, 1.0],
    "data.small_fraction_seeds": 1,
    "pretrain.epochs": 1,
    "pretrain.batch_size": 32,
    "pretrain.width": 4,
    "pretrain.log_every": 2,
    "pretrain.checkpoint_every": 2,
    "finetune.batch_size": 16,
    "finetune.linear_epochs": 2,
    "finetune.finetune_epochs": 1,
    "finetune.min_steps": 2,
    "flow.retries": 0,
}


def class_image(cls: int, rng: np.random.Generator, size: int, color: bool, noise: float = 20) -> np.ndarray:
    """A learnable pattern per class (bars at a class-specific angle/position) plus Gaussian noise (std `noise`)."""
    yy, xx = np.mgrid[0:size, 0:size]
    angle = np.pi * cls / 4
    phase = rng.uniform(0, 2 * np.pi)
    wave = np.sin((np.cos(angle) * xx + np.sin(angle) * yy) * 0.9 + phase)
    img = (wave > 0).astype(np.float32) * 180 + rng.normal(0, noise, (size, size)) + 30
    img = np.clip(img, 0, 255).astype(np.uint8)
    if color:
        tint = np.array([[1.0, 0.4, 0.2], [0.2, 1.0, 0.4], [0.3, 0.3, 1.0], [1.0, 1.0, 0.2]])[cls % 4]
        return np.clip(img[..., None] * tint, 0, 255).astype(np.uint8)
    return img


def write_tiny_images(raw_dir: Path, classes: int = 3, train_per_class: int = 24, test_per_class: int = 8,
                      size: int = 16, color: bool = False, seed: int = 0, noise: float = 20) -> None:
    rng = np.random.default_rng(seed)
    n = 0
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        for c in range(classes):
            folder = raw_dir / "labeled" / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                image = class_image(c, rng, size, color, noise)
                Image.fromarray(image).save(folder / f"{i:04d}.png")
                if split == "train":
                    (raw_dir / "unlabeled").mkdir(parents=True, exist_ok=True)
                    Image.fromarray(image).save(raw_dir / "unlabeled" / f"img_{n:05d}.png")
                    n += 1


def write_params(root: Path, overrides: dict) -> Path:
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    for key, value in {**TINY_PARAMS, **overrides}.items():
        node = raw
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def make_pipeline_workspace(tmp_path: Path, color: bool = False, classes: int = 3, **overrides) -> Path:
    root = make_workspace(tmp_path)
    shutil.copy(PROJECT_ROOT / "dvc.yaml", root / "dvc.yaml")
    for package in ("ssl_core", "ssl_pipeline", "flows"):
        shutil.copytree(PROJECT_ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    write_tiny_images(root / "data/raw", classes=classes, color=color)
    dvcops.track(root, ["data/raw/unlabeled", "data/raw/labeled"])
    write_params(root, overrides)
    subprocess.run(["git", "add", "-A"], cwd=root, check=True, capture_output=True)
    subprocess.run(["git", "commit", "-q", "-m", "tiny pipeline workspace"], cwd=root, check=True, capture_output=True)
    return root
