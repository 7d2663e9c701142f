"""Recipes: what builds an encoder and a method and pretrains it.

The pretrain stage, every rank of a distributed run (training/worker.py) and the method comparison
all build and train through these functions, so a method compared is trained exactly as the
pipeline trains it. A recipe is a plain dataclass: the MLOps edge fills it from params.yaml, a GPU
box without that stack can fill it from JSON.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ssl_core.data.cache import Split, load_split
from ssl_core.evaluation.protocols import knn_accuracy_and_rank
from ssl_core.methods import SSLMethod, get_method_class
from ssl_core.models.init import InitReport, InitWeightsError, init_backbone
from ssl_core.models.spec import EncoderSpec, build_encoder
from ssl_core.training import distributed as dist_utils
from ssl_core.training.loop import TrainConfig, pretrain

EpochCallback = Callable[[int, dict], None]
Say = Callable[[str], None]


class RecipeError(ValueError):
    """The recipe cannot train on this data or device; the message names the knob to change."""


@dataclass(frozen=True)
class PretrainRecipe:
    """One pretraining run: the encoder, the method and its knobs, the loop's settings (the
    "auto" ones are resolved per device by train_config) and the kNN monitor."""
    encoder: EncoderSpec
    method_params: dict
    augment: dict
    seed: int
    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    weight_decay: float
    warmup_epochs: int
    device: str
    precision: str
    channels_last: str
    compile: bool
    compile_augment: str
    cache_on_device: str
    log_every: int
    knn_k: int
    knn_every: int
    sync_batchnorm: bool
    init_weights: str = ""   # a local state_dict file the encoder starts from ("" = random init)

    @property
    def method(self) -> str:
        return self.encoder.method

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "PretrainRecipe":
        raw = json.loads(text)
        return cls(**{**raw, "encoder": EncoderSpec(**raw["encoder"])})


def check_method_fits_data(recipe: PretrainRecipe, why_channels: str = "") -> list[str]:
    """What the data decides (e.g. channels): fail before any tracking or training; returns notes to log
    (RGB-only augmentations skipped on other channel counts).
    why_channels: where the channel count came from, for the message (e.g. "data.channels: auto")."""
    cls = get_method_class(recipe.method)
    if cls.requires_color and recipe.encoder.in_channels != 3:
        why = f" ({why_channels})" if why_channels else ""
        raise RecipeError(f"pretrain.method: {recipe.method!r} needs colour (3-channel) images but the prepared "
                          f"data has {recipe.encoder.in_channels} channel(s){why}; pick another pretrain.method or "
                          "import colour images")
    try:
        return cls.augment_notes(recipe.encoder.in_channels, recipe.augment)
    except ValueError as err:
        raise RecipeError(str(err)) from None


def check_init(recipe: PretrainRecipe, source: str = "") -> InitReport | None:
    """Fit recipe.init_weights to the recipe's encoder without training (before any work or tracking):
    RecipeError naming the mismatching keys, else what loading changes (for the log). None: no init.
    source: how the user named the weights (pretrain.init), for the message; default the file."""
    if not recipe.init_weights:
        return None
    try:
        return init_backbone(build_encoder(recipe.encoder), recipe.init_weights)
    except InitWeightsError as err:
        raise RecipeError(f"pretrain.init: {source or recipe.init_weights} {err}") from None


def build_method(recipe: PretrainRecipe, seed: int | None = None) -> SSLMethod:
    """The method with a freshly built encoder (torch seeded with `seed`, default recipe.seed), started
    from recipe.init_weights when set: before the method is built, so its momentum or teacher copies
    start from the same weights. Loading draws no random numbers, so the heads are the same either way."""
    torch.manual_seed(recipe.seed if seed is None else seed)
    spec = recipe.encoder
    cls = get_method_class(recipe.method)
    encoder = build_encoder(spec)
    try:
        if recipe.init_weights:
            init_backbone(encoder, recipe.init_weights)
    except InitWeightsError as err:
        raise RecipeError(f"pretrain.init: {recipe.init_weights} {err}") from None
    try:
        return cls.build(encoder, recipe.method_params, recipe.augment,
                         (spec.in_channels, spec.image_size, spec.image_size))
    except ValueError as err:
        raise RecipeError(str(err)) from None


def train_config(recipe: PretrainRecipe, n_unlabeled: int, device: torch.device, cache_bytes: int = 0) -> TrainConfig:
    """The loop's settings, the auto ones resolved for `device` (cache_bytes: the unlabeled cache's size)."""
    cuda = device.type == "cuda"
    # torch's CPU convolution backward in NHWC aborted the process in our tests, and inductor's
    # compiled backward reaches the same kernel: both are CUDA-only here.
    if recipe.channels_last == "on" and not cuda:
        raise RecipeError("pretrain.channels_last: 'on' is for CUDA only (on CPU it crashed torch's "
                          "convolution backward in our tests); use 'auto' or 'off' on a CPU")
    if recipe.compile and not cuda:
        raise RecipeError("pretrain.compile: true is for CUDA only (on CPU the compiled convolution backward "
                          "crashed torch in our tests); set it to false on a CPU")
    return TrainConfig(epochs=recipe.epochs, batch_size=min(recipe.batch_size, n_unlabeled),
                       optimizer=recipe.optimizer, lr=recipe.lr, weight_decay=recipe.weight_decay,
                       warmup_epochs=recipe.warmup_epochs, seed=recipe.seed, device=str(device),
                       log_every=recipe.log_every,
                       bf16=recipe.precision == "bf16" or (recipe.precision == "auto" and cuda),
                       channels_last=recipe.channels_last == "on" or (recipe.channels_last == "auto" and cuda),
                       compile=recipe.compile,
                       compile_augment=recipe.compile_augment == "on" or (recipe.compile_augment == "auto" and cuda),
                       cache_on_device=cache_on_device(recipe.cache_on_device, device, cache_bytes))


def cache_on_device(setting: str, device: torch.device, cache_bytes: int) -> bool:
    """Whether the unlabeled cache goes to the GPU once (auto: when it takes under 1/4 of the free memory).
    On a CPU the cache is in memory already, so every setting means the same."""
    if device.type != "cuda" or setting == "off":
        return False
    if setting == "on":
        return True
    return torch.cuda.is_available() and cache_bytes < torch.cuda.mem_get_info(device)[0] / 4


@dataclass
class PretrainData:
    """The unlabeled pool, plus the labeled train/val splits of the kNN monitor (lead process only)."""
    unlabeled: Split
    train: Split | None = None
    val: Split | None = None
    num_classes: int = 0

    @classmethod
    def load(cls, prepared_dir: Path, num_classes: int, lead: bool = True) -> "PretrainData":
        unlabeled = load_split(prepared_dir, "unlabeled")
        if not lead:
            return cls(unlabeled)
        return cls(unlabeled, load_split(prepared_dir, "train"), load_split(prepared_dir, "val"), num_classes)


def pretrain_method(recipe: PretrainRecipe, method: SSLMethod, data: PretrainData, device: torch.device,
                    checkpointer=None, on_epoch: EpochCallback | None = None, say_epoch: Say | None = None,
                    say_step: Say | None = None) -> tuple[SSLMethod, list[dict]]:
    """Pretrain `method` on data.unlabeled -> (method, per-epoch history).

    With data.train/val (the lead process), every epoch ends with the kNN monitor, a line to
    say_epoch and on_epoch(epoch, metrics); say_step gets the loop's progress lines."""
    if recipe.sync_batchnorm and dist_utils.is_distributed():
        method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)
    on_epoch_end = None
    if data.train is not None:
        def on_epoch_end(epoch: int, metrics: dict) -> None:
            monitor_knn(recipe, epoch, metrics, method, data, device)
            if say_epoch:
                say_epoch(epoch_line(recipe, epoch, metrics))
            if on_epoch:
                on_epoch(epoch, metrics)

    cfg = train_config(recipe, len(data.unlabeled), device, data.unlabeled.images.nbytes)
    history = pretrain(method, data.unlabeled.images, cfg, on_epoch_end=on_epoch_end, checkpointer=checkpointer,
                       progress=say_step)
    return method, history


