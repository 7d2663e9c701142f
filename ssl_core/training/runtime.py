"""Which device a run uses and how torch is set up for it (threads, cuDNN autotune, TF32)."""
from __future__ import annotations

import os

import torch


def resolve_device(name: str) -> torch.device:
    """"auto" | "cpu" | "cuda" -> a device; "cuda" without one is an error naming the knob."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("pretrain.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


def setup_torch(device_name: str) -> torch.device:
    """The device for `device_name`, with torch set up for it: every core on a CPU (unless
    OMP_NUM_THREADS says otherwise), cuDNN autotuning and TF32 matmuls on CUDA."""
    device = resolve_device(device_name)
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(os.cpu_count() or 1, 1))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
    return device
