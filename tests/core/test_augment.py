"""Batched augmentation: correctness against hand-computed results and torchvision's functional ops."""
from __future__ import annotations

import pytest
import torch
import torchvision.transforms.functional as TF

from ssl_core.augment import (LUMA, AugmentConfig, AugmentParams, apply_params, augment_batch, blur_kernel_size,
                              check_rgb_only, crop_boxes, record_views, replay_views, sample_params)

IDENTITY = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip_p=0.0, jitter_p=0.0, gray_p=0.0)


def images(b=6, c=3, s=16, seed=0) -> torch.Tensor:
    return torch.randint(0, 256, (b, c, s, s), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def full_box_params(b: int, **fields) -> AugmentParams:
    return AugmentParams(boxes=torch.tensor([[0.0, 0.0, 1.0, 1.0]]).repeat(b, 1),
                         flip=torch.zeros(b, dtype=torch.bool), **fields)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def luma(x: torch.Tensor) -> torch.Tensor:
    return LUMA[0] * x[:, 0] + LUMA[1] * x[:, 1] + LUMA[2] * x[:, 2]


EVERYTHING = AugmentConfig(blur_p=0.5, solarize_p=0.3)


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("out_size", [None, 8, 20])
def test_shape_dtype_and_range(c, out_size):
    x = images(c=c)
    v = augment_batch(x, EVERYTHING, gen(0), out_size=out_size)
    side = out_size or x.shape[-1]
    assert v.shape == (x.shape[0], c, side, side) and v.dtype == torch.float32
    assert v.min() >= 0.0 and v.max() <= 1.0


def test_output_stays_float32_under_bf16_autocast():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert augment_batch(images(), EVERYTHING, gen(0)).dtype == torch.float32


@pytest.mark.parametrize("c", [1, 3])
def test_every_sample_draws_its_own_parameters(c):
    x = images(b=1, c=c).repeat(8, 1, 1, 1)   # eight copies of one image
    v = augment_batch(x, EVERYTHING, gen(0))
    for i in range(8):
        for j in range(i + 1, 8):
            assert not torch.allclose(v[i], v[j])


def test_same_seed_same_views_different_seed_different_views():
    x = images()
    a, b, other = (augment_batch(x, EVERYTHING, gen(s)) for s in (3, 3, 4))
    assert torch.equal(a, b)
    assert not torch.allclose(a, other)
    # the second call on the same generator continues the stream: a new, different view
    g = gen(3)
    first, second = augment_batch(x, EVERYTHING, g), augment_batch(x, EVERYTHING, g)
    assert torch.equal(first, a) and not torch.allclose(first, second)


def test_augment_batch_is_sample_then_apply():
    x = images()
    params = sample_params(EVERYTHING, x.shape, gen(5))
    assert torch.equal(augment_batch(x, EVERYTHING, gen(5)), apply_params(x, params))


@pytest.mark.parametrize("cfg, columns", [
    (IDENTITY, 4),                                        # crop: area, ratio, x0, y0
    (AugmentConfig(), 4 + 1 + 5 + 1),                     # + flip, jitter (on + 4 strengths), gray
    (AugmentConfig(hue=0.0, saturation=0.0), 4 + 1 + 3 + 1),
    (AugmentConfig(blur_p=0.5, solarize_p=0.2), 4 + 1 + 5 + 1 + 2 + 1),
])
def test_only_ops_in_the_recipe_draw_random_numbers(cfg, columns):
    g = gen(0)
    augment_batch(images(b=5), cfg, g)
    reference = gen(0)
    torch.rand(5, columns, generator=reference)
    assert torch.equal(g.get_state(), reference.get_state())


def test_grey_images_draw_no_saturation_hue_or_grayscale():
    g = gen(0)
    augment_batch(images(b=5, c=1), AugmentConfig(), g)   # crop 4, flip 1, jitter on + brightness + contrast
    reference = gen(0)
    torch.rand(5, 4 + 1 + 3, generator=reference)
    assert torch.equal(g.get_state(), reference.get_state())


@pytest.mark.parametrize("c", [1, 3])
def test_identity_config_returns_the_input(c):
    x = images(c=c)
    v = augment_batch(x, IDENTITY, gen(0))
    torch.testing.assert_close(v, x.float() / 255, atol=1e-5, rtol=0)


def test_marked_quadrant_lands_where_the_boxes_say():
    s, out = 32, 16
    x = torch.zeros(64, 1, s, s, dtype=torch.uint8)
    x[:, :, : s // 2, : s // 2] = 255   # top-left quadrant marked
    cfg = AugmentConfig(crop_scale=(0.05, 0.5), hflip_p=0.5, jitter_p=0.0, gray_p=0.0)
    params = sample_params(cfg, x.shape, gen(1))
    v = apply_params(x, params, out_size=out)
    boxes = crop_boxes(params, s, s)
    x0, y0, x1, y1 = boxes.unbind(1)
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= s).all() and (y1 <= s).all()
    overlap = (x1.clamp(max=s / 2) - x0).clamp(min=0) * (y1.clamp(max=s / 2) - y0).clamp(min=0)
    expected = overlap / ((x1 - x0) * (y1 - y0))
    # bilinear sampling blurs the quadrant's edge by at most one output pixel row and column
    assert (v.mean(dim=(1, 2, 3)) - expected).abs().max() <= 2.0 / out
    assert 0.05 < expected.mean() < 0.95   # the test sees crops inside, outside and across the mark


def test_box_area_and_aspect_follow_the_config():
    cfg = AugmentConfig(crop_scale=(0.2, 0.5), crop_ratio=(0.8, 1.25))
    params = sample_params(cfg, (500, 3, 24, 48), gen(0))   # non-square: ratio is in pixels
    x0, y0, x1, y1 = crop_boxes(params, 24, 48).unbind(1)
    area = (x1 - x0) * (y1 - y0) / (24 * 48)
    ratio = (x1 - x0) / (y1 - y0)
    assert area.min() >= 0.2 - 1e-5 and area.max() <= 0.5 + 1e-5
    assert ratio.min() >= 0.8 - 1e-4 and ratio.max() <= 1.25 + 1e-4


def test_pixel_aligned_crops_match_torchvision_resized_crop():
    x = images(b=4, s=32)
    # integer boxes twice the output size: half-pixel-centred bilinear samples stay inside the box
    tops, lefts, side, out = [0, 4, 10, 16], [2, 0, 16, 7], 16, 8
    boxes = torch.tensor([[l / 32, t / 32, side / 32, side / 32] for t, l in zip(tops, lefts)])
    params = AugmentParams(boxes=boxes, flip=torch.zeros(4, dtype=torch.bool))
    v = apply_params(x, params, out_size=out)
    ref = torch.stack([TF.resized_crop(x[i].float() / 255, tops[i], lefts[i], side, side, [out, out],
                                       antialias=False) for i in range(4)])
    torch.testing.assert_close(v, ref, atol=1e-5, rtol=0)


def test_flip_mirrors_the_image():
    x = images(b=3)
    params = full_box_params(3)
    params.flip = torch.tensor([True, False, True])
    v = apply_params(x, params)
    ref = x.float() / 255
    ref[[0, 2]] = ref[[0, 2]].flip(-1)
    torch.testing.assert_close(v, ref, atol=1e-5, rtol=0)


def test_grayscale_views_have_equal_channels_equal_to_luma():
    x = images()
    v = augment_batch(x, AugmentConfig(jitter_p=0.0, gray_p=1.0, crop_scale=(1, 1), crop_ratio=(1, 1), hflip_p=0), gen(0))
    torch.testing.assert_close(v[:, 0], v[:, 1], atol=1e-6, rtol=0)
    torch.testing.assert_close(v[:, 0], v[:, 2], atol=1e-6, rtol=0)
    torch.testing.assert_close(v[:, 0], luma(x.float() / 255), atol=1e-5, rtol=0)


def test_solarize_inverts_pixels_above_the_threshold():
    x = images()
    cfg = AugmentConfig(crop_scale=(1, 1), crop_ratio=(1, 1), hflip_p=0, jitter_p=0, gray_p=0,
                        solarize_p=1.0, solarize_threshold=0.6)
    v = augment_batch(x, cfg, gen(0))
    f = x.float() / 255
    torch.testing.assert_close(v, torch.where(f >= 0.6, 1 - f, f), atol=1e-5, rtol=0)


@pytest.mark.parametrize("c", [1, 3])
def test_blur_of_a_constant_image_is_constant(c):
    x = torch.full((4, c, 16, 16), 77, dtype=torch.uint8)
    v = apply_params(x, full_box_params(4, blur_sigma=torch.tensor([0.0, 0.5, 1.0, 2.0]), blur_kernel=5))
    torch.testing.assert_close(v, torch.full_like(v, 77 / 255), atol=1e-6, rtol=0)


def test_blur_matches_torchvision_gaussian_blur_per_sample():
    x = images(b=4, s=16)
    sigma = torch.tensor([0.0, 0.4, 1.0, 2.0])
    v = apply_params(x, full_box_params(4, blur_sigma=sigma, blur_kernel=5))
    f = x.float() / 255
    ref = torch.stack([f[0]] + [TF.gaussian_blur(f[i], [5, 5], [float(sigma[i])] * 2) for i in range(1, 4)])
    torch.testing.assert_close(v, ref, atol=1e-5, rtol=0)


def test_blur_kernel_size_follows_the_view_size():
    cfg = AugmentConfig()
    assert [blur_kernel_size(cfg, s) for s in (8, 28, 32, 96, 224)] == [3, 3, 3, 9, 23]
    assert blur_kernel_size(AugmentConfig(blur_kernel_frac=1.0), 8) == 7   # capped below the view side


def test_brightness_contrast_saturation_match_torchvision():
    # mid-range pixels and mild factors: no clamping mid-chain, so the fused transform is exact
    x = (torch.rand(4, 3, 8, 8, generator=gen(0)) * 100 + 78).round().to(torch.uint8)
    b, c, s = torch.tensor([1.1, 0.9, 1.0, 1.2]), torch.tensor([0.8, 1.1, 1.0, 0.7]), torch.tensor([0.6, 1.2, 1.0, 0.0])
    v = apply_params(x, full_box_params(4, brightness=b, contrast=c, saturation=s))
    f = x.float() / 255
    ref = torch.stack([TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(f[i], float(b[i])), float(c[i])),
                                            float(s[i])) for i in range(4)])
    torch.testing.assert_close(v, ref, atol=1e-3, rtol=0)   # torchvision's luma uses 0.2989 for red


