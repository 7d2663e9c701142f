"""Adding a method is one file plus its reference test: a throwaway method defined in a temporary
module registers itself by name, the comparison's default list (`compare.methods: all`) picks it
up, and the comparison trains and evaluates it. No flow, stage, config or tracking code is edited."""
from __future__ import annotations

import importlib.util
import sys
import textwrap

import pytest

THROWAWAY = textwrap.dedent('''
    """Flip: predict whether the image was mirrored left-right (a toy pretext task)."""
    from dataclasses import dataclass

    import torch
    import torch.nn.functional as F

    from ssl_core.augment import augment_batch
    from ssl_core.methods.base import SSLMethod
    from ssl_core.models.heads import mlp


    class Flip(SSLMethod):
        name = "throwaway_flip"

        @dataclass
        class Params:
            hidden_dim: int = 16

        augment_recipe = {"hflip_p": 0.0, "jitter_p": 0.0, "gray_p": 0.0}

        def __init__(self, backbone, params, augment, image_shape):
            super().__init__(backbone, params, augment, image_shape)
            self.head = mlp(backbone.out_dim, params.hidden_dim, 2)

        def loss(self, images_u8, gen):
            x = augment_batch(images_u8, self.augment, gen)
            flipped = torch.randint(2, (x.shape[0],), generator=gen, device=x.device)
            x = torch.where(flipped[:, None, None, None].bool(), x.flip(3), x)
            return F.cross_entropy(self.head(self.backbone(x)), flipped), {}
''')


@pytest.fixture
def throwaway_method(tmp_path):
    from ssl_core.methods import base

    path = tmp_path / "throwaway_flip.py"
    path.write_text(THROWAWAY)
    spec = importlib.util.spec_from_file_location("throwaway_flip", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["throwaway_flip"] = module
    spec.loader.exec_module(module)   # defining the class registers it, as a file in ssl_core/methods/ does
    yield "throwaway_flip"
    base.registry.pop("throwaway_flip", None)
    sys.modules.pop("throwaway_flip", None)


@pytest.mark.slow
def test_a_new_method_file_runs_through_the_comparisons_default_list(tmp_path, mlflow_uri, throwaway_method):
    from ssl_core.data.cache import load_meta
    from ssl_core.methods import method_names
    from ssl_pipeline.comparison import methods as comparison
    from ssl_pipeline.config.schema import load_params
    from ssl_pipeline.ingest.prepare import prepare
    from workspace import make_pipeline_workspace

    assert throwaway_method in method_names()
    root = make_pipeline_workspace(tmp_path, **{"data.label_fractions": [1.0], "finetune.protocols": ["linear"]})
    params = load_params(root / "params.yaml", ["compare.epochs=1"])
    assert params.compare.methods == "all" and throwaway_method in params.compare.method_list()
    prepare(params, root)
    plan = {entry.method: entry for entry in comparison.plan(params, load_meta(root / params.data.prepared_dir))}
    assert plan[throwaway_method].skip_reason is None

    rows = comparison.run_method(params, root, throwaway_method, note=lambda line: None)
    assert {r["protocol"] for r in rows} == {"knn", "linear"}
    assert all(r["method"] == throwaway_method and 0 <= r["accuracy"] <= 1 and r["status"] == "ok" for r in rows)
