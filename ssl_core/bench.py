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
Run: `python -m ssl_core.bench --help` (the CLI's `bench` command calls run()).
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


class StepBench:
    """One method on one device, with what every phase shares: the optimizer, the uint8 cache, the
    batch whose recorded views (b) replays, and a step counter that seeds each step's generator."""

    def __init__(self, args: argparse.Namespace, cache=None):
        """cache: the uint8 images [N, C, S, S] to read batches from (a tensor or the sharded store's
        ShardedImages); None: a synthetic in-memory cache of args.cache_images images."""
        self.args = args
        self.device = device = resolve_device(args.device)
        if args.threads:
            torch.set_num_threads(args.threads)
        torch.manual_seed(args.seed)
        c, s, self.b = args.channels, args.image_size, args.batch_size
        self.cuda = cuda = device.type == "cuda"
        self.channels_last = args.channels_last == "on" or (args.channels_last == "auto" and cuda)
        self.on_device = args.cache_on_device == "on" or (args.cache_on_device == "auto" and cuda)
        self.compile_augment = args.compile_augment == "on" or (args.compile_augment == "auto" and cuda)
        backbone = build_backbone(args.backbone, c, s, small_stem=args.small_stem, width=args.width,
                                  stem_stride=args.stem_stride)
        self.method = get_method_class(args.method).build(backbone, {}, {}, (c, s, s)).to(device)
        if self.channels_last:
            self.method = self.method.to(memory_format=torch.channels_last)
        if args.compile:
            self.method.backbone.compile()   # in place, as pretrain.compile does
        self.method.train()
        self.optimizer = build_optimizer(self.method, args.optimizer, 1e-3, 1e-4)
        self.autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext
        self.cache = cache if cache is not None else synthetic_cache(args.cache_images or 4 * self.b, c, s, args.seed)
        # (a)'s batches: indexed where the cache lives (on the device: no host work, no copy per step)
        self.source = self.cache.to(device) if self.on_device else self.cache
        self.sample_gen = torch.Generator(device=self.source.device).manual_seed(args.seed)
        self.steps_done = 0
        self.fixed_batch = self.to_device(self.cache[:self.b])
        with record_views() as recorded, torch.no_grad(), self.autocast():
            self.method.loss(self.fixed_batch, step_generator(args.seed, 0, device))
        if not recorded:
            raise RuntimeError(f"method {args.method!r} makes no views through augment_batch: nothing to compare")
        self.recorded = recorded   # (b) replays these views every step
        self.timed_steps = args.rounds * args.steps

    def to_device(self, batch: torch.Tensor) -> torch.Tensor:
        return batch.pin_memory().to(self.device, non_blocking=True) if self.cuda else batch.to(self.device)

    def next_batch(self) -> torch.Tensor:
        idx = torch.randint(len(self.source), (self.b,), generator=self.sample_gen, device=self.source.device)
        batch = self.source[idx]
        return batch if self.on_device else self.to_device(batch)

    def optimizer_step(self, batch: torch.Tensor, views: list[torch.Tensor] | None) -> None:
        gen = step_generator(self.args.seed, self.steps_done, self.device)
        self.steps_done += 1
        with replay_views(views) if views is not None else contextlib.nullcontext(), self.autocast():
            train_step(self.method, self.optimizer, batch, gen)
        self.method.after_step(0.5)   # momentum-encoder updates etc. are part of a real step

    def full_step(self) -> None:   # (a)
        with compiled_augment(self.compile_augment, self.device):
            self.optimizer_step(self.next_batch(), None)

    def model_only_step(self) -> None:   # (b)
        self.optimizer_step(self.fixed_batch, [r.views for r in self.recorded])

    def data_path(self) -> None:   # (a)'s data work alone: index the cache, copy, make every view
        batch = self.next_batch()
        gen = step_generator(self.args.seed, 0, self.device)
        with compiled_augment(self.compile_augment, self.device):
            for r in self.recorded:
                augment_batch(batch, r.cfg, gen, r.out_size)

    def time_full_and_model_only(self) -> tuple[dict, dict, float]:
        """(a) and (b) alternately, so load from other processes hits both alike: (seconds, CPU seconds,
        peak memory)."""
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        seconds, cpu = {"full": 0.0, "model_only": 0.0}, {"full": 0.0, "model_only": 0.0}
        for _ in range(self.args.warmup_steps):
            self.model_only_step()
            self.full_step()
        for _ in range(self.args.rounds):
            for phase, step in (("model_only", self.model_only_step), ("full", self.full_step)):
                wall, used = _timed(step, self.args.steps, self.device)
                seconds[phase] += wall
                cpu[phase] += used
        return seconds, cpu, _peak_memory_mb(self.device)

    def time_data_path(self) -> float:
        reps = max(self.timed_steps, 20)
        self.data_path()
        return _timed(self.data_path, reps, self.device)[0] / reps

    def time_baseline(self) -> tuple[float, float, float, float]:
        """(c): one torchvision Compose per recorded view, same recipe and size, DataLoader workers.
        Returns (seconds, CPU seconds including the workers' share, the workers' share, peak memory)."""
        workers = self.args.baseline_workers
        # the first 2 x workers batches are prefetched while the warm-up runs: keep them out of the timing
        warmup = self.args.warmup_steps + 2 * workers
        transforms = [pil_transform(r.cfg, r.out_size, self.args.channels) for r in self.recorded]
        sampler = RandomSampler(range(len(self.cache)), replacement=True, num_samples=(warmup + self.timed_steps) * self.b,
                                generator=torch.Generator().manual_seed(self.args.seed))
        loader = DataLoader(PILViewsDataset(self.cache, transforms), batch_size=self.b, drop_last=True,
                            num_workers=workers, sampler=sampler, persistent_workers=workers > 0, pin_memory=self.cuda)
        children_cpu = _cpu_seconds(children=True)
        batches = iter(loader)

        def baseline_step() -> None:
            self.optimizer_step(self.fixed_batch, [v.to(self.device, non_blocking=True) for v in next(batches)])

        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        for _ in range(warmup):
            baseline_step()
        seconds, cpu = _timed(baseline_step, self.timed_steps, self.device)
        peak = _peak_memory_mb(self.device)
        del batches, loader   # stops (and joins) the worker processes: their CPU time becomes readable
        # workers made exactly warmup + timed_steps batches; charge each timed step its share
        workers_cpu = (_cpu_seconds(children=True) - children_cpu) * self.timed_steps / (warmup + self.timed_steps)
        return seconds, cpu + workers_cpu, workers_cpu, peak


def run(args: argparse.Namespace) -> dict:
    bench = StepBench(args)
    seconds, cpu, peak_a = bench.time_full_and_model_only()
    data_seconds = bench.time_data_path()
    seconds["baseline"], cpu["baseline"], workers_cpu, peak_c = bench.time_baseline()
    return report(bench, seconds, cpu, data_seconds, workers_cpu,
                  {"full_and_model_only": peak_a, "baseline": peak_c})


def report(bench: StepBench, seconds: dict, cpu: dict, data_seconds: float, workers_cpu: float, peak: dict) -> dict:
    args, steps, cuda = bench.args, bench.timed_steps, bench.cuda
    samples = {phase: steps * bench.b / sec for phase, sec in seconds.items()}
    model_ms = 1000 * seconds["model_only"] / steps
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
        "full_step_ms": 1000 * seconds["full"] / steps,
        "model_only_step_ms": model_ms,
        "baseline_step_ms": 1000 * seconds["baseline"] / steps,
        # CPU time (all processes) per step: the work each recipe costs, much less sensitive than
        # wall time to other processes competing for the same cores
        "cpu_ms_per_step": {phase: 1000 * sec / steps for phase, sec in cpu.items()},
        "baseline_workers_cpu_ms_per_step": 1000 * workers_cpu / steps,
        "peak_memory_mb": max(peak.values()),
        "peak_memory_mb_by_phase": peak,
        "peak_memory_kind": "cuda max_memory_allocated" if cuda else "process max RSS (ru_maxrss)",
        "device": str(bench.device),
        "device_name": torch.cuda.get_device_name(bench.device) if cuda else (platform.processor() or platform.machine()),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "bf16_autocast": cuda,
        "channels_last": bench.channels_last,
        "compile": args.compile,
        "compile_augment": bench.compile_augment,
        "cache_on_device": bench.on_device,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": {
            "method": args.method, "backbone": args.backbone, "small_stem": args.small_stem,
            "stem_stride": args.stem_stride, "width": args.width,
            "image_size": args.image_size, "channels": args.channels, "batch_size": bench.b, "steps": args.steps,
            "rounds": args.rounds, "timed_steps_per_phase": steps, "warmup_steps": args.warmup_steps,
            "baseline_workers": args.baseline_workers, "optimizer": args.optimizer, "cache_images": len(bench.cache),
            "views": [{"out_size": r.out_size, **dataclasses.asdict(r.cfg)} for r in bench.recorded],
        },
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m ssl_core.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run_and_report(parser.parse_args(argv))


def run_and_report(args: argparse.Namespace) -> dict:
    """run(), print the JSON and write it to --output (the CLI's `bench` and `python -m ssl_core.bench`)."""
    result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        with open(args.output, "w") as fh:
            fh.write(text + "\n")
    return result


if __name__ == "__main__":
    main()
