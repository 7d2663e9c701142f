"""Starting an encoder from a weights file (ssl_core/models/init.py), against straightforward references:
the loaded encoder computes what the source network computes; an adapted first layer gives a gray
image the response its RGB copy gets from the original; mismatches are one error naming the keys."""
from __future__ import annotations

import copy

import pytest
import torch
from torchvision.models import resnet18

from ssl_core.models.init import InitWeightsError, fit_state_dict, init_backbone, read_state_dict
from ssl_core.models.spec import EncoderSpec, build_encoder
from ssl_core.recipes import RecipeError, build_method, check_init

NARROW = dict(backbone="resnet_narrow", image_size=16, small_stem=True, stem_stride=1, width=4, method="simclr")


def encoder(seed: int, in_channels: int = 1, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_encoder(EncoderSpec(**{**NARROW, "in_channels": in_channels, **overrides})).eval()


def torchvision_names(backbone: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What `ssl-pipeline export` writes: the trunk's keys without ssl_core's `trunk.` / `trunk.vit.` prefix."""
    prefix = "trunk.vit." if backbone.name == "vit_tiny" else "trunk."
    return {k[len(prefix):]: v for k, v in backbone.state_dict().items()}


def save(tmp_path, state, name="weights.pt"):
    path = tmp_path / name
    torch.save(state, path)
    return path


def trained_like(seed: int, **kw) -> torch.nn.Module:
    """A random encoder with non-trivial BatchNorm statistics (as a trained one has)."""
    net = encoder(seed, **kw)
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.rand(8, net.in_channels, 16, 16))
    return net.eval()


@pytest.mark.parametrize("layout", ["torchvision", "encoder.pt", "classifier", "ddp", "checkpoint"])
def test_every_key_layout_loads_the_same_network(tmp_path, layout):
    source = trained_like(0)
    own = source.state_dict()
    state = {"torchvision": {**torchvision_names(source), "fc.weight": torch.zeros(10, 32), "fc.bias": torch.zeros(10)},
             "encoder.pt": own,
             "classifier": {**{f"backbone.{k}": v for k, v in own.items()}, "head.weight": torch.zeros(10, 32),
                            "head.bias": torch.zeros(10)},
             "ddp": {f"module.{k}": v for k, v in own.items()},
             "checkpoint": {"state_dict": own, "epoch": 3}}[layout]
    target = encoder(1)
    report = init_backbone(target, save(tmp_path, state))
    x = torch.rand(4, 1, 16, 16)
    assert torch.equal(target.eval()(x), source(x))
    assert report.loaded == len(own)
    assert any("classification head" in n for n in report.notes) == (layout in ("torchvision", "classifier"))


def test_gray_data_sums_rgb_filters_so_a_gray_image_gets_its_rgb_copys_response(tmp_path):
    rgb = trained_like(0, in_channels=3)
    gray = encoder(1, in_channels=1)
    report = init_backbone(gray, save(tmp_path, torchvision_names(rgb)))
    x = torch.rand(4, 1, 16, 16)
    torch.testing.assert_close(gray.eval()(x), rgb(x.expand(-1, 3, -1, -1)), rtol=1e-5, atol=1e-5)
    assert report.notes == ("first layer conv1.weight: 3 input channels summed into 1 (the average x 3)",)


def test_rgb_data_repeats_a_gray_filter_divided_by_three(tmp_path):
    gray = trained_like(0, in_channels=1)
    rgb = encoder(1, in_channels=3)
    report = init_backbone(rgb, save(tmp_path, gray.state_dict()))
    x = torch.rand(4, 1, 16, 16)
    torch.testing.assert_close(rgb.eval()(x.expand(-1, 3, -1, -1)), gray(x), rtol=1e-5, atol=1e-5)
    assert "repeated over 3 and divided by 3" in report.notes[0]


def test_vit_first_layer_is_its_patch_projection(tmp_path):
    rgb = encoder(0, in_channels=3, backbone="vit_tiny")
    gray = encoder(1, in_channels=1, backbone="vit_tiny")
    report = init_backbone(gray, save(tmp_path, torchvision_names(rgb)))
    x = torch.rand(2, 1, 16, 16)
    torch.testing.assert_close(gray.eval()(x), rgb(x.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-4)
    assert "conv_proj.weight" in report.notes[0]


def test_torchvision_imagenet_resnet_layout_loads_into_the_imagenet_stem(tmp_path):
    """A torchvision resnet18 state_dict (what ImageNet weights look like) into pretrain.backbone resnet18
    with small_stem false, on gray data: the trunk computes torchvision's network on the RGB copy."""
    torch.manual_seed(0)
    tv = resnet18(weights=None).eval()
    target = build_encoder(EncoderSpec("resnet18", 1, 32, False, 1, 64, "simclr")).eval()
    init_backbone(target, save(tmp_path, tv.state_dict()))
    tv.fc = torch.nn.Identity()
    x = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(target.trunk(x), tv(x.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-4)


def test_older_files_without_batchnorm_counters_load(tmp_path):
    source = trained_like(0)
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    target = encoder(1)
    init_backbone(target, save(tmp_path, state))
    x = torch.rand(2, 1, 16, 16)
    assert torch.equal(target.eval()(x), source(x))


def test_another_width_is_one_error_naming_the_keys(tmp_path):
    path = save(tmp_path, encoder(0, width=8).state_dict())
    target = encoder(1, width=4)
    before = copy.deepcopy(target.state_dict())
    with pytest.raises(InitWeightsError) as err:
        init_backbone(target, path)
    text = str(err.value)
    assert text.startswith("does not fit the resnet_narrow encoder: shapes differ: conv1.weight [8, 1, 3, 3] in the "
                           "file, [4, 1, 3, 3] in the encoder")
    assert "and " in text and "more" in text   # long lists are cut, not dumped
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())   # nothing half-loaded


def test_imagenet_stem_into_a_small_stem_says_which_knob(tmp_path):
    torch.manual_seed(0)
    path = save(tmp_path, resnet18(weights=None).state_dict())
    target = build_encoder(EncoderSpec("resnet18", 3, 32, True, 1, 64, "simclr"))
    with pytest.raises(InitWeightsError, match=r"7x7 filters, the encoder's 3x3 .*pretrain.small_stem false"):
        init_backbone(target, path)


def test_missing_and_unexpected_keys_are_named():
    own = encoder(0).state_dict()
    state = {k: v for k, v in own.items() if not k.startswith("trunk.layer4.1.")}
    state["trunk.layer5.0.conv1.weight"] = torch.zeros(1)
    with pytest.raises(InitWeightsError) as err:
        fit_state_dict(state, encoder(1))
    assert "not in the encoder: layer5.0.conv1.weight" in str(err.value)
    assert "missing from the file: layer4.1.bn1.bias" in str(err.value)


def test_files_that_are_not_state_dicts_are_refused_without_running_anything(tmp_path):
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    crafted = tmp_path / "crafted.pt"
    torch.save({"conv1.weight": Payload()}, crafted)
    with pytest.raises(InitWeightsError, match="is not a state_dict file that loads with weights_only=True"):
        read_state_dict(crafted)
    assert not marker.exists()
    with pytest.raises(InitWeightsError, match="holds a list, not a state_dict"):
        read_state_dict(save(tmp_path, [torch.zeros(1)], "list.pt"))
    with pytest.raises(InitWeightsError, match="does not exist"):
        read_state_dict(tmp_path / "nope.pt")


def test_build_method_starts_encoder_and_teacher_from_the_weights_with_the_same_heads(tmp_path):
    from recipes import pretrain_recipe   # tests/helpers/recipes.py

    source = trained_like(0, in_channels=3, image_size=32)
    path = save(tmp_path, source.state_dict())
    base = dict(method="byol", in_channels=3, image_size=32, small_stem=True, stem_stride=1, width=4)
    plain = build_method(pretrain_recipe(base))
    started = build_method(pretrain_recipe(base, init_weights=str(path)))
    for net in (started.backbone, started.target_backbone):
        assert all(torch.equal(v, source.state_dict()[k]) for k, v in net.state_dict().items())
    for (name, a), b in zip(plain.predictor.state_dict().items(), started.predictor.state_dict().values()):
        assert torch.equal(a, b), name
    assert check_init(pretrain_recipe(base, init_weights=str(path))).notes == ()
    with pytest.raises(RecipeError, match=r"^pretrain.init: models:/enc/1 does not fit the resnet_narrow encoder"):
        check_init(pretrain_recipe({**base, "width": 8}, init_weights=str(path)), "models:/enc/1")
