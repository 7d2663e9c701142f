"""Batched, per-sample-random image augmentation on the training device.

Input: a uint8 batch [B, C, H, W] sliced from the prepared cache. Output: float32 views in [0, 1],
[B, C, out, out]. Every sample draws its own parameters from the caller's torch.Generator, so a run
is reproducible from its seed, and no per-image Python work happens in the hot loop.
Recipes are data (AugmentConfig values), chosen per method and overridden from params.yaml.

Pipeline (fixed order, as in the SimCLR/BYOL recipes; torchvision's ColorJitter shuffles its four
ops per image, here they always run brightness -> contrast -> saturation -> hue):
  1. random resized crop + horizontal flip: one bilinear grid-sample for the whole batch;
  2. colour jitter + random grayscale: brightness, contrast, saturation, hue (a rotation of the
     chroma plane in YIQ space, as NVIDIA DALI's hue; torchvision rotates HSV hue, which keeps
     the max channel rather than luma) and grayscale are all linear in RGB, so they compose into one
     per-sample 3x3 matrix plus an offset, applied in a single batched matmul and clamped once
     (torchvision clamps after every op; the two differ only where a pixel saturates mid-chain);
  3. Gaussian blur: separable, one batched multiply-add per tap with per-sample weights
     (torchvision's kernel and reflect padding; sigma 0 = identity kernel for samples not blurred);
  4. solarization: pixels >= threshold become 1 - pixel.
Ops whose probability is 0 are skipped and draw no random numbers; all random numbers of a call
come from one torch.rand, whose columns depend only on the config, so the stream is deterministic.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F


MAX_FACTOR = 100.0   # upper bound of the strength and range knobs: far past any useful recipe


@dataclass(frozen=True)
class AugmentConfig:
    crop_scale: tuple[float, float] = (0.2, 1.0)   # area fraction of the random resized crop
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1                               # max hue shift, a fraction of a full turn (<= 0.5)
    gray_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0
    blur_kernel_frac: float = 0.1                  # kernel side ~ this fraction of the view (SimCLR)
    solarize_threshold: float = 0.5

    def __post_init__(self) -> None:
        """Every knob in its range; messages name augment.<knob> (the schema prefixes the section)."""
        def check(ok: bool, name: str, requirement: str) -> None:
            if not ok:
                raise ValueError(f"augment.{name} must be {requirement}, got {getattr(self, name)!r}")

        for name in ("hflip_p", "jitter_p", "gray_p", "blur_p", "solarize_p"):
            check(0.0 <= getattr(self, name) <= 1.0, name, "a probability in [0, 1]")
        check(0.0 <= self.solarize_threshold <= 1.0, "solarize_threshold", "in [0, 1] (a pixel value)")
        for name, high in (("crop_scale", 1.0), ("crop_ratio", MAX_FACTOR), ("blur_sigma", MAX_FACTOR)):
            low_v, high_v = getattr(self, name)
            floor_ok = low_v >= 0 if name == "blur_sigma" else low_v > 0
            check(floor_ok and low_v <= high_v <= high, name, f"an increasing pair of positive numbers up to {high:g}")
        for name in ("brightness", "contrast", "saturation"):
            check(0.0 <= getattr(self, name) <= MAX_FACTOR, name, f"in [0, {MAX_FACTOR:g}]")
        check(0.0 <= self.hue <= 0.5, "hue", "in [0, 0.5] (a fraction of a full turn)")
        check(0.0 < self.blur_kernel_frac <= 1.0, "blur_kernel_frac", "in (0, 1] (a fraction of the view side)")

    def with_overrides(self, overrides: dict) -> "AugmentConfig":
        fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
        return dataclasses.replace(self, **fixed)


@dataclass
class AugmentParams:
    """The per-sample parameters of one call. None = the op is not in the recipe (skipped)."""
    boxes: torch.Tensor                      # [B, 4] crop (x0, y0, w, h) as fractions of input W/H
    flip: torch.Tensor                       # [B] bool
    brightness: torch.Tensor | None = None   # [B] factors; 1 / 0 (hue) for samples not jittered
    contrast: torch.Tensor | None = None
    saturation: torch.Tensor | None = None
    hue: torch.Tensor | None = None          # [B] shift in turns, in [-0.5, 0.5]
    gray: torch.Tensor | None = None         # [B] bool
    blur_sigma: torch.Tensor | None = None   # [B]; 0 = not blurred
    blur_kernel: int = 3
    solarize: torch.Tensor | None = None     # [B] bool
    solarize_threshold: float = 0.5


# Luma weights (ITU-R 601, as torchvision's grayscale); the YIQ rows I and Q sum to 0, so grey
# pixels have no chroma and every chroma matrix below maps grey to itself.
LUMA = (0.299, 0.587, 0.114)
_YIQ = torch.tensor([LUMA, (0.596, -0.274, -0.322), (0.211, -0.523, 0.312)], dtype=torch.float64)
_YIQ_INV = torch.linalg.inv(_YIQ)
_YIQ_INV[:, 0] = 1.0   # exact: Y alone maps back to grey (keeps grayscale views exactly R == G == B)
_MATRICES = {   # chroma matrix = luma + k cos(a) chroma_cos + k sin(a) chroma_sin (see _chroma_matrix)
    "luma": torch.outer(_YIQ_INV[:, 0], _YIQ[0]),
    "chroma_cos": torch.outer(_YIQ_INV[:, 1], _YIQ[1]) + torch.outer(_YIQ_INV[:, 2], _YIQ[2]),
    "chroma_sin": torch.outer(_YIQ_INV[:, 2], _YIQ[1]) - torch.outer(_YIQ_INV[:, 1], _YIQ[2]),
}
_on_device: dict[tuple[str, torch.device], torch.Tensor] = {}


def _constant(name: str, device: torch.device) -> torch.Tensor:
    """Constants copied to each device once (a per-call host-to-device copy would sync on CUDA)."""
    key = (name, torch.device(device))
    if key not in _on_device:
        _on_device[key] = _MATRICES[name].to(device=device, dtype=torch.float32)
    return _on_device[key]


RGB_ONLY = {"saturation": "saturation", "hue": "hue", "gray_p": "grayscale"}   # knob -> what it does


def rgb_only_ops(cfg: AugmentConfig) -> list[str]:
    """The knobs of `cfg` that switch on an operation defined only for RGB images."""
    active = []
    if cfg.jitter_p > 0 and cfg.saturation > 0:
        active.append("saturation")
    if cfg.jitter_p > 0 and cfg.hue > 0:
        active.append("hue")
    if cfg.gray_p > 0:
        active.append("gray_p")
    return active


def check_rgb_only(overrides: dict, channels: int, key: str) -> None:
    """Refuse, naming `key`.<knob>, an RGB-only operation asked for explicitly on non-RGB data.
    (Brightness, contrast, crops, flips, blur and solarization work on any channel count.)"""
    if channels == 3:
        return
    asked = [k for k in rgb_only_ops(AugmentConfig().with_overrides({"saturation": 0.0, "hue": 0.0, "gray_p": 0.0,
                                                                       "jitter_p": 1.0, **overrides}))
             if k in overrides]
    if asked:
        knob = asked[0]
        raise ValueError(f"{key}.{knob}: {RGB_ONLY[knob]} is defined only for RGB (3-channel) images and the data "
                         f"has {channels} channel(s); set {key}.{knob} to 0 (brightness and contrast work on any "
                         "channel count)")


def _columns(cfg: AugmentConfig, channels: int) -> list[str]:
    """Which random numbers a call draws, in order: depends only on the config and channel count."""
    cols = ["area", "log_ratio", "x0", "y0"]
    if cfg.hflip_p > 0:
        cols.append("flip")
    strengths = {"brightness": cfg.brightness, "contrast": cfg.contrast}
    if channels == 3:
        strengths.update(saturation=cfg.saturation, hue=cfg.hue)
    jittered = [name for name, s in strengths.items() if s > 0]
    if cfg.jitter_p > 0 and jittered:
        cols += ["jitter"] + jittered
    if cfg.gray_p > 0 and channels == 3:
        cols.append("gray")
    if cfg.blur_p > 0:
        cols += ["blur", "sigma"]
    if cfg.solarize_p > 0:
        cols.append("solarize")
    return cols


def blur_kernel_size(cfg: AugmentConfig, out_size: int) -> int:
    """Odd kernel side ~ blur_kernel_frac of the view (23 for 224 px, as SimCLR), at least 3, below the view side."""
    k = max(3, int(cfg.blur_kernel_frac * out_size) | 1)
    return min(k, (out_size - 1) // 2 * 2 + 1)


def draw_uniform(cfg: AugmentConfig, images_shape: Sequence[int], gen: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """All of a call's random numbers in one draw: [B, columns] uniforms (one kernel on CUDA)."""
    b, c = images_shape[:2]
    return torch.rand(b, len(_columns(cfg, c)), generator=gen, device=device)


