"""The pretraining loop: uint8 cache -> method.loss -> optimizer, with warm-up + cosine LR.

Randomness is derived from (seed, step) rather than carried along, so a resumed run draws exactly
the batches and augmentations the uninterrupted run would have drawn. The method's per-step hooks
(optimizer_schedule, begin_step, before_optimizer_step, after_step: see ssl_core/methods/base.py) are
functions of the step's StepClock, so they too repeat on resume.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ssl_core.training import distributed as dist_utils
from ssl_core.augment import compiled_augment
from ssl_core.training.clock import StepClock
from ssl_core.training.prefetch import batches
from ssl_core.training.optim import apply_schedule, build_optimizer, group_hyperparameters, warmup_cosine


@dataclass
class TrainConfig:
    epochs: int
    batch_size: int
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: int = 0
    seed: int = 0
    device: str = "cpu"
    log_every: int = 10
    bf16: bool = False            # bf16 autocast around the forward pass (no loss scaling needed)
    channels_last: bool = False   # NHWC weights and activations (faster convolutions on tensor cores)
    compile: bool = False         # torch.compile the backbone (in place: state_dict keys unchanged)
    compile_augment: bool = False  # torch.compile the view-making ops (ssl_core.augment.compiled_augment)
    cache_on_device: bool = False  # copy the uint8 cache to the device once; batches are sliced there


class NonFiniteLoss(RuntimeError):
    """The loss became NaN/Inf: training stops, the last good checkpoint is kept."""


def step_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(seed * 1_000_003 + step)
    return gen


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The sample order of one epoch (same on every rank; each rank takes its own stride)."""
    gen = torch.Generator().manual_seed(seed * 7919 + epoch)
    return torch.randperm(n, generator=gen)


