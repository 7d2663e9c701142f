"""MoCo v2 (Chen et al. 2020, "Improved baselines with momentum contrastive learning") and
MoCo v3 (Chen, Xie, He 2021), selected by Params.version.

Both: a query encoder (backbone + projector) trained by gradient, a key encoder that is a momentum
(EMA) copy of it, InfoNCE between the two views, symmetrised (q1 vs k2 and q2 vs k1).
- v2: negatives are a FIFO queue of past keys (`queue`, `queue_ptr` buffers, so a checkpoint carries
  them). Both views' keys are enqueued after each training step (never in eval mode). When
  distributed, keys of every rank are gathered first, so each rank holds the single-process queue.
- v3: no queue; a predictor on the query side; negatives are the other keys of the (global) batch;
  the loss is scaled by 2*tau as in the reference code.

Momentum: m = 1 - (1 - base_momentum) * (cos(pi * progress) + 1) / 2, i.e. base_momentum -> 1.0 by
cosine over training, applied in `after_step`.

Shuffle-BN: with one process, keys computed with batch statistics of the very batch the queries
come from let the model spot the positive by its batch "signature" (MoCo's BN cheating). As in the
MoCo authors' single-GPU CIFAR demo, the key batch is shuffled (from the step's generator) and split
into `bn_splits` groups that each get their own BatchNorm statistics.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ssl_core.augment import augment_batch
from ssl_core.training.distributed import gather_no_grad, rank
from ssl_core.methods.base import MAX_DIM, SSLMethod, check_ints, check_temperatures
from ssl_core.models.heads import mlp

MAX_QUEUE = 65536   # the paper's queue (ImageNet); keys held in memory


def cosine_momentum(base: float, progress: float) -> float:
    """EMA coefficient at `progress` in [0, 1]: base at the start, 1.0 at the end (BYOL schedule)."""
    progress = min(max(progress, 0.0), 1.0)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, m: float) -> None:
    """target <- m * target + (1 - m) * online, parameter by parameter (buffers are the target's own)."""
    for p_t, p_o in zip(target.parameters(), online.parameters()):
        p_t.mul_(m).add_((1.0 - m) * p_o)


def frozen_copy(module: nn.Module) -> nn.Module:
    """Deep copy that never receives gradients (a momentum/target network)."""
    twin = copy.deepcopy(module)
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin


@torch.no_grad()
def split_bn_forward(net: nn.Module, x: torch.Tensor, splits: int, gen: torch.Generator | None) -> torch.Tensor:
    """net(x) with rows shuffled into `splits` groups that each see their own BatchNorm statistics;
    outputs come back in the input order. splits <= 1 is a plain forward."""
    splits = min(splits, x.shape[0] // 2)
    if splits <= 1:
        return net(x)
    perm = torch.randperm(x.shape[0], generator=gen, device=x.device)
    out = torch.cat([net(chunk) for chunk in x[perm].chunk(splits)])
    return out[torch.argsort(perm)]


def queue_infonce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo v2 InfoNCE: row i's positive is k[i], its negatives every queue row. Inputs L2-normalised."""
    pos = (q * k).sum(dim=1, keepdim=True)
    neg = q @ queue.T
    logits = torch.cat([pos, neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def batch_infonce(q: torch.Tensor, k_all: torch.Tensor, temperature: float, offset: int = 0) -> torch.Tensor:
    """MoCo v3 InfoNCE: row i's positive is k_all[offset + i], negatives the other keys; x 2*tau."""
    logits = F.normalize(q, dim=1) @ F.normalize(k_all, dim=1).T / temperature
    labels = torch.arange(q.shape[0], device=q.device) + offset
    return F.cross_entropy(logits, labels) * (2 * temperature)


class MoCo(SSLMethod):
    name = "moco"

    @dataclass
    class Params:
        version: str = "v2"            # "v2" (queue) | "v3" (predictor, in-batch negatives)
        temperature: float = 0.2
        base_momentum: float = 0.99    # cosine-scheduled to 1.0
        queue_size: int = 256          # v2 only. Paper: 65536; a few batches of keys on small data
                                       # (older keys are staler): docs/method-knobs.md
        projection_dim: int = 128
        hidden_dim: int = 1024
        bn_splits: int = 4             # key-encoder BatchNorm groups (shuffle-BN); 1 disables

        def __post_init__(self) -> None:
            if self.version not in ("v2", "v3"):
                raise ValueError(f"pretrain.method_params.version: expected 'v2' or 'v3', got {self.version!r}")
            if not 0 <= self.base_momentum <= 1:
                raise ValueError(f"pretrain.method_params.base_momentum must be in [0, 1], got {self.base_momentum}")
            check_temperatures(self, "temperature")
            check_ints(self, 1, MAX_QUEUE, "queue_size")
            check_ints(self, 1, MAX_DIM, "projection_dim", "hidden_dim")
            check_ints(self, 1, 64, "bn_splits")

    augment_recipe = {"crop_scale": (0.2, 1.0), "jitter_p": 0.8, "gray_p": 0.2, "blur_p": 0.0}

    def __init__(self, backbone, params, augment, image_shape):
        super().__init__(backbone, params, augment, image_shape)
        p = params
        if p.version == "v2":
            self.projector = mlp(backbone.out_dim, p.hidden_dim, p.projection_dim)
        else:   # v3: 3-layer projector and 2-layer predictor, both ending in BN (reference code)
            self.projector = mlp(backbone.out_dim, p.hidden_dim, p.projection_dim, layers=3, last_bn=True)
            self.predictor = mlp(p.projection_dim, p.hidden_dim, p.projection_dim, layers=2, last_bn=True)
        self.momentum_backbone = frozen_copy(backbone)
        self.momentum_projector = frozen_copy(self.projector)
        if p.version == "v2":
            queue = F.normalize(torch.randn(p.queue_size, p.projection_dim), dim=1)
            self.register_buffer("queue", queue)
            self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.momentum = p.base_momentum

    def queries(self, x: torch.Tensor) -> torch.Tensor:
        z = self.projector(self.backbone(x))
        return self.predictor(z) if self.params.version == "v3" else z

    @torch.no_grad()
    def keys(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        def key_net(v: torch.Tensor) -> torch.Tensor:
            return self.momentum_projector(self.momentum_backbone(v))
        return F.normalize(split_bn_forward(key_net, x, self.params.bn_splits, gen), dim=1)

    def loss(self, images_u8, gen):
        v1 = augment_batch(images_u8, self.augment, gen)
        v2 = augment_batch(images_u8, self.augment, gen)
        views = torch.cat([v1, v2])
        q1, q2 = self.queries(views).chunk(2)
        k1, k2 = self.keys(views, gen).chunk(2)
        tau = self.params.temperature
        if self.params.version == "v2":
            q1, q2 = F.normalize(q1, dim=1), F.normalize(q2, dim=1)
            # A snapshot: the enqueue below must not alter the tensor autograd saved for backward.
            negatives = self.queue.clone()
            loss = queue_infonce(q1, k2, negatives, tau) + queue_infonce(q2, k1, negatives, tau)
            if self.training:
                # gathered per view: [k1 of every rank, k2 of every rank] is the 1-process order
                self.enqueue(torch.cat([gather_no_grad(k1), gather_no_grad(k2)]))
        else:
            offset = rank() * k1.shape[0]
            loss = (batch_infonce(q1, gather_no_grad(k2), tau, offset)
                    + batch_infonce(q2, gather_no_grad(k1), tau, offset))
        return loss, {"momentum": torch.tensor(self.momentum, device=loss.device)}

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """FIFO: write keys at the pointer (wrapping around), oldest entries are overwritten first."""
        size, n = self.queue.shape[0], keys.shape[0]
        skip = max(n - size, 0)    # more keys than slots: only the newest `size` survive
        # Pointer arithmetic stays on the device: no host sync in the training loop.
        idx = (self.queue_ptr + skip + torch.arange(n - skip, device=keys.device)) % size
        self.queue[idx] = keys[skip:].to(self.queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + n) % size)

    def queue_in_order(self) -> torch.Tensor:
        """Queue rows from oldest to newest."""
        return torch.roll(self.queue, shifts=-int(self.queue_ptr), dims=0)

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        self.momentum = cosine_momentum(self.params.base_momentum, progress)
        ema_update(self.momentum_backbone, self.backbone, self.momentum)
        ema_update(self.momentum_projector, self.projector, self.momentum)