def sample_params(cfg: AugmentConfig, images_shape: Sequence[int], gen: torch.Generator | None = None,
                  device: torch.device | str | None = None, out_size: int | None = None) -> AugmentParams:
    """Draw every sample's parameters for a batch shaped images_shape = (B, C, H, W)."""
    return params_from_uniform(cfg, images_shape, draw_uniform(cfg, images_shape, gen, device), out_size)


def params_from_uniform(cfg: AugmentConfig, images_shape: Sequence[int], u: torch.Tensor,
                        out_size: int | None = None) -> AugmentParams:
    """The per-sample parameters that the uniforms `u` (from draw_uniform) stand for: no randomness here."""
    b, c, h, w = images_shape
    out_size = out_size or w
    col = {name: u[:, i] for i, name in enumerate(_columns(cfg, c))}

    def between(name: str, low: float, high: float) -> torch.Tensor:
        return col[name] * (high - low) + low

    area = between("area", *cfg.crop_scale)
    ratio = torch.exp(between("log_ratio", math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1])))
    # box sides as fractions of W and H such that the box covers `area` of the image with aspect `ratio`
    bw = torch.sqrt(area * ratio * (h / w)).clamp(max=1.0)
    bh = torch.sqrt(area / ratio * (w / h)).clamp(max=1.0)
    boxes = torch.stack([col["x0"] * (1 - bw), col["y0"] * (1 - bh), bw, bh], dim=1)
    flip = col["flip"] < cfg.hflip_p if "flip" in col else torch.zeros(b, dtype=torch.bool, device=u.device)
    params = AugmentParams(boxes=boxes, flip=flip, blur_kernel=blur_kernel_size(cfg, out_size),
                           solarize_threshold=cfg.solarize_threshold)
    if "jitter" in col:
        on = col["jitter"] < cfg.jitter_p
        for name, neutral in (("brightness", 1.0), ("contrast", 1.0), ("saturation", 1.0), ("hue", 0.0)):
            if name in col:
                s = getattr(cfg, name)
                low, high = (-s, s) if name == "hue" else (max(0.0, 1 - s), 1 + s)
                setattr(params, name, torch.where(on, between(name, low, high), neutral))
    if "gray" in col:
        params.gray = col["gray"] < cfg.gray_p
    if "blur" in col:
        params.blur_sigma = torch.where(col["blur"] < cfg.blur_p, between("sigma", *cfg.blur_sigma), 0.0)
    if "solarize" in col:
        params.solarize = col["solarize"] < cfg.solarize_p
    return params


