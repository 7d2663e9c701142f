"""Export the pretrained encoder (and the best classifier) for use outside this project.

Written to the output folder:
- encoder_state_dict.pt   plain tensors named exactly as torchvision's module (ResNet: `conv1.weight`,
                          `layer1.0.bn1.running_mean`, ...; ViT: VisionTransformer's names). Rebuild the
                          module as README.txt says (the snippet there is run by the tests) and load it with
                          strict=False: the only missing keys are the classification head's (fc.* / heads.*).
                          The state_dict expects normalised input: x = (images - 0.5) / 0.25.
- encoder.pt2             torch.export program of the whole encoder (normalisation included):
                          torch.export.load(path).module()(images in [0, 1]) -> features. No pickled code.
- encoder.torchscript.pt  the same as TorchScript (torch.jit.load; for libtorch/C++ or older runtimes).
- classifier.pt2, classifier.torchscript.pt   the best classifier (logits), when models/classifier.pt exists.
- spec.json, README.txt   architecture, input format, class names, where the weights came from.
"""
from __future__ import annotations

import json
import textwrap
import warnings
from pathlib import Path

import torch

from ssl_pipeline.outputs import CLASSIFIER_PT, ENCODER_PT

MEAN, STD = 0.5, 0.25   # the fixed normalisation inside ssl_core.models.Backbone

_NARROW = '''\
def narrow_resnet(width):
    """ResNet-18 layout (BasicBlock, [2, 2, 2, 2]) with stage widths w, 2w, 4w, 8w."""
    net = resnet.ResNet(resnet.BasicBlock, [2, 2, 2, 2])
    net.inplanes = width
    net.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    net.bn1 = nn.BatchNorm2d(width)
    net.layer1 = net._make_layer(resnet.BasicBlock, width, 2)
    net.layer2 = net._make_layer(resnet.BasicBlock, width * 2, 2, stride=2)
    net.layer3 = net._make_layer(resnet.BasicBlock, width * 4, 2, stride=2)
    net.layer4 = net._make_layer(resnet.BasicBlock, width * 8, 2, stride=2)
    net.fc = nn.Linear(width * 8, 1000)
    return net
'''


def rebuild_snippet(spec: dict) -> str:
    """Python (torch + torchvision only) that builds `net` for encoder_state_dict.pt and loads `state`."""
    name, c = spec["backbone"], int(spec["in_channels"])
    lines = ["import torch", "from torch import nn", "from torchvision.models import resnet",
             "from torchvision.models.vision_transformer import VisionTransformer", ""]
    if name == "vit_tiny":
        p = int(spec["patch_size"])
        lines += [f"net = VisionTransformer(image_size={spec['image_size']}, patch_size={p}, num_layers=6, "
                  "num_heads=3, hidden_dim=192, mlp_dim=768, num_classes=1)"]
        if c != 3:
            lines += [f"net.conv_proj = nn.Conv2d({c}, 192, kernel_size={p}, stride={p})"]
        head = "heads"
    else:
        if name == "resnet_narrow":
            lines += _NARROW.splitlines() + ["", f"net = narrow_resnet({spec['width']})"]
        else:
            lines += [f"net = resnet.{name}(weights=None)"]
        if spec["small_stem"]:
            lines += [f"net.conv1 = nn.Conv2d({c}, net.conv1.out_channels, kernel_size=3, "
                      f"stride={spec.get('stem_stride', 1)}, padding=1, bias=False)", "net.maxpool = nn.Identity()"]
        elif c != 3:
            lines += [f"net.conv1 = nn.Conv2d({c}, net.conv1.out_channels, kernel_size=7, stride=2, padding=3, bias=False)"]
        head = "fc"
    lines += ["state = torch.load('encoder_state_dict.pt', weights_only=True)",
              "missing, unexpected = net.load_state_dict(state, strict=False)",
              f"assert not unexpected and all(k.startswith('{head}.') for k in missing), (missing, unexpected)",
              f"net.{head} = nn.Identity()   # features instead of logits",
              "net.eval()",
              f"# features = net((images - {MEAN}) / {STD})   # images: float [B, {c}, "
              f"{spec['image_size']}, {spec['image_size']}] in [0, 1]"]
    return "\n".join(lines) + "\n"