def test_brightness_and_contrast_on_grey_images_clamp_once_at_the_end():
    x = images(b=2, c=1)
    b, c = torch.tensor([0.7, 1.3]), torch.tensor([1.2, 0.5])
    v = apply_params(x, full_box_params(2, brightness=b, contrast=c))
    f = x.float() / 255 * b.view(2, 1, 1, 1)   # documented: no clamp between the colour ops
    mean = f.mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(v, ((f - mean) * c.view(2, 1, 1, 1) + mean).clamp(0, 1), atol=1e-5, rtol=0)


def test_hue_shift_of_zero_is_identity_and_hue_keeps_luma_and_grey():
    x = (torch.rand(3, 3, 8, 8, generator=gen(1)) * 120 + 60).round().to(torch.uint8)
    x[2] = 128   # a grey image has no hue
    f = x.float() / 255
    torch.testing.assert_close(apply_params(x, full_box_params(3, hue=torch.zeros(3))), f, atol=1e-5, rtol=0)
    shifted = apply_params(x, full_box_params(3, hue=torch.tensor([0.1, -0.2, 0.3])))
    assert not torch.allclose(shifted[:2], f[:2], atol=1e-2)
    inside = ((shifted > 0) & (shifted < 1)).all(dim=1)   # pixels the final clamp did not touch
    torch.testing.assert_close(luma(shifted)[inside], luma(f)[inside], atol=1e-5, rtol=0)
    assert inside.float().mean() > 0.9
    torch.testing.assert_close(shifted[2], f[2], atol=1e-5, rtol=0)