def crop_boxes(params: AugmentParams, height: int, width: int) -> torch.Tensor:
    """The sampled crops in input pixels: [B, 4] (x0, y0, x1, y1), edges (not centres) of pixels."""
    x0, y0, bw, bh = params.boxes.unbind(1)
    return torch.stack([x0 * width, y0 * height, (x0 + bw) * width, (y0 + bh) * height], dim=1)


def _crop_flip(x: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor, out_size: int) -> torch.Tensor:
    """Resize each sample's box to out_size x out_size (bilinear, half-pixel centres), mirrored if flip.

    The sampling grid is built by broadcasting (the boxes are axis-aligned): affine_grid's batched
    matmul costs more than the grid-sample itself on CPU.
    """
    x0, y0, bw, bh = (v.unsqueeze(1) for v in boxes.unbind(1))
    centres = (torch.arange(out_size, device=x.device, dtype=x.dtype) + 0.5) / out_size   # output pixel centres in (0, 1)
    across = torch.where(flip.unsqueeze(1), 1 - centres, centres)
    gx = (x0 + bw * across) * 2 - 1      # [B, out], grid_sample's [-1, 1] (align_corners=False)
    gy = (y0 + bh * centres) * 2 - 1
    grid = torch.stack(torch.broadcast_tensors(gx.unsqueeze(1), gy.unsqueeze(2)), dim=-1)   # [B, out, out, 2]
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _chroma_matrix(p: AugmentParams, b: int, device: torch.device) -> torch.Tensor:
    """[B, 3, 3]: saturation scales the YIQ chroma plane, hue rotates it, grayscale zeroes it.

    YIQ^-1 @ [[1, 0, 0], [0, cos, -sin], [0, sin, cos]] @ YIQ expanded into luma + cos * P1 + sin * P2,
    so building the matrices is elementwise (tiny batched matmuls are slow on CPU).
    """
    k = p.saturation if p.saturation is not None else torch.ones(b, device=device)
    if p.gray is not None:
        k = torch.where(p.gray, 0.0, k)
    if p.hue is None:
        return torch.addcmul(_constant("luma", device), k.view(b, 1, 1), _constant("chroma_cos", device))
    # minus: positive shifts turn red towards green, the direction of HSV hue (torchvision)
    angle = (-2 * math.pi) * p.hue
    matrix = torch.addcmul(_constant("luma", device), (k * torch.cos(angle)).view(b, 1, 1), _constant("chroma_cos", device))
    return matrix.addcmul_((k * torch.sin(angle)).view(b, 1, 1), _constant("chroma_sin", device))


