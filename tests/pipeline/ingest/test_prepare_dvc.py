"""prepare in a real DVC workspace: the md5s DVC recorded at `dvc add` are reused instead of reading
the files again, and data linked from DVC's cache (hard links by default, symlinks where the cache is
elsewhere) is read like any file, without a second copy on disk."""
from __future__ import annotations

import os

import pytest

from fixtures_repo import make_workspace
from ssl_pipeline.config.schema import load_params
from ssl_pipeline.ingest.prepare import prepare
from ssl_pipeline.versioning import workspace as dvcops
from workspace import write_params, write_tiny_images


def tiny_tracked_workspace(tmp_path, link_type: str | None = None):
    root = make_workspace(tmp_path)
    if link_type:
        dvcops.dvc("config", "cache.type", link_type, cwd=root)
    write_tiny_images(root / "data/raw", classes=2, train_per_class=6, test_per_class=3, size=12)
    dvcops.track(root, ["data/raw/labeled", "data/raw/unlabeled"])
    write_params(root, {"data.image_size": 8, "prepare.workers": 1})
    return root


def test_workspaces_link_dvc_cache_files_instead_of_copying(tmp_path):
    root = tiny_tracked_workspace(tmp_path)
    configured = dvcops.dvc("config", "cache.type", cwd=root).stdout.strip()
    # a test image: its content is in no other file (DVC copies a second file of the same content)
    image = next((root / "data/raw/labeled/test/class0").iterdir())
    if dvcops.reflink_works(root / ".dvc"):
        assert configured == dvcops.CACHE_LINK_TYPES
    else:   # e.g. ext4: hard links, one inode for the workspace file and DVC's cached copy
        assert configured == dvcops.CACHE_LINK_TYPES_NO_REFLINK and os.stat(image).st_nlink == 2
    dvcops.dvc("config", "cache.type", "copy", cwd=root)
    dvcops.ensure_repo(root)                  # a type the user chose is left alone
    assert dvcops.dvc("config", "cache.type", cwd=root).stdout.strip() == "copy"


def test_first_prepare_takes_the_md5s_dvc_recorded_and_the_next_its_stat_cache(tmp_path):
    root = tiny_tracked_workspace(tmp_path)
    counts = prepare(load_params(root / "params.yaml"), root)["counts"]
    assert counts["n_md5_from_dvc"] == 12 + 6 + 12 and counts["n_md5_from_read"] == 0
    counts = prepare(load_params(root / "params.yaml"), root)["counts"]
    assert counts["n_md5_from_stat_cache"] == 30 and counts["n_decoded"] == 0


@pytest.mark.parametrize("link_type", ["symlink"])
def test_files_symlinked_from_the_dvc_cache_are_read(tmp_path, link_type):
    root = tiny_tracked_workspace(tmp_path, link_type)
    image = next((root / "data/raw/unlabeled").iterdir())
    assert image.is_symlink() and ".dvc/cache" in os.path.realpath(image)
    counts = prepare(load_params(root / "params.yaml"), root)["counts"]
    assert counts["n_quarantined"] == 0 and counts["n_unlabeled"] == 12 and counts["n_test"] == 6
