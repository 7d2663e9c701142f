"""Recipes for tests of the training core, built without the MLOps edge (no params.yaml)."""
from __future__ import annotations

import dataclasses

from ssl_core.evaluation.grid import FinetuneRecipe
from ssl_core.models.spec import EncoderSpec
from ssl_core.recipes import PretrainRecipe

TINY_ENCODER = EncoderSpec(backbone="resnet_narrow", in_channels=1, image_size=16, small_stem=True, stem_stride=2,
                           width=4, method="simclr")
TINY_PRETRAIN = PretrainRecipe(encoder=TINY_ENCODER, method_params={}, augment={}, seed=0, epochs=1, batch_size=32,
                               optimizer="adamw", lr=2e-3, weight_decay=1e-4, warmup_epochs=0, device="cpu",
                               precision="auto", channels_last="auto", compile=False, compile_augment="auto",
                               cache_on_device="auto", log_every=10, knn_k=5, knn_every=1, sync_batchnorm=False)
TINY_FINETUNE = FinetuneRecipe(protocols=("linear", "finetune"), batch_size=16, linear_epochs=2, linear_lr=1e-2,
                               finetune_epochs=1, finetune_lr=1e-3, weight_decay=1e-4, min_steps=2, head_init="random",
                               augment={}, seed=0)


def pretrain_recipe(encoder: dict | None = None, **knobs) -> PretrainRecipe:
    spec = dataclasses.replace(TINY_ENCODER, **(encoder or {}))
    return dataclasses.replace(TINY_PRETRAIN, encoder=spec, **knobs)


def finetune_recipe(**knobs) -> FinetuneRecipe:
    return dataclasses.replace(TINY_FINETUNE, **knobs)