def _colour(x: torch.Tensor, p: AugmentParams) -> torch.Tensor:
    """x: crops on the 0..255 scale. Returns brightness/contrast/saturation/hue/grayscale applied, in [0, 1].

    Folds the 1/255 scale in, so the whole colour stage is one matmul (or multiply-add) and one clamp.
    """
    b, c = x.shape[:2]
    scale = 1.0 / 255.0
    uses_matrix = c == 3 and any(t is not None for t in (p.saturation, p.hue, p.gray))
    if p.brightness is None and p.contrast is None and not uses_matrix:
        return x.div_(255.0)   # bilinear samples of 0..255 stay in range: no clamp needed
    gain = (p.brightness if p.brightness is not None else torch.ones(b, device=x.device)) * scale
    offset = torch.zeros_like(gain)
    if p.contrast is not None:
        # blend with the mean luma of the (brightened) image, as torchvision's adjust_contrast
        means = x.mean(dim=(2, 3))
        if c == 3:
            luma = LUMA[0] * means[:, 0] + LUMA[1] * means[:, 1] + LUMA[2] * means[:, 2]
        else:   # one band, or multi-band data: the mean over the bands stands for the brightness
            luma = means[:, 0] if c == 1 else means.mean(dim=1)
        offset = (1 - p.contrast) * gain * luma
        gain = gain * p.contrast
    if uses_matrix:
        # chroma matrices map grey to grey, so the (grey) contrast offset passes through unchanged
        matrix = _chroma_matrix(p, b, x.device) * gain.view(b, 1, 1)
        y = torch.baddbmm(offset.view(b, 1, 1), matrix, x.reshape(b, 3, -1)).view_as(x)
    else:
        y = torch.addcmul(offset.view(b, 1, 1, 1), x, gain.view(b, 1, 1, 1))
    return y.clamp_(0.0, 1.0)


def _reflect_pad(x: torch.Tensor, r: int, dim: int) -> torch.Tensor:
    """Reflect-pad one dimension by r (no edge repeat, as torch's "reflect" mode), in one copy."""
    n = x.shape[dim]
    return torch.cat([x.narrow(dim, 1, r).flip(dim), x, x.narrow(dim, n - 1 - r, r).flip(dim)], dim)


def _blur(x: torch.Tensor, sigma: torch.Tensor, kernel: int) -> torch.Tensor:
    """Per-sample separable Gaussian blur (torchvision's kernel and reflect padding).

    Each tap is one batched multiply-add with a per-sample weight: for the small kernels of 28-96 px
    views this beats a grouped convolution with per-sample kernels on CPU, and is exact.
    """
    b = x.shape[0]
    r = kernel // 2
    pos = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
    # sigma 0 -> a delta kernel (the 1e-3 floor sends every off-centre weight to exactly 0)
    weights = torch.exp(-0.5 * (pos / sigma.clamp(min=1e-3).unsqueeze(1)) ** 2)
    weights = (weights / weights.sum(dim=1, keepdim=True)).view(b, kernel, 1, 1, 1)
    for dim in (2, 3):   # rows, then columns
        padded, n = _reflect_pad(x, r, dim), x.shape[dim]
        x = padded.narrow(dim, 0, n) * weights[:, 0]
        for tap in range(1, kernel):
            x.addcmul_(padded.narrow(dim, tap, n), weights[:, tap])
    return x


def _solarize(x: torch.Tensor, on: torch.Tensor, threshold: float) -> torch.Tensor:
    limit = torch.where(on, threshold, math.inf).view(-1, 1, 1, 1)
    return torch.where(x >= limit, 1.0 - x, x)