def steps_per_epoch(n: int, batch_size: int) -> int:
    # drop_last: contrastive losses want full batches, and every rank needs the same step count
    return max(n // batch_size, 1)


def train_step(method: nn.Module, optimizer: torch.optim.Optimizer, batch_u8: torch.Tensor,
               gen: torch.Generator | None, loss_fn: Callable | None = None,
               bf16: bool = False, clock: StepClock | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimizer step of any method. Returns the (detached) loss without a host sync.

    loss_fn: method.loss, or the same call through DistributedDataParallel (dist_utils.loss_fn_for).
    bf16: the forward pass under bf16 autocast; backward and the optimizer stay outside it.
    clock: this step's place in the run, for the method's hooks (default: the first step of one)."""
    clock = clock or StepClock(step=0, steps_per_epoch=1, total_steps=1)
    method.begin_step(clock)
    amp = torch.autocast(batch_u8.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with amp:
        loss, extra = (loss_fn or method.loss)(batch_u8, gen)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    method.before_optimizer_step(clock)
    optimizer.step()
    return loss.detach(), extra


@dataclass
class TrainState:
    """Where training is: restored from a checkpoint to resume mid-epoch."""
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    epoch_losses: list[float] = field(default_factory=list)   # this epoch's losses so far (epoch mean after resume)
    history: list[dict] = field(default_factory=list)         # per-epoch metrics of finished epochs


def check_finite(losses: list[torch.Tensor], state: TrainState) -> None:
    """Raise NonFiniteLoss naming the first step of this epoch whose loss was NaN/Inf (one host sync)."""
    if not losses:
        return
    values = torch.stack(losses)
    bad = (~torch.isfinite(values)).nonzero()
    if bad.numel():
        i = int(bad[0, 0])
        step = state.global_step - len(losses) + i + 1
        raise NonFiniteLoss(f"pretraining loss became {values[i].item()} at step {step} (epoch {state.epoch + 1}); "
                            "training stopped and the last good checkpoint is kept")


def _save_checkpoint(checkpointer, method, optimizer, scheduler, state: TrainState, losses: list[torch.Tensor]) -> None:
    check_finite(losses, state)   # never replace a good checkpoint with diverged weights
    state.epoch_losses = torch.stack(losses).tolist() if losses else []
    checkpointer.save(method, optimizer, scheduler, state)


@dataclass
class _Setup:
    """What the loop needs besides the method: built once, before the first (or resumed) step."""
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loss_fn: Callable
    images_u8: torch.Tensor
    global_batch: int
    steps_per_epoch: int
    total_steps: int
    state: TrainState
    built: list   # each optimizer group's configured hyperparameters, what schedules scale


def _set_up(method: nn.Module, images_u8: torch.Tensor, cfg: TrainConfig, device: torch.device,
            checkpointer) -> _Setup:
    method.to(device)
    if cfg.channels_last:
        method.to(memory_format=torch.channels_last)
    if cfg.compile:
        method.backbone.compile()
    world = dist_utils.world_size()
    if cfg.batch_size < world:
        raise ValueError(f"batch size {cfg.batch_size} is smaller than the {world} processes it is split over")
    global_batch = cfg.batch_size // world * world   # every rank gets the same share
    loss_fn = dist_utils.loss_fn_for(method, device)   # DDP when distributed: gradients averaged over ranks
    spe = steps_per_epoch(images_u8.shape[0], global_batch)
    total = spe * cfg.epochs
    optimizer = build_optimizer(method, cfg.optimizer, cfg.lr, cfg.weight_decay)
    built = group_hyperparameters(optimizer)   # before a restore: schedules scale the configured values
    scheduler = warmup_cosine(optimizer, warmup_steps=spe * cfg.warmup_epochs, total_steps=total)
    state = TrainState()
    if checkpointer is not None:
        state = checkpointer.restore(method, optimizer, scheduler) or state
    if cfg.cache_on_device:
        images_u8 = images_u8.to(device)
    return _Setup(optimizer, scheduler, loss_fn, images_u8, global_batch, spe, total, state, built)


def pretrain(method: nn.Module, images_u8: torch.Tensor, cfg: TrainConfig,
             on_epoch_end: Callable[[int, dict], None] | None = None,
             on_step: Callable[[TrainState, float], None] | None = None,
             checkpointer=None, progress: Callable[[str], None] | None = None) -> list[dict]:
    """Train `method` on the unlabeled uint8 cache [N, C, H, W]. Returns per-epoch metrics.

    checkpointer: object with `restore(method, optimizer, scheduler) -> TrainState|None`,
    `due(state, epoch_end: bool) -> bool` and `save(method, optimizer, scheduler, state)`; None disables
    checkpoints. A run restored mid-epoch continues with the same batches, augmentations and epoch mean.
    """
    device = torch.device(cfg.device)
    run = _set_up(method, images_u8, cfg, device, checkpointer)
    optimizer, scheduler, state, images_u8 = run.optimizer, run.scheduler, run.state, run.images_u8
    world, rank = dist_utils.world_size(), dist_utils.rank()
    n, spe, global_batch = images_u8.shape[0], run.steps_per_epoch, run.global_batch
    # CUDA with the cache in host memory: batches through a pinned, prefetched buffer (training/prefetch.py)
    prefetch = device.type == "cuda" and images_u8.device.type != "cuda"
    method.train()
    with compiled_augment(cfg.compile_augment, device):   # a no-op when off
        while state.epoch < cfg.epochs:
            # on the cache's device, so slicing a batch never waits for a host-to-device copy
            order = epoch_order(cfg.seed, state.epoch, n).to(images_u8.device)
            t0 = time.perf_counter()
            losses = [torch.tensor(v, device=device) for v in state.epoch_losses[:state.step_in_epoch]]
            steps = range(state.step_in_epoch, spe)
            indices = [dist_utils.shard_batch(order[s * global_batch:(s + 1) * global_batch], rank, world) for s in steps]
            for step, batch in zip(steps, batches(images_u8, indices, device, prefetch)):
                gen = step_generator(cfg.seed, state.global_step * world + rank, device)
                clock = StepClock(state.global_step, spe, run.total_steps)
                apply_schedule(optimizer, run.built, method.optimizer_schedule(clock))   # {}: nothing changes
                loss, _ = train_step(method, optimizer, batch, gen, run.loss_fn, cfg.bf16, clock)
                loss = dist_utils.mean_across_ranks(loss)   # the global batch's loss, the same on every rank
                scheduler.step()
                method.after_step((state.global_step + 1) / run.total_steps)
                losses.append(loss)
                state.global_step += 1
                state.step_in_epoch = step + 1
                if state.global_step % cfg.log_every == 0 or step == spe - 1:
                    check_finite(losses, state)   # host sync only every log_every steps
                    value = loss.item()
                    if progress:
                        progress(f"epoch {state.epoch + 1}/{cfg.epochs} step {step + 1}/{spe} loss {value:.4f} "
                                 f"lr {scheduler.get_last_lr()[0]:.2e}")
                    if on_step:
                        on_step(state, value)
                if checkpointer is not None and checkpointer.due(state, epoch_end=False):
                    _save_checkpoint(checkpointer, method, optimizer, scheduler, state, losses)
            check_finite(losses, state)
            epoch_loss = torch.stack(losses).mean().item() if losses else float("nan")
            metrics = {"epoch": state.epoch + 1, "loss": epoch_loss, "seconds": time.perf_counter() - t0,
                       "lr": scheduler.get_last_lr()[0]}
            state.epoch += 1
            state.step_in_epoch = 0
            if on_epoch_end:
                on_epoch_end(state.epoch, metrics)   # may add e.g. knn accuracy to metrics
            state.history.append(metrics)
            if checkpointer is not None and checkpointer.due(state, epoch_end=True):
                _save_checkpoint(checkpointer, method, optimizer, scheduler, state, [])
    return state.history
