"""CIFAR-10 enters like a user's folder: unpack (safely, outside git) -> `ssl-pipeline data import`
-> prepare -> 3-channel caches on which the colour methods train. Tests that need the archive skip
cleanly when ../shared/datasets/cifar10-train-jpg.tar.gz is absent."""
from __future__ import annotations

import io
import math
import tarfile

import pytest
import torch

from ssl_pipeline.ingest.cifar import DEFAULT_ARCHIVE, CifarError, unpack

needs_cifar = pytest.mark.skipif(not DEFAULT_ARCHIVE.is_file(), reason=f"{DEFAULT_ARCHIVE} is absent")


def _tar_with(path, entries) -> None:
    """entries: (name, bytes | None (symlink to /etc/passwd))."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_unpack_extracts_only_class_files_and_nothing_outside(tmp_path):
    archive = tmp_path / "a.tar.gz"
    _tar_with(archive, [("train/cat/b.jpg", b"2"), ("train/cat/a.jpg", b"1"), ("train/dog/c.jpg", b"3"),
                        ("../escape.jpg", b"x"), ("/abs.jpg", b"x"), ("train/cat/../../up.jpg", b"x"),
                        ("train/dog/link.jpg", None), ("README", b"x")])
    dest = tmp_path / "out" / "cifar"
    folder = unpack(archive, dest, per_class=1, verify=False)
    assert folder == dest / "train"
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == ["cat/a.jpg", "dog/c.jpg"]
    assert not (tmp_path / "escape.jpg").exists() and not (tmp_path / "out" / "up.jpg").exists()
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["cifar"]   # no staging folder left behind
    assert unpack(archive, dest, per_class=1, verify=False) == folder   # same request: reused
    with pytest.raises(CifarError, match="already holds other files"):
        unpack(archive, dest, per_class=2, verify=False)
    with pytest.raises(CifarError, match="not in the archive"):
        unpack(archive, tmp_path / "x", classes=["horse"], verify=False)
    with pytest.raises(CifarError, match="sha256 differs"):
        unpack(archive, tmp_path / "y")


def test_unpack_refuses_a_destination_inside_the_git_tree(tmp_path, monkeypatch):
    from fixtures_repo import PROJECT_ROOT

    archive = tmp_path / "a.tar.gz"
    _tar_with(archive, [("train/cat/a.jpg", b"1")])
    with pytest.raises(CifarError, match="inside the git work tree"):
        unpack(archive, PROJECT_ROOT / "data" / "cifar", verify=False)
    assert not (PROJECT_ROOT / "data" / "cifar").exists()


@needs_cifar
@pytest.mark.slow
def test_cifar_subset_imports_prepares_to_colour_caches_and_colour_methods_train(tmp_path, monkeypatch, mlflow_uri):
    from fixtures_repo import make_workspace
    from workspace import write_params

    from ssl_pipeline.cli.main import main
    from ssl_pipeline.config.schema import load_params
    from ssl_core.data.cache import load_meta, load_split
    from ssl_core.recipes import build_method
    from ssl_pipeline.recipes import pretrain_recipe
    from ssl_core.training.loop import TrainConfig, pretrain

    classes = ["airplane", "cat", "ship"]
    folder = unpack(DEFAULT_ARCHIVE, tmp_path / "cifar", per_class=30, classes=classes)   # as a user would
    assert sorted(p.name for p in folder.iterdir()) == classes
    assert all(len(list((folder / c).glob("*.jpg"))) == 30 for c in classes)

    root = make_workspace(tmp_path)
    write_params(root, {"data.image_size": 32})
    monkeypatch.chdir(root)
    assert main(["data", "import", str(folder), "--as", "labeled"]) == 0
    assert main(["prepare"]) == 0
    meta = load_meta(root / "data/prepared")
    assert meta["channels"] == 3 and meta["classes"] == classes and meta["image_size"] == 32
    unlabeled, train, test = (load_split(root / "data/prepared", s) for s in ("unlabeled", "train", "test"))
    assert unlabeled.images.shape[1:] == (3, 32, 32) and train.images.shape[1:] == (3, 32, 32)
    assert len(train) + len(test) <= 90 and len(unlabeled) == 90 - len(test)   # the pool is train + val, unlabeled
    # Real colour: the channels differ (a grayscale import would have them equal).
    x = train.images[:].float()   # the whole (small) split, gathered from the shards
    assert (x[:, 0] - x[:, 2]).abs().mean() > 5

    for method in ("colorization", "simclr"):   # Lab targets; colour jitter
        params = load_params(root / "params.yaml", [f"pretrain.method={method}"])
        ssl = build_method(pretrain_recipe(params, meta))
        history = pretrain(ssl, unlabeled.images[:16], TrainConfig(epochs=1, batch_size=8, lr=1e-3))
        assert len(history) == 1 and math.isfinite(history[0]["loss"])
        assert all(torch.isfinite(p).all() for p in ssl.parameters())