def test_positive_hue_turns_red_towards_green_like_torchvision():
    red = torch.zeros(1, 3, 2, 2, dtype=torch.uint8)
    red[:, 0] = 255
    v = apply_params(red, full_box_params(1, hue=torch.tensor([1 / 3])))
    assert v[0, 1].mean() > 0.5 and v[0, 0].mean() < 0.1 and v[0, 2].mean() < 0.1


def test_record_and_replay_views():
    x = images()
    with record_views() as calls:
        a = augment_batch(x, EVERYTHING, gen(0))
        b = augment_batch(x, IDENTITY, gen(0), out_size=8)
    assert [(r.cfg, r.out_size) for r in calls] == [(EVERYTHING, 16), (IDENTITY, 8)]
    assert calls[0].views is a and calls[1].views is b
    with replay_views([b, a]):
        assert augment_batch(x, EVERYTHING, gen(9)) is b
        assert augment_batch(x, EVERYTHING, gen(9)) is a
        with pytest.raises(RuntimeError, match="only 2 given"):
            augment_batch(x, EVERYTHING, gen(9))
    assert not torch.equal(augment_batch(x, EVERYTHING, gen(9)), a)   # hook gone after the block


@pytest.mark.parametrize("bad", [dict(hflip_p=1.5), dict(crop_scale=(0.6, 0.3)), dict(crop_scale=(0.5, 1.5)),
                                 dict(hue=0.7), dict(brightness=-0.1), dict(blur_sigma=(2.0, 1.0))])
