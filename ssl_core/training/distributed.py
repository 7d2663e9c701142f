"""torch.distributed helpers used by the methods and the trainer (no-ops in one process)."""
from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sends each rank the gradient of its own slice (summed over ranks)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = [torch.zeros_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor) -> torch.Tensor:
        stacked = torch.stack(grads)
        dist.all_reduce(stacked)
        return stacked[dist.get_rank()]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x from every rank along dim 0; gradients flow back to the owner rank."""
    if not is_distributed():
        return x
    return torch.cat(_GatherWithGrad.apply(x), dim=0)


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    if not is_distributed():
        return x
    out = [torch.zeros_like(x) for _ in range(world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)


# --- Multi-process training (launched by torchrun: see ssl_core/launch.py) -------------------------

# A peer that died or hangs must not block the others forever: every collective gives up after this.
# Generous because rank 0 runs the kNN monitor and writes checkpoints while the others wait.
DEFAULT_TIMEOUT_S = 900.0
TIMEOUT_ENV = "SSL_PIPELINE_DIST_TIMEOUT_S"


def init_from_env(device_name: str = "auto") -> torch.device:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).

    NCCL with each rank on cuda:LOCAL_RANK when CUDA is used, gloo on CPU. Returns the rank's device.
    """
    import os
    from datetime import timedelta

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"local rank {local_rank} has no GPU: this node has {torch.cuda.device_count()}; "
                               "set pretrain.nproc_per_node to at most the number of GPUs")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    timeout = timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timeout,
                            device_id=device if use_cuda else None)
    return device


def shutdown() -> None:
    if is_distributed():
        dist.destroy_process_group()


def shard_batch(indices: torch.Tensor, rank_: int, world: int) -> torch.Tensor:
    """This rank's contiguous slice of a global batch (len(indices) must be a multiple of world).

    Contiguous slices keep the concatenation over ranks equal to the global batch, so gathered
    tensors (negatives, MoCo keys) come out in the single-process order.
    """
    per_rank = len(indices) // world
    return indices[rank_ * per_rank:(rank_ + 1) * per_rank]


def mean_across_ranks(x: torch.Tensor) -> torch.Tensor:
    """Average of a (detached) tensor over ranks: what the loss of the global batch is."""
    if not is_distributed():
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x / world_size()


class _LossForward(torch.nn.Module):
    """Routes DistributedDataParallel's forward to method.loss (methods train through loss(), not forward())."""

    def __init__(self, method: torch.nn.Module):
        super().__init__()
        self.method = method

    def forward(self, images_u8: torch.Tensor, gen: torch.Generator | None):
        return self.method.loss(images_u8, gen)


def loss_fn_for(method: torch.nn.Module, device: torch.device):
    """The callable the trainer computes the loss with: method.loss in one process; in several, the
    same call through DistributedDataParallel, which averages gradients over ranks during backward.

    Why DDP and not a manual all-reduce: it overlaps communication with backward and keeps buffers
    (BatchNorm statistics, MoCo's queue) identical on every rank by broadcasting rank 0's. Every
    method uses all its trainable parameters in each step (tests/test_distributed.py checks it), so
    find_unused_parameters stays off. Losses that gather across ranks (NT-Xent) route the other
    ranks' gradient shares back with gather_with_grad's all-reduce; DDP's average then yields the
    gradient of the global-batch mean loss.
    """
    if not is_distributed():
        return method.loss
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(_LossForward(method), device_ids=[device.index] if device.type == "cuda" else None)
