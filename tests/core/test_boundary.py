"""The training core runs where only torch, torchvision and numpy are installed (a GPU box without
the MLOps stack): in a fresh interpreter where MLflow, Prefect, DVC, pandas, YAML, pydantic,
matplotlib, scikit-learn and scipy cannot be imported, every registered method pretrains for an
epoch with a checkpoint, and the kNN monitor and a linear probe evaluate the encoder."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

TESTS = Path(__file__).parent
HELPERS = TESTS.parent / "helpers"

# A None entry in sys.modules makes `import X` fail and importlib.util.find_spec(X) answer None:
# exactly what an absent package looks like (torch probes optional packages with find_spec).
ABSENT = ["mlflow", "prefect", "dvc", "pandas", "yaml", "pydantic", "matplotlib", "sklearn", "scipy"]

SCRIPT = textwrap.dedent("""
    import sys, tempfile
    from pathlib import Path
    for name in {absent!r}:
        sys.modules[name] = None
    sys.path.insert(0, {tests!r})

    import torch
    from ssl_core.training.checkpoint import Checkpointer
    from ssl_core.data.cache import Split
    from ssl_core.evaluation.protocols import FitConfig, fit_linear_probe, knn_accuracy
    from ssl_core.methods import method_names
    from ssl_core.training.loop import TrainConfig, pretrain
    from methods.test_registry import SIZE, build   # the registry test's tiny heads and backbones

    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 3, SIZE, SIZE), generator=gen, dtype=torch.uint8)
    labels = torch.arange(16) % 2
    split = Split(images, labels)
    for name in method_names():
        method = build(name, {{}}, seed=0)
        with tempfile.TemporaryDirectory() as ckpt_dir:
            ckpt = Checkpointer(Path(ckpt_dir), fingerprint=name)
            history = pretrain(method, images, TrainConfig(epochs=1, batch_size=8), checkpointer=ckpt)
            assert ckpt.path.exists(), name
        assert len(history) == 1 and history[0]["loss"] == history[0]["loss"], (name, history)
        acc = knn_accuracy(method.backbone, split, split, 2, torch.device("cpu"), k=3)
        assert 0.0 <= acc <= 1.0, (name, acc)
        print("trained", name, round(history[0]["loss"], 4), flush=True)
    fit_linear_probe(method.backbone, split, split, 2, FitConfig(epochs=1, lr=1e-3, batch_size=8), torch.device("cpu"))

    # the recipes the stages and the comparison call, and the evaluation grid
    sys.path.insert(0, {helpers!r})
    from recipes import finetune_recipe, pretrain_recipe
    from ssl_core.evaluation.grid import EvalData, fit_rows, knn_rows
    from ssl_core.recipes import PretrainData, build_method, pretrain_method
    recipe = pretrain_recipe({{"in_channels": 3, "image_size": SIZE}}, batch_size=8)
    trained, history = pretrain_method(recipe, build_method(recipe), PretrainData(split, split, split, 2),
                                       torch.device("cpu"))
    data = EvalData(split, split, split, {{"1": {{"0": list(range(16))}}}}, 2)
    rows = knn_rows("simclr", trained.backbone, data, 3, torch.device("cpu"), init="ssl")
    rows += fit_rows(finetune_recipe(), "simclr", ["linear"], lambda seed: trained.backbone, data,
                     torch.device("cpu"), print)
    assert len(history) == 1 and len(rows) == 2, rows
    leaked = sorted(n for n in sys.modules if n.split(".")[0] in {absent!r} and sys.modules[n] is not None)
    assert not leaked, leaked
    print("core ok", flush=True)
""")


def test_training_core_needs_only_torch_torchvision_numpy():
    script = SCRIPT.format(absent=ABSENT, tests=str(TESTS), helpers=str(HELPERS))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    from ssl_core.methods import method_names
    trained = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("trained ")]
    assert trained == method_names()
    assert done.stdout.rstrip().endswith("core ok")