def test_invalid_configs_are_rejected(bad):
    with pytest.raises(ValueError):
        AugmentConfig(**bad)


def test_rejects_float_input():
    with pytest.raises(TypeError):
        augment_batch(images().float(), IDENTITY, gen(0))


def test_multi_band_brightness_contrast_against_a_loop():
    # 13 bands: brightness scales every band, contrast blends with the mean over all bands and pixels
    # (the luma of RGB has no multi-band meaning); RGB-only ops draw nothing and do nothing.
    x = images(b=4, c=13, s=8)
    cfg = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip_p=0.0, jitter_p=1.0, brightness=0.4,
                        contrast=0.4, saturation=0.4, hue=0.1, gray_p=0.5)
    p = sample_params(cfg, x.shape, gen(3))
    assert p.saturation is None and p.hue is None and p.gray is None
    out = apply_params(x, p)
    for i in range(4):
        bright = x[i].double() / 255 * p.brightness[i].double()
        expected = (p.contrast[i] * bright + (1 - p.contrast[i]) * bright.mean()).clamp(0, 1)
        assert torch.allclose(out[i].double(), expected, atol=1e-5)


def test_rgb_only_ops_asked_for_on_other_channel_counts_are_refused_naming_the_key():
    check_rgb_only({"gray_p": 0.2}, 3, "pretrain.augment")   # RGB: fine
    check_rgb_only({"gray_p": 0.0, "hflip_p": 0.5}, 13, "pretrain.augment")   # switched off: fine
    with pytest.raises(ValueError, match=r"^pretrain.augment.gray_p: grayscale is defined only for RGB .* 13 channel"):
        check_rgb_only({"gray_p": 0.2}, 13, "pretrain.augment")
    with pytest.raises(ValueError, match=r"^finetune.augment.hue: hue"):
        check_rgb_only({"hue": 0.1}, 1, "finetune.augment")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_generator_gives_reproducible_views_matching_the_recipe():
    x = images().cuda()
    a = augment_batch(x, EVERYTHING, torch.Generator(device="cuda").manual_seed(0))
    b = augment_batch(x, EVERYTHING, torch.Generator(device="cuda").manual_seed(0))
    assert a.is_cuda and torch.equal(a, b) and a.min() >= 0 and a.max() <= 1
    ident = augment_batch(x, IDENTITY, torch.Generator(device="cuda").manual_seed(0))
    torch.testing.assert_close(ident.cpu(), x.cpu().float() / 255, atol=1e-5, rtol=0)


def test_views_are_a_function_of_one_uniform_draw():
    """augment_batch = draw_uniform (all randomness) + views_from_uniform (pure): what gets compiled on GPUs."""
    from ssl_core.augment import compiled_augment, draw_uniform, views_from_uniform

    images = torch.randint(0, 256, (6, 3, 20, 20), dtype=torch.uint8)
    cfg = AugmentConfig().with_overrides({"blur_p": 0.5, "solarize_p": 0.3})
    u = draw_uniform(cfg, images.shape, torch.Generator().manual_seed(4))
    with compiled_augment(False):   # off: the eager path
        views = augment_batch(images, cfg, torch.Generator().manual_seed(4), 12)
    assert torch.equal(views, views_from_uniform(images, u, cfg, 12))
