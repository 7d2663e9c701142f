"""pretrain.init continues from the weights it is given: kNN (labeled train -> val) of a saved encoder, of one
epoch of SSL started from it, and of one epoch started from random weights, on the demo digits.

    PYTHONPATH=. python benchmarks/init_continues.py --workspace /tmp/init-bench [--train-epochs 10]

The saved encoder is made here first (SimCLR, --train-epochs epochs from random weights, saved as a plain
state_dict like models/encoder.pt), so the script needs nothing but the demo data it writes itself.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ssl_core.data.cache import load_meta
from ssl_core.models.spec import EncoderSpec
from ssl_core.recipes import PretrainData, PretrainRecipe, build_method, monitor_knn, pretrain_method
from ssl_pipeline.config.schema import load_params
from ssl_pipeline.ingest.demo import write_demo
from ssl_pipeline.ingest.prepare import prepare

CPU = torch.device("cpu")


def demo_data(root: Path) -> tuple[PretrainData, dict]:
    if not (root / "data/prepared/meta.json").exists():
        write_demo(root / "data/raw")
        prepare(load_params(Path(__file__).parents[1] / "params.yaml", ["prepare.workers=1"]), root)
    meta = load_meta(root / "data/prepared")
    return PretrainData.load(root / "data/prepared", meta["num_classes"]), meta


def recipe(meta: dict, epochs: int, init: str = "") -> PretrainRecipe:
    encoder = EncoderSpec(backbone="resnet_narrow", in_channels=meta["channels"], image_size=meta["image_size"],
                          small_stem=True, stem_stride=1, width=8, method="simclr")
    return PretrainRecipe(encoder=encoder, init_weights=init, method_params={}, augment={"hflip_p": 0.0}, seed=0,
                          epochs=epochs, batch_size=32, optimizer="adamw", lr=2e-3, weight_decay=1e-4,
                          warmup_epochs=0, device="cpu", precision="fp32", channels_last="off", compile=False,
                          compile_augment="off", cache_on_device="off", log_every=10, knn_k=20, knn_every=1,
                          sync_batchnorm=False)


def train(r: PretrainRecipe, data: PretrainData) -> tuple[torch.nn.Module, float]:
    method, last = build_method(r), {}
    pretrain_method(r, method, data, CPU, on_epoch=lambda epoch, metrics: last.update(metrics))
    return method, last["knn_accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--train-epochs", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data, meta = demo_data(args.workspace)
    start = time.time()
    saved, saved_knn = train(recipe(meta, args.train_epochs), data)
    weights = args.workspace / "saved_encoder.pt"
    torch.save(saved.backbone.state_dict(), weights)
    loaded, at_start = build_method(recipe(meta, 1, str(weights))), {}
    monitor_knn(recipe(meta, 1, str(weights)), 0, at_start, loaded.eval(), data, CPU)
    _, continued = train(recipe(meta, 1, str(weights)), data)
    _, fresh = train(recipe(meta, 1), data)
    print(json.dumps({"saved_encoder_after_epochs": args.train_epochs, "knn_saved": round(saved_knn, 4),
                      "knn_loaded_before_training": round(at_start["knn_accuracy"], 4),
                      "knn_one_epoch_from_saved": round(continued, 4), "knn_one_epoch_from_random": round(fresh, 4),
                      "seconds": round(time.time() - start)}))


if __name__ == "__main__":
    main()