def torchvision_state_dict(backbone: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trunk's weights under torchvision's own key names (prefix `trunk.` / `trunk.vit.` dropped)."""
    prefix = "trunk.vit." if backbone.name == "vit_tiny" else "trunk."
    return {k[len(prefix):]: v.detach().clone().contiguous()
            for k, v in backbone.state_dict().items() if k.startswith(prefix)}


def _save_programs(model: torch.nn.Module, example: torch.Tensor, out: Path, stem: str) -> list[str]:
    model = model.cpu().eval()
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, out / f"{stem}.pt2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)   # TorchScript is deprecated but still the C++ path
        with torch.no_grad():
            torch.jit.save(torch.jit.trace(model, example), str(out / f"{stem}.torchscript.pt"))
    return [f"{stem}.pt2", f"{stem}.torchscript.pt"]


def export(root: Path = Path("."), out: Path = Path("exported")) -> dict:
    """Write the export folder (see module docstring); returns the spec written to spec.json."""
    from ssl_core.models import Classifier
    from ssl_core.models.backbones import vit_patch_size
    from ssl_core.models.spec import EncoderSpec, build_encoder
    from ssl_pipeline.tracking.models import logged_model   # which run logged the weights (MLflow: only here)

    root, out = Path(root), Path(out)
    enc_pt, enc_json = root / ENCODER_PT, (root / ENCODER_PT).with_suffix(".json")
    if not enc_pt.exists() or not enc_json.exists():
        raise FileNotFoundError(f"{enc_pt} and {enc_json} are missing: run the pipeline first")
    spec = json.loads(enc_json.read_text())
    encoder = build_encoder(EncoderSpec.from_dict(spec))
    encoder.load_state_dict(torch.load(enc_pt, weights_only=True, map_location="cpu"))
    encoder.eval()
    if spec["backbone"] == "vit_tiny":
        spec["patch_size"] = vit_patch_size(int(spec["image_size"]))
    out.mkdir(parents=True, exist_ok=True)
    c, s = int(spec["in_channels"]), int(spec["image_size"])
    example = torch.rand(2, c, s, s)
    torch.save(torchvision_state_dict(encoder), out / "encoder_state_dict.pt")
    files = ["encoder_state_dict.pt"] + _save_programs(encoder, example, out, "encoder")
    info = {"backbone": spec["backbone"], "in_channels": c, "image_size": s, "small_stem": spec["small_stem"],
            "stem_stride": spec.get("stem_stride", 1), "width": spec["width"], "out_dim": int(encoder.out_dim),
            "method": spec.get("method"), "patch_size": spec.get("patch_size"),
            "input": f"float32 [B, {c}, {s}, {s}] with values in [0, 1]",
            "state_dict_normalisation": {"mean": MEAN, "std": STD},
            "encoder_run_id": (logged_model(root, enc_pt) or {}).get("run_id"),
            "encoder_model_uri": (logged_model(root, enc_pt) or {}).get("model_uri"),
            "torch_version": torch.__version__.split("+")[0]}
    clf_pt = root / CLASSIFIER_PT
    if clf_pt.exists() and clf_pt.with_suffix(".json").exists():
        cspec = json.loads(clf_pt.with_suffix(".json").read_text())
        clf = Classifier(build_encoder(EncoderSpec.from_dict(cspec)), int(cspec["num_classes"]))
        clf.load_state_dict(torch.load(clf_pt, weights_only=True, map_location="cpu"))
        files += _save_programs(clf, example, out, "classifier")
        info.update(classes=cspec["classes"], classifier_test_accuracy=cspec.get("test_accuracy"),
                    classifier_run_id=(logged_model(root, clf_pt) or {}).get("run_id"))
    info["files"] = files
    (out / "spec.json").write_text(json.dumps(info, indent=2) + "\n")
    (out / "README.txt").write_text(_readme(info, rebuild_snippet(spec)))
    return info


def _readme(info: dict, snippet: str) -> str:
    c, s = info["in_channels"], info["image_size"]
    text = f"""\
    Exported by `ssl-pipeline export` ({info['method']} pretraining, {info['backbone']} encoder, torch {info['torch_version']}).
    Input everywhere: float32 images [B, {c}, {s}, {s}] with values in [0, 1].

    encoder.pt2 (recommended; normalisation included; nothing is unpickled):
        encoder = torch.export.load("encoder.pt2").module()
        features = encoder(images)            # [B, {info['out_dim']}]

    encoder.torchscript.pt (TorchScript, also loads in libtorch/C++):
        encoder = torch.jit.load("encoder.torchscript.pt")

    encoder_state_dict.pt: plain tensors with torchvision's key names. The module it belongs to, in
    torch + torchvision only (the only missing keys are the unused classification head):

    """
    body = textwrap.dedent(text) + textwrap.indent(snippet, "    ")
    if "classes" in info:
        body += ("\nclassifier.pt2 / classifier.torchscript.pt: logits over the classes, in this order:\n"
                 f"    {', '.join(map(str, info['classes']))}\n"
                 "    probabilities = torch.softmax(classifier(images), dim=1)\n")
    return body + "\nspec.json has the same facts in machine-readable form.\n"
