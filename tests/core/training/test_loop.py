"""The pretraining loop's speed options (bf16 autocast, channels_last, torch.compile): how they resolve
per device, and that they change how a step runs, not what gets saved."""
from __future__ import annotations

import pytest
import torch

import crash_worker as cw
from recipes import pretrain_recipe
from ssl_core.recipes import RecipeError, cache_on_device, train_config
from ssl_core.training.loop import TrainConfig, pretrain, train_step


def test_bf16_autocast_runs_the_forward_in_bf16_and_keeps_weights_fp32():
    method = cw.build("simclr")
    images, _ = cw.tiny_data()
    seen = []
    hook = method.backbone.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    optimizer = torch.optim.SGD(method.parameters(), lr=0.1)
    loss, _ = train_step(method, optimizer, images[:cw.BATCH], torch.Generator().manual_seed(0), bf16=True)
    hook.remove()
    assert seen == [torch.bfloat16]
    assert torch.isfinite(loss) and all(p.dtype == torch.float32 for p in method.parameters())
    assert all(p.grad is not None and p.grad.dtype == torch.float32
               for p in method.backbone.parameters() if p.requires_grad)


@pytest.mark.parametrize("key, value", [("channels_last", "on"), ("compile", True)])
def test_cuda_only_speed_options_are_refused_on_a_cpu_before_training(key, value):
    """NHWC convolution backward (also reached by a compiled backbone) aborted torch 2.14 on this CPU."""
    with pytest.raises(RecipeError, match=f"pretrain.{key}.*CUDA only"):
        train_config(pretrain_recipe(**{key: value}), 100, torch.device("cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch.compile and channels_last are CUDA-only here")
def test_compiled_channels_last_bf16_training_saves_plain_keys_on_cuda():
    images, _ = cw.tiny_data()
    method = cw.build("simclr")
    keys = set(method.backbone.state_dict())
    history = pretrain(method, images[:2 * cw.BATCH], TrainConfig(epochs=1, batch_size=cw.BATCH, device="cuda",
                                                                  bf16=True, channels_last=True, compile=True,
                                                                  compile_augment=True, cache_on_device=True))
    assert history[0]["loss"] > 0 and set(method.backbone.state_dict()) == keys   # no "_orig_mod." prefix


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: compiled views are a GPU option (on a CPU "
                    "compiling takes ~20 s per recipe and is never used)")
def test_compiled_views_match_eager_views_on_cuda():
    from ssl_core.augment import AugmentConfig, augment_batch, compiled_augment

    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, device="cuda")
    cfg = AugmentConfig().with_overrides({"blur_p": 0.5, "solarize_p": 0.2})
    eager = augment_batch(images, cfg, torch.Generator("cuda").manual_seed(3))
    with compiled_augment(True, "cuda"):
        compiled = augment_batch(images, cfg, torch.Generator("cuda").manual_seed(3))
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=0)


def test_auto_settings_follow_the_device():
    recipe = pretrain_recipe()
    cpu = train_config(recipe, 100, torch.device("cpu"))
    assert (cpu.bf16, cpu.channels_last, cpu.compile, cpu.compile_augment, cpu.cache_on_device) == (False,) * 5
    cuda = train_config(recipe, 100, torch.device("cuda"))   # resolving needs no GPU
    assert (cuda.bf16, cuda.channels_last, cuda.compile_augment) == (True, True, True)
    forced = pretrain_recipe(precision="bf16", channels_last="off", compile=True)
    cfg = train_config(forced, 100, torch.device("cuda"))
    assert (cfg.bf16, cfg.channels_last, cfg.compile) == (True, False, True)


def test_the_cache_goes_to_the_gpu_only_when_asked_or_when_it_fits():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not any(cache_on_device(s, cpu, 1) for s in ("auto", "on", "off"))   # on a CPU it is in memory already
    assert cache_on_device("on", cuda, 10**15) and not cache_on_device("off", cuda, 1)
    if torch.cuda.is_available():
        free = torch.cuda.mem_get_info(cuda)[0]
        assert cache_on_device("auto", cuda, free // 8) and not cache_on_device("auto", cuda, free // 2)


def test_a_device_cache_trains_exactly_as_a_host_cache():
    """cache_on_device only moves where batches are sliced: same batches, same views, same weights."""
    images, _ = cw.tiny_data()
    weights = []
    for on_device in (False, True):
        torch.manual_seed(0)
        method = cw.build("simclr")
        pretrain(method, images[:2 * cw.BATCH], TrainConfig(epochs=1, batch_size=cw.BATCH, cache_on_device=on_device))
        weights.append(method.backbone.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
