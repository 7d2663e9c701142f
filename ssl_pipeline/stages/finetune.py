"""finetune: for every label fraction and seed, (a) a linear probe on the frozen SSL encoder, (b) full
fine-tuning from the SSL encoder, (c) the same network from scratch with the same budget and
augmentations. Model selection uses the validation split only; the test split is left to evaluate.

Outputs: models/classifiers/<init>_<protocol>_<fraction>_<seed>.pt and index.csv (val accuracy).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ssl_core.augment import check_rgb_only
from ssl_core.data.cache import load_fractions, load_meta, load_split
from ssl_core.evaluation.grid import cells, fit_cell, scratch_encoder
from ssl_core.fsutil import atomic_torch_save
from ssl_core.models.spec import load_encoder
from ssl_core.training.runtime import setup_torch
from ssl_pipeline import outputs
from ssl_pipeline.config.schema import Params
from ssl_pipeline.errors import StageError
from ssl_pipeline.progress import Progress, log
from ssl_pipeline.recipes import finetune_recipe
from ssl_pipeline.tracking import runs as tracking
from ssl_pipeline.tracking.datasets import dataset_infos


def run(params: Params, root: Path = Path(".")) -> pd.DataFrame:
    d = params.data
    prepared = root / d.prepared_dir
    meta = load_meta(prepared)
    train, val = load_split(prepared, "train"), load_split(prepared, "val")
    fractions = load_fractions(prepared)
    device = setup_torch(params.pretrain.device)
    encoder, spec = load_encoder(root / outputs.ENCODER_JSON, root / outputs.ENCODER_PT)
    recipe = finetune_recipe(params)
    try:
        check_rgb_only(params.finetune.augment, meta["channels"], "finetune.augment")
    except ValueError as err:
        raise StageError(str(err)) from None
    todo = cells(recipe, fractions)
    rows = []
    out_dir = root / outputs.CLASSIFIER_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    with tracking.stage_run("finetune", params, dataset_infos(root, d.raw_dir, d.prepared_dir), root):
        bar = Progress(len(todo), "finetune", every_fraction=0.0)
        for i, (init, protocol, frac, seed) in enumerate(todo):
            subset = train.subset(fractions[frac][seed])
            run_seed = recipe.cell_seed(seed)
            start = encoder if init == "ssl" else scratch_encoder(spec, run_seed)
            model, info = fit_cell(recipe, protocol, start, subset, val, meta["num_classes"], device, run_seed,
                                   pretrained=init == "ssl")
            name = f"{init}_{protocol}_{frac}_{seed}.pt"
            atomic_torch_save(model.state_dict(), out_dir / name)
            rows.append({"init": init, "protocol": protocol, "label_fraction": float(frac), "seed": int(seed),
                         "n_labeled": len(subset), "val_accuracy": info["val_accuracy"], "steps": info["steps"],
                         "file": name})
            tracking.mlflow.log_metric(f"val_accuracy.{init}.{protocol}.{frac}.{seed}", info["val_accuracy"])
            log.info("finetune: %s/%s fraction %s seed %s (%d labels) val acc %.4f", init, protocol, frac, seed,
                     len(subset), info["val_accuracy"])
            bar.update(i + 1)
        bar.close()
        table = pd.DataFrame(rows)
        table.to_csv(root / outputs.INDEX_CSV, index=False)
        tracking.mlflow.log_artifact(str(root / outputs.INDEX_CSV), artifact_path="reports")
    return table