def monitor_knn(recipe: PretrainRecipe, epoch: int, metrics: dict, method: torch.nn.Module, data: PretrainData,
                device: torch.device) -> None:
    """kNN monitor (labeled train -> val) and the val features' effective rank, every
    recipe.knn_every epochs and after the last one (for cheap steps, e.g. MAE's, it costs more than
    the epoch itself)."""
    due = epoch == recipe.epochs or (recipe.knn_every > 0 and epoch % recipe.knn_every == 0)
    metrics["knn_accuracy"], metrics["feature_rank"] = (
        knn_accuracy_and_rank(method.backbone, data.train, data.val, data.num_classes, device, recipe.knn_k)
        if due else (None, None))
    method.train()


def epoch_line(recipe: PretrainRecipe, epoch: int, metrics: dict) -> str:
    knn = metrics.get("knn_accuracy")
    knn_text = f" knn(val) {knn:.4f} feature rank {metrics['feature_rank']:.1f}" if knn is not None else ""
    return f"epoch {epoch}/{recipe.epochs} loss {metrics['loss']:.4f}{knn_text} ({metrics['seconds']:.1f}s)"


def epoch_metrics(metrics: dict) -> dict[str, float]:
    """The per-epoch numbers worth recording (the tracking edge logs them)."""
    logged = {"loss": metrics["loss"], "knn_accuracy": metrics.get("knn_accuracy"),
              "feature_rank": metrics.get("feature_rank"), "lr": metrics["lr"],
              "epoch_seconds": metrics["seconds"]}
    return {k: v for k, v in logged.items() if v is not None}
