"""params.yaml -> the training core's recipes, and what a trained result depends on.

The stages and the comparison build their recipes here, so a method compared trains and is
evaluated exactly as the pipeline would train and evaluate it with pretrain.method set to it.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ssl_core.evaluation.grid import FinetuneRecipe
from ssl_core.recipes import PretrainRecipe
from ssl_pipeline.config.knobs import encoder_spec  # noqa: F401 (the stages import it from here)
from ssl_pipeline.config.schema import Params
from ssl_pipeline.versioning.workspace import dataset_md5s

# pretrain knobs that do not change the trained weights: a checkpoint stays valid across them
_NOT_TRAINING = {"log_every", "checkpoint_every", "knn_k", "knn_every", "device", "cache_on_device"}


def pretrain_recipe(params: Params, meta: dict, init_weights: str | Path = "") -> PretrainRecipe:
    """init_weights: pretrain.init resolved to a local file (tracking/init_weights.py); "" = random init."""
    names = {f.name for f in dataclasses.fields(PretrainRecipe)} - {"encoder", "seed", "init_weights"}
    knobs = params.pretrain.model_dump(include=names)
    return PretrainRecipe(encoder=encoder_spec(params, meta), seed=params.seed,
                          init_weights=str(init_weights or ""), **knobs)


def finetune_recipe(params: Params) -> FinetuneRecipe:
    names = {f.name for f in dataclasses.fields(FinetuneRecipe)} - {"seed", "protocols"}
    knobs = params.finetune.model_dump(include=names)
    return FinetuneRecipe(protocols=tuple(params.finetune.protocols), seed=params.seed, **knobs)


def checkpoint_fingerprint(params: Params, root: Path, meta: dict, init_sha256: str | None = None) -> str:
    """What a pretraining checkpoint is only valid for: the training params, the data's identity and
    the starting weights' digest (an alias may point at other weights tomorrow).

    Knobs that do not change the trained weights (logging, checkpoint interval, kNN monitor, device)
    are left out, so e.g. a retry with another checkpoint_every still resumes."""
    train_knobs = params.pretrain.model_dump(mode="json", exclude=_NOT_TRAINING)
    return json.dumps({"seed": params.seed, "data": params.data.model_dump(mode="json"), "pretrain": train_knobs,
                       "dvc_md5": dataset_md5s(root, params.data.raw_dir), "meta": meta,
                       "init_sha256": init_sha256}, sort_keys=True)
