"""`ssl-pipeline bench`: the real pretraining step, timed three ways, printed as JSON.

  (a) full:       uint8 cache in memory -> batch sliced by index -> device -> method.loss (views made
                  by augment_batch on the device) -> backward -> optimizer step (ssl_core.training.loop.train_step);
  (b) model only: the same train_step on views made beforehand (augment.replay_views hands the method
                  pre-made float views): the ceiling for (a);
  (c) baseline:   the same train_step fed by the recipe most users start from: a Dataset of PIL
                  images, torchvision transforms (one Compose per view) and DataLoader workers.
Also timed: the data path of (a) alone (index, copy, every view), reported as data_path_ms_per_step and
as full_over_model_only_from_parts = model / (model + data path), the (a)/(b) ratio without the
phase-to-phase noise of a shared machine. A sample is one image turned into all of its views (two for
SimCLR). On CUDA every path runs with channels_last and bf16 autocast and synchronises only around the
timed regions; (a) slices its batches from a copy of the cache on the GPU and makes its views through
torch.compile (--cache-on-device, --compile-augment), (c) uses pinned memory and non_blocking copies.
Run: `python -m ssl_pipeline.bench --help` (the CLI's `bench` command calls run()).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import resource
import sys
import time
from typing import Callable

import numpy as np
import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader, Dataset, RandomSampler
from torchvision import transforms as T

from ssl_core.augment import (AugmentConfig, augment_batch, blur_kernel_size, compiled_augment, record_views,
                              replay_views)
from ssl_core.methods import get_method_class, method_names
from ssl_core.models import build_backbone
from ssl_core.models.backbones import BACKBONE_NAMES
from ssl_core.training.optim import build_optimizer
from ssl_core.training.loop import step_generator, train_step
from ssl_core.training.runtime import resolve_device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", default="simclr", help=f"one of: {', '.join(method_names())}")
    parser.add_argument("--backbone", default="resnet18", choices=BACKBONE_NAMES)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=3, choices=(1, 3))
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per phase (and per round)")
    parser.add_argument("--warmup-steps", type=int, default=2, help="untimed steps before each phase")
    parser.add_argument("--rounds", type=int, default=2,
                        help="(a) and (b) are timed alternately this many times, so load from other "
                             "processes hits both alike; (c) then runs rounds x steps steps")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--small-stem", action=argparse.BooleanOptionalAction, default=True,
                        help="3x3 stride-1 ResNet stem for small images (--no-small-stem: ImageNet stem)")
    parser.add_argument("--stem-stride", type=int, default=1, choices=(1, 2),
                        help="stride of the small stem (the demo uses 2)")
    parser.add_argument("--width", type=int, default=32, help="base width of resnet_narrow")
    parser.add_argument("--optimizer", default="adamw", choices=("sgd", "adamw", "lars"))
    parser.add_argument("--baseline-workers", type=int, default=2, help="DataLoader workers of (c)")
    parser.add_argument("--cache-images", type=int, default=0,
                        help="images in the synthetic uint8 cache (0: 4 x batch size)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--channels-last", default="auto", choices=("auto", "on", "off"),
                        help="auto: on for CUDA only (on this CPU it measured slower)")
    parser.add_argument("--cache-on-device", default="auto", choices=("auto", "on", "off"),
                        help="(a) slices batches from a copy of the cache on the device (auto: on for CUDA)")
    parser.add_argument("--compile-augment", default="auto", choices=("auto", "on", "off"),
                        help="torch.compile the view-making ops in (a) (auto: on for CUDA)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the backbone first (CUDA; compiling happens in the warm-up steps)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="also write the JSON to this file")


def pil_transform(cfg: AugmentConfig, out_size: int, channels: int) -> T.Compose:
    """The torchvision equivalent of one augment_batch view (what users usually write)."""
    ops: list = [T.RandomResizedCrop(out_size, scale=cfg.crop_scale, ratio=cfg.crop_ratio)]
    if cfg.hflip_p > 0:
        ops.append(T.RandomHorizontalFlip(cfg.hflip_p))
    colour = dict(brightness=cfg.brightness, contrast=cfg.contrast)
    if channels == 3:
        colour.update(saturation=cfg.saturation, hue=cfg.hue)
    if cfg.jitter_p > 0:
        ops.append(T.RandomApply([T.ColorJitter(**colour)], p=cfg.jitter_p))
    if cfg.gray_p > 0 and channels == 3:
        ops.append(T.RandomGrayscale(cfg.gray_p))
    if cfg.blur_p > 0:
        ops.append(T.RandomApply([T.GaussianBlur(blur_kernel_size(cfg, out_size), cfg.blur_sigma)], p=cfg.blur_p))
    if cfg.solarize_p > 0:
        ops.append(T.RandomSolarize(round(255 * cfg.solarize_threshold), p=cfg.solarize_p))
    ops.append(T.ToTensor())
    return T.Compose(ops)


class PILViewsDataset(Dataset):
    """CIFAR-style dataset: uint8 HWC arrays; each item -> PIL image -> one tensor per view transform."""

    def __init__(self, images_u8: torch.Tensor, transforms: list[T.Compose]):
        arr = images_u8.permute(0, 2, 3, 1).numpy()
        self.images = np.ascontiguousarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> list[torch.Tensor]:
        image = Image.fromarray(self.images[i])
        return [t(image) for t in self.transforms]


def synthetic_cache(n: int, channels: int, size: int, seed: int) -> torch.Tensor:
    """Smooth random uint8 images [N, C, S, S] (content does not change the timings)."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, channels, max(size // 4, 1), max(size // 4, 1), generator=gen)
    smooth = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    noise = torch.rand(n, channels, size, size, generator=gen) * 0.2
    return ((smooth * 0.8 + noise) * 255).round().clamp(0, 255).to(torch.uint8)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss   # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def _cpu_seconds(children: bool = False) -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _timed(step: Callable[[], None], steps: int, device: torch.device) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) for `steps` steps."""
    _sync(device)
    start, cpu = time.perf_counter(), _cpu_seconds()
    for _ in range(steps):
        step()
    _sync(device)
    return time.perf_counter() - start, _cpu_seconds() - cpu


