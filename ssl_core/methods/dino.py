"""DINO (Caron et al. 2021): self-distillation with no labels, student vs momentum teacher over multi-crop views.

Student = backbone + DINO head (MLP, L2-normalised bottleneck, weight-normalised last layer to out_dim
"prototype" logits); teacher = an EMA copy of both that never receives gradients (momentum
base_momentum -> 1 by cosine, in `after_step`). Views: 2 global crops at the image size and
`local_crops` local crops at `local_crop_size` px (ssl_core.multicrop); the teacher sees the global
views only, the student all of them. Loss: the mean over every (teacher global view i, student view
v != i) pair of the cross-entropy between the teacher's centred, sharpened softmax
softmax((t - center) / teacher_temp) and the student's softmax(s / student_temp), each averaged over
the batch. Collapse is avoided by centring (the center is an EMA of the teacher's batch mean, averaged
over processes when distributed: a buffer, so checkpoints carry it) and sharpening. A loss stuck at
ln(out_dim) is the uniform collapse (centring winning over sharpening): the defaults depart from the
paper's where its settings collapsed on the demo's small ResNets (BatchNorm in the head, a free
last-layer norm, a faster teacher); README "DINO at small scale" has the runs.

Schedules, all through SSLMethod's generic hooks: the teacher temperature warms up linearly from
warmup_teacher_temp to teacher_temp over warmup_teacher_temp_epochs (per iteration; the reference
code steps it per epoch), the weight decay follows a cosine from pretrain.weight_decay to
weight_decay_end_factor times it (paper 0.04 -> 0.4), each gradient tensor is clipped to clip_grad
(per tensor, as the reference code), and the last layer gets no update for the first
freeze_last_layer epochs.

Recipe: the BYOL colour recipe the paper uses (saturation 0.2), global crops 40-100 % of the image,
local crops local_crop_scale of it. As the other methods here at 28-32 px, blur is off, and the
paper's asymmetric solarisation (0 / 0.2 on the two global views) is one symmetric probability of 0.1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ssl_core.training.distributed import mean_across_ranks
from ssl_core.methods.base import MAX_DIM, SSLMethod, check_floats, check_ints, check_knob, check_temperatures

MAX_PROTOTYPES = 65536   # the paper's out_dim (ImageNet)
MAX_EPOCHS = 10**6
from ssl_core.training.clock import StepClock
from ssl_core.methods.moco import cosine_momentum, ema_update, frozen_copy
from ssl_core.models.backbones import ViTTrunk
from ssl_core.models.heads import DINOHead
from ssl_core.multicrop import MultiCrop, ViewGroup, encode_views
from ssl_core.training.optim import clip_grad_per_tensor


def dino_loss(student: torch.Tensor, teacher_probs: torch.Tensor, student_temp: float) -> torch.Tensor:
    """student: logits [V, B, K] of every view; teacher_probs: [T, B, K] of the first T (global) views.
    Mean over the T * V - T pairs (i, v != i) of the batch-mean cross-entropy H(teacher_i, student_v)."""
    t, b = teacher_probs.shape[:2]
    log_p = F.log_softmax(student / student_temp, dim=-1)
    ce = -torch.einsum("tbk,vbk->tv", teacher_probs, log_p) / b   # [T, V]
    same_view = ce.diagonal().sum()                               # pairs (i, i): a view against itself
    return (ce.sum() - same_view) / (t * student.shape[0] - t)


def linear_warmup(start: float, end: float, warmup: float, at: float) -> float:
    """start -> end linearly over `warmup` (same unit as `at`), then end."""
    if warmup <= 0 or at >= warmup:
        return end
    return start + (end - start) * at / warmup


def cosine_factor(end_factor: float, progress: float) -> float:
    """1 at progress 0 -> end_factor at progress 1, by half a cosine (DINO's cosine_scheduler)."""
    return end_factor + 0.5 * (1.0 - end_factor) * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


class DINO(SSLMethod):
    name = "dino"

    @dataclass
    class Params:
        out_dim: int = 4096                 # paper: 65536 prototypes for ImageNet; 4096 for 10-class demo data
        hidden_dim: int = 1024              # paper: 2048, scaled to the small encoders (as BYOL here)
        bottleneck_dim: int = 256
        head_layers: int = 3
        use_bn_in_head: bool = True         # BatchNorm after the head's hidden layers (reference code's option, off there):
        norm_last_layer: bool = False       # ... and a free last-layer norm (paper: fixed at 1); with the paper's
                                            # choices the small demo encoders collapse to uniform (README: DINO)
        freeze_last_layer: int = 1          # epochs without last-layer updates
        student_temp: float = 0.1
        teacher_temp: float = 0.04          # after the warm-up (paper default; 0.07 if training is unstable)
        warmup_teacher_temp: float = 0.04
        warmup_teacher_temp_epochs: int = 30
        center_momentum: float = 0.9
        base_momentum: float = 0.99         # teacher EMA, cosine-scheduled to 1 (paper 0.996: for 100s of epochs)
        clip_grad: float = 3.0              # per gradient tensor; 0 disables
        weight_decay_end_factor: float = 10.0   # cosine from pretrain.weight_decay to this multiple of it
        local_crops: int = 8
        local_crop_size: int = 12           # paper: 96 px at 224 (3/7 of the side); 12 px at 28
        local_crop_scale: tuple[float, float] = (0.05, 0.4)   # area fraction of the local crops
        global_crop_size: int = 0           # 0: the image size (paper: 224 at 224)

        def __post_init__(self) -> None:
            self.local_crop_scale = tuple(self.local_crop_scale)
            check_ints(self, 1, MAX_PROTOTYPES, "out_dim")
            check_ints(self, 1, MAX_DIM, "hidden_dim", "bottleneck_dim")
            check_ints(self, 1, 16, "head_layers")
            check_ints(self, 0, 64, "local_crops")
            check_ints(self, 1, 512, "local_crop_size")
            check_ints(self, 0, 512, "global_crop_size")
            check_ints(self, 0, MAX_EPOCHS, "freeze_last_layer", "warmup_teacher_temp_epochs")
            check_temperatures(self, "student_temp", "teacher_temp", "warmup_teacher_temp")
            for knob in ("center_momentum", "base_momentum"):
                check_knob(0 <= getattr(self, knob) <= 1, knob, "in [0, 1]", getattr(self, knob))
            check_knob(0 <= self.clip_grad <= 1e6, "clip_grad", "in [0, 1e6] (0 disables clipping)", self.clip_grad)
            check_floats(self, 0, 1000, "weight_decay_end_factor")
            low, high = self.local_crop_scale if len(self.local_crop_scale) == 2 else (0, -1)
            check_knob(0 < low <= high <= 1, "local_crop_scale", "an increasing pair in (0, 1]", self.local_crop_scale)

    augment_recipe = {"crop_scale": (0.4, 1.0), "jitter_p": 0.8, "saturation": 0.2, "gray_p": 0.2,
                      "blur_p": 0.0, "solarize_p": 0.1}

    def __init__(self, backbone, params, augment, image_shape):
        super().__init__(backbone, params, augment, image_shape)
        p = params
        global_size = p.global_crop_size or image_shape[-1]
        self.multicrop = MultiCrop(augment, [ViewGroup(2, global_size),
                                             ViewGroup(p.local_crops, p.local_crop_size, {"crop_scale": p.local_crop_scale})])
        self._check_sizes(global_size)
        self.head = DINOHead(backbone.out_dim, p.out_dim, p.hidden_dim, p.bottleneck_dim, p.head_layers,
                             p.norm_last_layer, p.use_bn_in_head)
        self.teacher_backbone = frozen_copy(backbone)
        self.teacher_head = frozen_copy(self.head)
        self.register_buffer("center", torch.zeros(1, p.out_dim))
        self.momentum = p.base_momentum
        self.teacher_temp = linear_warmup(p.warmup_teacher_temp, p.teacher_temp, p.warmup_teacher_temp_epochs, 0.0)

    def _check_sizes(self, global_size: int) -> None:
        p = self.params
        if p.local_crops and p.local_crop_size > global_size:
            raise ValueError(f"pretrain.method_params.local_crop_size must be at most the global crop size "
                             f"({global_size} px: global_crop_size, or data.image_size when that is 0), "
                             f"got {p.local_crop_size}")
        trunk = getattr(self.backbone, "trunk", None)
        if isinstance(trunk, ViTTrunk) and min(self.multicrop.sizes()) < trunk.patch_size:
            raise ValueError(f"pretrain.method_params.local_crop_size must be at least the ViT patch size "
                             f"({trunk.patch_size} px), got {p.local_crop_size}")

    @torch.no_grad()
    def teacher_logits(self, global_views: list[torch.Tensor]) -> torch.Tensor:
        return self.teacher_head(encode_views(self.teacher_backbone, global_views))

    def loss(self, images_u8, gen):
        views = self.multicrop.views(images_u8, gen)
        b = images_u8.shape[0]
        student = self.head(encode_views(self.backbone, views))
        teacher = self.teacher_logits(views[:2])
        with torch.autocast(images_u8.device.type, enabled=False):   # softmaxes over out_dim in fp32
            student, teacher = student.float().view(len(views), b, -1), teacher.float().view(2, b, -1)
            probs = F.softmax((teacher - self.center) / self.teacher_temp, dim=-1)
            loss = dino_loss(student, probs, self.params.student_temp)
        if self.training:
            self.update_center(teacher)
        return loss, {"teacher_temp": torch.tensor(self.teacher_temp, device=loss.device),
                      "momentum": torch.tensor(self.momentum, device=loss.device)}

    @torch.no_grad()
    def update_center(self, teacher: torch.Tensor) -> None:
        """center <- m * center + (1 - m) * mean teacher logit row of the global batch (every view, every rank)."""
        batch_center = mean_across_ranks(teacher.reshape(-1, teacher.shape[-1]).mean(dim=0, keepdim=True))
        m = self.params.center_momentum
        self.center.mul_(m).add_(batch_center.to(self.center.dtype), alpha=1 - m)

    @torch.no_grad()
    def example_views(self, images_u8, gen):
        return self.multicrop.views(images_u8, gen)

    def optimizer_schedule(self, clock: StepClock) -> dict[str, float]:
        return {"weight_decay": cosine_factor(self.params.weight_decay_end_factor, clock.progress)}

    def begin_step(self, clock: StepClock) -> None:
        p = self.params
        self.teacher_temp = linear_warmup(p.warmup_teacher_temp, p.teacher_temp, p.warmup_teacher_temp_epochs,
                                          clock.epoch)

    def before_optimizer_step(self, clock: StepClock) -> None:
        if self.params.clip_grad > 0:
            clip_grad_per_tensor(self.parameters(), self.params.clip_grad)   # the teacher has no gradients
        if clock.epoch < self.params.freeze_last_layer:
            for p in self.head.last_layer.parameters():
                p.grad = None   # the optimizer skips it: no step, no weight decay

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        self.momentum = cosine_momentum(self.params.base_momentum, progress)
        ema_update(self.teacher_backbone, self.backbone, self.momentum)
        ema_update(self.teacher_head, self.head, self.momentum)
