"""finetune: for every label fraction and seed, (a) a linear probe on the frozen SSL encoder, (b) full
fine-tuning from the SSL encoder, (c) the same network from scratch with the same budget and
augmentations. Model selection uses the validation split only; the test split is left to evaluate.

Outputs: models/classifiers/<init>_<protocol>_<fraction>_<seed>.pt and index.csv (val accuracy).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from ssl_core.augment import AugmentConfig
from ssl_core.config import Params
from ssl_core.data.cache import Split, atomic_torch_save, load_fractions, load_meta, load_split
from ssl_core.evaluation import FitConfig, fit_classifier, fit_linear_probe
from ssl_core.models import Classifier
from ssl_core.progress import Progress, log
from ssl_core.stages.common import dataset_infos, setup_torch
from ssl_core.stages.pretrain import ENCODER_JSON, ENCODER_PT, build_encoder

CLASSIFIER_DIR = Path("models/classifiers")
INDEX_CSV = CLASSIFIER_DIR / "index.csv"


def cells(params: Params, fractions: dict) -> list[tuple[str, str, str, str]]:
    """(init, protocol, fraction, seed) for every model to train."""
    out = []
    for frac, seeds in fractions.items():
        for seed in seeds:
            for protocol in params.finetune.protocols:
                out.append(("ssl", protocol, frac, seed))
            out.append(("scratch", "finetune", frac, seed))
    return out


def cell_seed(params: Params, seed: str | int) -> int:
    return params.seed * 1000 + int(seed)


def scratch_encoder(spec: dict, run_seed: int) -> torch.nn.Module:
    """A freshly initialised encoder of the architecture in `spec` (the scratch baseline's start)."""
    torch.manual_seed(run_seed)
    return build_encoder(spec)


def fit_cell(params: Params, protocol: str, encoder: torch.nn.Module, subset: Split, val: Split, num_classes: int,
             augment: AugmentConfig, device: torch.device, run_seed: int, pretrained: bool = True) -> tuple[Classifier, dict]:
    """One classifier with finetune's budget: a linear probe on the frozen `encoder` (protocol "linear")
    or `encoder` trained end to end ("finetune"; from scratch when `encoder` is freshly initialised),
    its head starting from a linear probe's when finetune.head_init is "probe" and `encoder` is pretrained."""
    f = params.finetune
    linear = FitConfig(epochs=f.linear_epochs, lr=f.linear_lr, batch_size=f.batch_size,
                       weight_decay=f.weight_decay, min_steps=f.min_steps, seed=run_seed)
    if protocol == "linear":
        return fit_linear_probe(encoder, subset, val, num_classes, linear, device)
    # LP-FT (Kumar et al. 2022): a random head's first large gradients distort pretrained features, a linear
    # probe's head does not (on the demo it measured worse all the same: see README). Only for pretrained
    # encoders: a probe of random features is no head to start from (scratch at 1 %: 0.700 -> 0.408).
    lp_ft = f.head_init == "probe" and pretrained
    head = fit_linear_probe(encoder, subset, val, num_classes, linear, device)[0].head if lp_ft else None
    cfg = FitConfig(epochs=f.finetune_epochs, lr=f.finetune_lr, batch_size=f.batch_size,
                    weight_decay=f.weight_decay, min_steps=f.min_steps, seed=run_seed)
    return fit_classifier(encoder, subset, val, num_classes, cfg, augment, device, head=head)


def load_encoder(root: Path) -> tuple[torch.nn.Module, dict]:
    import json

    spec = json.loads((root / ENCODER_JSON).read_text())
    encoder = build_encoder(spec)
    encoder.load_state_dict(torch.load(root / ENCODER_PT, weights_only=True, map_location="cpu"))
    return encoder, spec


def run(params: Params, root: Path = Path(".")) -> pd.DataFrame:
    from ssl_core import tracking

    d, f = params.data, params.finetune
    prepared = root / d.prepared_dir
    meta = load_meta(prepared)
    train, val = load_split(prepared, "train"), load_split(prepared, "val")
    fractions = load_fractions(prepared)
    device = setup_torch(params.pretrain.device)
    encoder, spec = load_encoder(root)
    augment = AugmentConfig().with_overrides(f.augment)
    todo = cells(params, fractions)
    rows = []
    out_dir = root / CLASSIFIER_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    with tracking.stage_run("finetune", params, dataset_infos(root, d.raw_dir, d.prepared_dir), root):
        bar = Progress(len(todo), "finetune", every_fraction=0.0)
        for i, (init, protocol, frac, seed) in enumerate(todo):
            subset = train.subset(fractions[frac][seed])
            run_seed = cell_seed(params, seed)
            start = encoder if init == "ssl" else scratch_encoder(spec, run_seed)
            model, info = fit_cell(params, protocol, start, subset, val, meta["num_classes"], augment, device, run_seed,
                                   pretrained=init == "ssl")
            name = f"{init}_{protocol}_{frac}_{seed}.pt"
            atomic_torch_save(model.state_dict(), out_dir / name)
            row = {"init": init, "protocol": protocol, "label_fraction": float(frac), "seed": int(seed),
                   "n_labeled": len(subset), "val_accuracy": info["val_accuracy"], "steps": info["steps"], "file": name}
            rows.append(row)
            tracking.mlflow.log_metric(f"val_accuracy.{init}.{protocol}.{frac}.{seed}", info["val_accuracy"])
            log.info("finetune: %s/%s fraction %s seed %s (%d labels) val acc %.4f", init, protocol, frac, seed,
                     len(subset), info["val_accuracy"])
            bar.update(i + 1)
        bar.close()
        table = pd.DataFrame(rows)
        table.to_csv(root / INDEX_CSV, index=False)
        tracking.mlflow.log_artifact(str(root / INDEX_CSV), artifact_path="reports")
    return table