def apply_params(images_u8: torch.Tensor, params: AugmentParams, out_size: int | None = None) -> torch.Tensor:
    """Make the views that `params` describe: float32 [B, C, out, out] in [0, 1]."""
    if images_u8.dtype != torch.uint8 or images_u8.dim() != 4:
        raise TypeError(f"augment expects a uint8 batch [B, C, H, W], got {images_u8.dtype} {tuple(images_u8.shape)}")
    out_size = out_size or images_u8.shape[-1]
    # the output contract is float32 even inside the trainer's bf16 autocast region
    with torch.autocast(device_type=images_u8.device.type, enabled=False):
        x = _crop_flip(images_u8.float(), params.boxes, params.flip, out_size)
        x = _colour(x, params)
        if params.blur_sigma is not None:
            x = _blur(x, params.blur_sigma, params.blur_kernel)
        if params.solarize is not None:
            x = _solarize(x, params.solarize, params.solarize_threshold)
    return x


def views_from_uniform(images_u8: torch.Tensor, u: torch.Tensor, cfg: AugmentConfig,
                       out_size: int | None = None) -> torch.Tensor:
    """Deterministic part of augment_batch (uniforms -> views): what compiled_augment() compiles."""
    return apply_params(images_u8, params_from_uniform(cfg, images_u8.shape, u, out_size), out_size)


def augment_batch(images_u8: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator | None = None,
                  out_size: int | None = None) -> torch.Tensor:
    """Return one augmented float view per image. Same generator state -> identical views."""
    hook = _VIEW_HOOK.get()
    if isinstance(hook, _Replay):
        return hook.take(images_u8.shape[0])
    u = draw_uniform(cfg, images_u8.shape, gen, images_u8.device)
    views = (_COMPILED.get() or views_from_uniform)(images_u8, u, cfg, out_size)
    if isinstance(hook, list):
        hook.append(RecordedView(cfg, views.shape[-1], views))
    return views


# --- Compiled views: on a GPU the ~100 small ops of a view cost more to launch than to run ----------

_COMPILED: contextvars.ContextVar[Callable | None] = contextvars.ContextVar("augment_compiled", default=None)


@functools.lru_cache(maxsize=1)
def _compiled_views() -> Callable:
    # one compiled function; torch.compile specialises it per recipe, shape and device (fused kernels)
    return torch.compile(views_from_uniform, dynamic=False)


@contextlib.contextmanager
def compiled_augment(enabled: bool = True, device: torch.device | str | None = None) -> Iterator[None]:
    """Inside the block augment_batch runs views_from_uniform through torch.compile (same random draws;
    the views match eager ones to float rounding). The first call of each recipe/shape compiles; past
    torch's recompile limit (8 variants of one function) further variants run eagerly."""
    if not enabled:
        yield
        return
    if device is not None:   # constants cached before tracing: the trace then only reads them
        for name in _MATRICES:
            _constant(name, torch.device(device))
    token = _COMPILED.set(_compiled_views())
    try:
        yield
    finally:
        _COMPILED.reset(token)


# --- Record / replay: lets `ssl-pipeline bench` time a method's step on pre-made views --------------

@dataclass
class RecordedView:
    cfg: AugmentConfig
    out_size: int
    views: torch.Tensor


class _Replay:
    def __init__(self, views: Sequence[torch.Tensor]):
        self.views, self.next = list(views), 0

    def take(self, batch_size: int) -> torch.Tensor:
        if self.next >= len(self.views):
            raise RuntimeError(f"replay_views: the method asked for view {self.next + 1}, only {len(self.views)} given")
        view = self.views[self.next]
        if view.shape[0] != batch_size:
            raise RuntimeError(f"replay_views: view {self.next + 1} has batch {view.shape[0]}, the call has {batch_size}")
        self.next += 1
        return view


_VIEW_HOOK: contextvars.ContextVar[_Replay | list | None] = contextvars.ContextVar("augment_view_hook", default=None)


@contextlib.contextmanager
def record_views() -> Iterator[list[RecordedView]]:
    """Inside the block, every augment_batch call also appends (cfg, out_size, views) to the yielded list."""
    calls: list[RecordedView] = []
    token = _VIEW_HOOK.set(calls)
    try:
        yield calls
    finally:
        _VIEW_HOOK.reset(token)


@contextlib.contextmanager
def replay_views(views: Sequence[torch.Tensor]) -> Iterator[None]:
    """Inside the block, augment_batch returns `views` in call order instead of computing views."""
    token = _VIEW_HOOK.set(_Replay(views))
    try:
        yield
    finally:
        _VIEW_HOOK.reset(token)