def run(args: argparse.Namespace) -> dict:
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    c, s, b = args.channels, args.image_size, args.batch_size
    cuda = device.type == "cuda"
    channels_last = args.channels_last == "on" or (args.channels_last == "auto" and cuda)
    on_device = args.cache_on_device == "on" or (args.cache_on_device == "auto" and cuda)
    compile_augment = args.compile_augment == "on" or (args.compile_augment == "auto" and cuda)
    backbone = build_backbone(args.backbone, c, s, small_stem=args.small_stem, width=args.width,
                              stem_stride=args.stem_stride)
    method = get_method_class(args.method).build(backbone, {}, {}, (c, s, s)).to(device)
    if channels_last:
        method = method.to(memory_format=torch.channels_last)
    if args.compile:
        method.backbone.compile()   # in place, as pretrain.compile does
    method.train()
    optimizer = build_optimizer(method, args.optimizer, 1e-3, 1e-4)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext
    cache = synthetic_cache(args.cache_images or 4 * b, c, s, args.seed)
    # (a)'s batches: indexed where the cache lives (on the device: no host work, no copy per step)
    source = cache.to(device) if on_device else cache
    sample_gen = torch.Generator(device=source.device).manual_seed(args.seed)
    step_count = [0]

    def optimizer_step(batch: torch.Tensor, views: list[torch.Tensor] | None) -> None:
        gen = step_generator(args.seed, step_count[0], device)
        step_count[0] += 1
        with replay_views(views) if views is not None else contextlib.nullcontext(), autocast():
            train_step(method, optimizer, batch, gen)
        method.after_step(0.5)   # momentum-encoder updates etc. are part of a real step

    def to_device(batch: torch.Tensor) -> torch.Tensor:
        return batch.pin_memory().to(device, non_blocking=True) if cuda else batch.to(device)

    def next_batch() -> torch.Tensor:
        batch = source[torch.randint(len(source), (b,), generator=sample_gen, device=source.device)]
        return batch if on_device else to_device(batch)

    def full_step() -> None:   # (a)
        with compiled_augment(compile_augment, device):
            optimizer_step(next_batch(), None)

    # (b): record the views this method makes for one batch, then replay them every step
    fixed_batch = to_device(cache[:b])
    with record_views() as recorded, torch.no_grad(), autocast():
        method.loss(fixed_batch, step_generator(args.seed, 0, device))
    if not recorded:
        raise RuntimeError(f"method {args.method!r} makes no views through augment_batch: nothing to compare")
    premade = [r.views for r in recorded]

    def model_only_step() -> None:
        optimizer_step(fixed_batch, premade)

    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    seconds = {"full": 0.0, "model_only": 0.0, "baseline": 0.0}
    cpu = dict(seconds)
    for _ in range(args.warmup_steps):
        model_only_step()
        full_step()
    for _ in range(args.rounds):
        for phase, step in (("model_only", model_only_step), ("full", full_step)):
            wall, used = _timed(step, args.steps, device)
            seconds[phase] += wall
            cpu[phase] += used
    peak = {"full_and_model_only": _peak_memory_mb(device)}

    def data_path() -> None:   # (a)'s data work alone: index the cache, copy, make every view
        batch = next_batch()
        gen = step_generator(args.seed, 0, device)
        with compiled_augment(compile_augment, device):
            for r in recorded:
                augment_batch(batch, r.cfg, gen, r.out_size)

    data_reps = max(args.rounds * args.steps, 20)
    data_path()
    data_seconds = _timed(data_path, data_reps, device)[0] / data_reps

    # (c): one torchvision Compose per recorded view, same recipe and size
    transforms = [pil_transform(r.cfg, r.out_size, c) for r in recorded]
    workers = args.baseline_workers
    # the first 2 x workers batches are prefetched while the warm-up runs: keep them out of the timing
    warmup = args.warmup_steps + 2 * workers
    timed_steps = args.rounds * args.steps
    loader = DataLoader(PILViewsDataset(cache, transforms), batch_size=b, drop_last=True, num_workers=workers,
                        sampler=RandomSampler(range(len(cache)), replacement=True, num_samples=(warmup + timed_steps) * b,
                                              generator=torch.Generator().manual_seed(args.seed)),
                        persistent_workers=workers > 0, pin_memory=cuda)
    children_cpu = _cpu_seconds(children=True)
    batches = iter(loader)

    def baseline_step() -> None:
        views = [v.to(device, non_blocking=True) for v in next(batches)]
        optimizer_step(fixed_batch, views)

    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        baseline_step()
    seconds["baseline"], cpu["baseline"] = _timed(baseline_step, timed_steps, device)
    peak["baseline"] = _peak_memory_mb(device)
    del batches, loader   # stops (and joins) the worker processes: their CPU time becomes readable
    # workers made exactly warmup + timed_steps batches; charge each timed step its share
    workers_cpu = (_cpu_seconds(children=True) - children_cpu) * timed_steps / (warmup + timed_steps)
    cpu["baseline"] += workers_cpu

    samples = {phase: timed_steps * b / sec for phase, sec in seconds.items()}
    model_ms = 1000 * seconds["model_only"] / timed_steps
    return {
        "full_samples_per_s": samples["full"],
        "model_only_samples_per_s": samples["model_only"],
        "baseline_samples_per_s": samples["baseline"],
        "full_over_model_only": samples["full"] / samples["model_only"],
        "full_over_baseline": samples["full"] / samples["baseline"],
        # On a CPU the data path runs serially with the model step, so full ~ model + data path; this
        # ratio of the two parts is not blurred by the step-time noise of a shared machine
        "full_over_model_only_from_parts": model_ms / (model_ms + 1000 * data_seconds),
        "data_path_ms_per_step": 1000 * data_seconds,
        "full_step_ms": 1000 * seconds["full"] / timed_steps,
        "model_only_step_ms": model_ms,
        "baseline_step_ms": 1000 * seconds["baseline"] / timed_steps,
        # CPU time (all processes) per step: the work each recipe costs, much less sensitive than
        # wall time to other processes competing for the same cores
        "cpu_ms_per_step": {phase: 1000 * sec / timed_steps for phase, sec in cpu.items()},
        "baseline_workers_cpu_ms_per_step": 1000 * workers_cpu / timed_steps,
        "peak_memory_mb": max(peak.values()),
        "peak_memory_mb_by_phase": peak,
        "peak_memory_kind": "cuda max_memory_allocated" if cuda else "process max RSS (ru_maxrss)",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else (platform.processor() or platform.machine()),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "bf16_autocast": cuda,
        "channels_last": channels_last,
        "compile": args.compile,
        "compile_augment": compile_augment,
        "cache_on_device": on_device,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": {
            "method": args.method, "backbone": args.backbone, "small_stem": args.small_stem,
            "stem_stride": args.stem_stride, "width": args.width,
            "image_size": s, "channels": c, "batch_size": b, "steps": args.steps, "rounds": args.rounds,
            "timed_steps_per_phase": timed_steps, "warmup_steps": args.warmup_steps,
            "baseline_workers": workers, "optimizer": args.optimizer, "cache_images": len(cache),
            "views": [{"out_size": r.out_size, **dataclasses.asdict(r.cfg)} for r in recorded],
        },
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m ssl_pipeline.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run_and_report(parser.parse_args(argv))


def run_and_report(args: argparse.Namespace) -> dict:
    """run(), print the JSON and write it to --output (the CLI's `bench` and `python -m ssl_pipeline.bench`)."""
    result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        with open(args.output, "w") as fh:
            fh.write(text + "\n")
    return result


if __name__ == "__main__":
    main()
