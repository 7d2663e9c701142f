"""The one interface every SSL method implements.

A method owns: how it turns a uint8 batch into views/targets, the loss, its heads, and whatever it
must checkpoint beyond the encoder (momentum encoders, queues: registered as buffers/submodules so
`state_dict()` carries them).

What the trainer calls, once per optimizer step, in this order (every hook but `loss` defaults to
nothing, so a method overrides only what it needs):
  optimizer_schedule(clock) -> {hyperparameter: factor}: per-iteration schedules of optimizer settings;
      each param group's value is set to (the value it was built with) x factor, so groups built with
      0 (no weight decay on norms and biases) stay at 0. DINO: the cosine weight-decay schedule. The
      learning rate is the trainer's own schedule and cannot be set here.
  begin_step(clock): before the forward pass; per-iteration values the loss reads (DINO's teacher
      temperature warm-up).
  loss(images_u8, gen) -> (loss, extra metrics)
  -- backward(); with several processes the gradients are already averaged over ranks here --
  before_optimizer_step(clock): between backward() and optimizer.step(): gradient clipping, freezing a
      layer (setting its .grad to None skips its update, weight decay included).
  after_step(progress): after optimizer.step(), progress = finished steps / total in [0, 1] (momentum
      encoders' EMA).
`clock` is a StepClock: which step this is, in steps and in (fractional) epochs. Randomness comes only
from the `gen` passed to loss(), derived by the trainer from (seed, step), so a resumed run repeats
the uninterrupted one; anything a hook changes that must survive a restart is a buffer.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ssl_core.augment import AugmentConfig
from ssl_core.training.clock import StepClock

registry: dict[str, type["SSLMethod"]] = {}


MAX_DIM = 8192    # widest hidden or projection layer (Barlow Twins' and VICReg's paper width); d x d weights
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-3, 100.0   # softmax temperatures: logits / 1e-300 overflow to NaN


def check_knob(ok: bool, knob: str, requirement: str, value: Any) -> None:
    """Params.__post_init__ range checks: a ValueError that names pretrain.method_params.<knob>."""
    if not ok:
        raise ValueError(f"pretrain.method_params.{knob} must be {requirement}, got {value!r}")


def check_temperatures(params: Any, *knobs: str) -> None:
    """Each of `knobs` a softmax temperature in [MIN_TEMPERATURE, MAX_TEMPERATURE]."""
    for knob in knobs:
        value = getattr(params, knob)
        check_knob(MIN_TEMPERATURE <= value <= MAX_TEMPERATURE, knob,
                   f"a temperature in [{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}]", value)


def check_floats(params: Any, low: float, high: float, *knobs: str) -> None:
    """Each of `knobs` a number in [low, high]."""
    for knob in knobs:
        value = getattr(params, knob)
        check_knob(low <= value <= high, knob, f"in [{low:g}, {high:g}]", value)


def check_ints(params: Any, low: int, high: int, *knobs: str) -> None:
    """Each of `knobs` an integer (not a bool) in [low, high]."""
    for knob in knobs:
        value = getattr(params, knob)
        check_knob(isinstance(value, int) and not isinstance(value, bool) and low <= value <= high,
                   knob, f"an integer in [{low}, {high}]", value)


class SSLMethod(nn.Module):
    name: ClassVar[str] = ""
    # Method knobs (pretrain.method_params): a dataclass whose defaults are the paper's.
    Params: ClassVar[type] = dataclass(type("NoParams", (), {}))
    # Augmentation recipe: overrides of AugmentConfig's defaults (pretrain.augment overrides these).
    augment_recipe: ClassVar[dict[str, Any]] = {}
    backbone_family: ClassVar[str | None] = None   # "vit" | "resnet" | None (any)
    requires_color: ClassVar[bool] = False
    # What the recipe's RGB-only colour ops (saturation, hue, grayscale) do on data that is not RGB:
    # "skip" them with a note (the other augmentations still run), or "refuse" the data with one sentence.
    # Ops asked for explicitly in pretrain.augment are always refused on such data.
    rgb_only_augment: ClassVar[str] = "skip"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            registry[cls.name] = cls

    def __init__(self, backbone: nn.Module, params: Any, augment: AugmentConfig, image_shape: tuple[int, int, int]):
        super().__init__()
        self.backbone = backbone
        self.params = params
        self.augment = augment
        self.image_shape = image_shape

    @classmethod
    def build(cls, backbone: nn.Module, method_params: dict | None = None, augment_overrides: dict | None = None,
              image_shape: tuple[int, int, int] = (3, 32, 32)) -> "SSLMethod":
        params = cls.Params(**(method_params or {}))
        augment = AugmentConfig().with_overrides({**cls.augment_recipe, **(augment_overrides or {})})
        if cls.requires_color and image_shape[0] != 3:
            raise ValueError(f"method {cls.name!r} needs colour (3-channel) images; this data set has "
                             f"{image_shape[0]} channel(s). Pick another pretrain.method.")
        cls.augment_notes(image_shape[0], augment_overrides or {})
        return cls(backbone, params, augment, image_shape)

    @classmethod
    def augment_notes(cls, channels: int, augment_overrides: dict) -> list[str]:
        """Notes on the recipe's RGB-only ops skipped for `channels` channels; a ValueError naming the key
        when they are refused (asked for in pretrain.augment, or the method's rgb_only_augment is "refuse")."""
        from ssl_core.augment import RGB_ONLY, check_rgb_only, rgb_only_ops

        check_rgb_only(augment_overrides, channels, "pretrain.augment")
        recipe = AugmentConfig().with_overrides({**cls.augment_recipe, **augment_overrides})
        ops = rgb_only_ops(recipe)
        if channels == 3 or not ops:
            return []
        what = ", ".join(RGB_ONLY[k] for k in ops)
        if cls.rgb_only_augment == "refuse":
            raise ValueError(f"pretrain.method: {cls.name!r} relies on RGB-only colour augmentation ({what}) and the "
                             f"data has {channels} channel(s); pick another pretrain.method")
        return [f"{cls.name}: the recipe's {what} (RGB-only) skipped on {channels}-channel data; the other "
                "augmentations run"]

    def loss(self, images_u8: torch.Tensor, gen: torch.Generator | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Make this method's views/targets from a uint8 batch and return (loss, extra metrics)."""
        raise NotImplementedError

    @torch.no_grad()
    def example_views(self, images_u8: torch.Tensor, gen: torch.Generator | None) -> list[torch.Tensor]:
        """Views as the method sees them, float [B, C, H, W] in [0, 1] (for the augmentation grid picture).
        Methods whose inputs are not plain augmented views (tiles, rotations) override this."""
        from ssl_core.augment import augment_batch

        return [augment_batch(images_u8, self.augment, gen) for _ in range(2)]

    def optimizer_schedule(self, clock: StepClock) -> dict[str, float]:
        """Factors for optimizer hyperparameters at this step ({"weight_decay": 2.0}); {} = as built."""
        return {}

    def begin_step(self, clock: StepClock) -> None:
        """Called before each step's forward pass (per-iteration values the loss reads)."""

    def before_optimizer_step(self, clock: StepClock) -> None:
        """Called between backward() and optimizer.step() (gradient clipping, frozen layers)."""

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        """Called after each optimizer step; progress in [0, 1] (momentum schedules)."""

    def describe(self) -> dict[str, Any]:
        return {"method": self.name, **dataclasses.asdict(self.params)}
