"""Screen DINO knob settings on the demo digits: per-epoch loss, kNN (labeled train -> val) and feature rank.

    PYTHONPATH=. python benchmarks/dino_screen.py --workspace /tmp/dino-screen --epochs 10 \
        --variant paper '{"use_bn_in_head": false, "norm_last_layer": true, "teacher_temp": 0.07, "base_momentum": 0.996}' \
        --variant defaults '{}'

Each variant is `pretrain.method_params` for `dino` on top of its defaults, trained on the pipeline's default
encoder (`resnet_narrow`, width 16, stem stride 2), batch 32, AdamW 2e-3, one thread. A loss that stays at
ln(out_dim) is the uniform collapse. Variants run one after another; run two scripts to use two cores.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from init_continues import CPU, demo_data
from ssl_core.models.spec import EncoderSpec
from ssl_core.recipes import PretrainRecipe, build_method, pretrain_method


def recipe(meta: dict, epochs: int, method_params: dict) -> PretrainRecipe:
    encoder = EncoderSpec(backbone="resnet_narrow", in_channels=meta["channels"], image_size=meta["image_size"],
                          small_stem=True, stem_stride=2, width=16, method="dino")
    return PretrainRecipe(encoder=encoder, method_params=method_params, augment={"hflip_p": 0.0}, seed=0,
                          epochs=epochs, batch_size=32, optimizer="adamw", lr=2e-3, weight_decay=1e-4,
                          warmup_epochs=2, device="cpu", precision="fp32", channels_last="off", compile=False,
                          compile_augment="off", cache_on_device="off", log_every=10, knn_k=20, knn_every=1,
                          sync_batchnorm=False)


def screen(name: str, method_params: dict, epochs: int, data, meta: dict) -> None:
    r = recipe(meta, epochs, method_params)
    method, start = build_method(r), time.time()
    uniform = math.log(method.params.out_dim)

    def on_epoch(epoch: int, metrics: dict) -> None:
        print(json.dumps({"variant": name, "epoch": epoch, "loss": round(metrics["loss"], 4),
                          "loss_minus_ln_out_dim": round(metrics["loss"] - uniform, 4),
                          "knn_val": round(metrics["knn_accuracy"], 4), "feature_rank": round(metrics["feature_rank"], 1),
                          "seconds": round(time.time() - start)}), flush=True)

    pretrain_method(r, method, data, CPU, on_epoch=on_epoch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, required=True, help="demo data is written and prepared here once")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--variant", nargs=2, action="append", metavar=("NAME", "JSON"), required=True,
                        help="a name and the dino method_params to train (repeatable)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data, meta = demo_data(args.workspace)
    for name, knobs in args.variant:
        screen(name, json.loads(knobs), args.epochs, data, meta)


if __name__ == "__main__":
    main()
