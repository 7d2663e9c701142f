"""prepare on real files: the same shard bytes for 1 worker, 2 workers and a Dask LocalCluster; a
re-prepare decodes exactly the new files and leaves old shards byte-identical; an image's split never
changes as data grows; hostile sets stop with one sentence after the quarantine report is written."""
from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from ssl_core.data.cache import load_meta, load_split
from ssl_pipeline.config.schema import load_params
from ssl_pipeline.errors import StageError
from ssl_pipeline.ingest.prepare import prepare
from workspace import class_image, write_params


def store_digest(root) -> dict[str, str]:
    folder = root / "data/prepared/store"
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("shard-*"))}


def write_classes(raw, start: int, count: int, seed: int, classes: int = 3, size: int = 12) -> None:
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = raw / "labeled" / f"c{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(start, start + count):
            Image.fromarray(class_image(c, rng, size, True)).save(folder / f"{i:04d}.png")


def make_root(tmp_path, name="ws", **overrides):
    root = tmp_path / name
    write_classes(root / "data/raw", 0, 20, seed=0)
    (root / "data/raw/unlabeled").mkdir(parents=True)
    rng = np.random.default_rng(9)
    for i in range(10):
        Image.fromarray(class_image(i % 3, rng, 12, True)).save(root / f"data/raw/unlabeled/u{i:03d}.png")
    write_params(root, {"data.image_size": 8, "prepare.shard_mb": 1, **overrides})
    return root


def run(root):
    return prepare(load_params(root / "params.yaml"), root)


def test_same_shards_for_one_and_two_workers_and_a_dask_cluster(tmp_path):
    from distributed import LocalCluster

    # 128 px: 48 KiB a row, so 1 MiB shards hold 21 rows and the 70 images make 4 shard tasks (+ sidecars)
    one = make_root(tmp_path, "one", **{"prepare.workers": 1, "data.image_size": 128})
    two = make_root(tmp_path, "two", **{"prepare.workers": 2, "data.image_size": 128})
    summaries = [run(one), run(two)]
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        dask = make_root(tmp_path, "dask", **{"prepare.dask_address": cluster.scheduler_address,
                                              "data.image_size": 128})
        summaries.append(run(dask))
    digests = [store_digest(r) for r in (one, two, dask)]
    assert len(digests[0]) == 8 and digests[0] == digests[1] == digests[2]
    for r in (two, dask):
        for name in ("manifest.csv", "fractions.json", "train.rows.npy", "unlabeled.rows.npy"):
            assert (r / "data/prepared" / name).read_bytes() == (one / "data/prepared" / name).read_bytes(), name
    assert summaries[0]["counts"] == summaries[1]["counts"] == summaries[2]["counts"]


def test_re_prepare_decodes_only_new_files_and_keeps_old_shards(tmp_path):
    root = make_root(tmp_path)
    first = run(root)["counts"]
    assert first["n_decoded"] == 70 and first["n_reused"] == 0
    before = store_digest(root)
    manifest = pd.read_csv(root / "data/prepared/manifest.csv")
    write_classes(root / "data/raw", 20, 2, seed=5)                         # 6 new labeled images
    shutil.copy(root / "data/raw/labeled/c0/0003.png", root / "data/raw/unlabeled/copy.png")   # known content
    (root / "data/raw/unlabeled/u000.png").unlink()                          # one removed
    second = run(root)["counts"]
    assert second["n_decoded"] == 6 and second["n_reused"] == 70 - 1 + 1
    assert second["n_md5_from_stat_cache"] == 69 and second["n_md5_from_read"] == 7
    after = store_digest(root)
    assert {name: after[name] for name in before} == before and len(after) > len(before)
    again = pd.read_csv(root / "data/prepared/manifest.csv")
    old_rows = dict(zip(manifest.content_md5, manifest.row))
    kept = again[again.content_md5.isin(old_rows)]
    assert (kept.row == kept.content_md5.map(old_rows)).all()    # every old row reused as is
    third = run(root)["counts"]
    assert third["n_decoded"] == 0 and store_digest(root) == after


def test_an_images_split_never_changes_as_data_grows(tmp_path):
    root = make_root(tmp_path)
    run(root)
    first = pd.read_csv(root / "data/prepared/manifest.csv")
    write_classes(root / "data/raw", 20, 30, seed=7)
    run(root)
    grown = pd.read_csv(root / "data/prepared/manifest.csv")
    labeled = grown[grown.split != "unlabeled"]
    where = dict(zip(labeled.path, labeled.split))
    old = first[first.split != "unlabeled"]
    assert all(where[p] == s for p, s in zip(old.path, old.split))
    new = labeled[~labeled.path.isin(old.path)]
    assert set(new.split) == {"train", "val", "test"}     # new images spread by their hash
    test_pixels = set(grown[grown.split == "test"].content_sha1)
    assert not test_pixels & set(grown[grown.split == "unlabeled"].content_sha1)
    assert len(load_split(root / "data/prepared", "test")) == (grown.split == "test").sum()


def test_too_few_images_per_class_stops_with_one_sentence(tmp_path):
    root = tmp_path / "ws"
    write_classes(root / "data/raw", 0, 2, seed=0)
    write_params(root, {"data.image_size": 8})
    with pytest.raises(StageError, match=r"every class needs at least 3 \(one for each carved split and one for "
                                         r"train\), but 'c0' \(2\), 'c1' \(2\), 'c2' \(2\) have fewer"):
        run(root)


def test_when_every_file_is_bad_the_quarantine_report_exists_before_the_error(tmp_path):
    root = tmp_path / "ws"
    for c in ("a", "b"):
        (root / "data/raw/labeled" / c).mkdir(parents=True)
        (root / "data/raw/labeled" / c / "x.png").write_bytes(b"garbage")
    write_params(root, {"data.image_size": 8})
    with pytest.raises(StageError, match="see reports/quarantine.csv"):
        run(root)
    report = pd.read_csv(root / "reports/quarantine.csv")
    assert sorted(report.path) == ["labeled/a/x.png", "labeled/b/x.png"]


def test_multi_band_set_prepares_with_measured_ranges(tmp_path):
    root = tmp_path / "ws"
    rng = np.random.default_rng(0)
    for c in range(2):
        folder = root / "data/raw/labeled" / f"c{c}"
        folder.mkdir(parents=True)
        for i in range(8):
            tile = (rng.integers(0, 100, (13, 16, 16)) + 1000 * c + np.arange(13)[:, None, None] * 50).astype(np.uint16)
            if i % 2:
                tifffile.imwrite(folder / f"{i}.tif", tile, photometric="minisblack", planarconfig="separate")
            else:
                np.save(folder / f"{i}.npy", tile.transpose(1, 2, 0))
    write_params(root, {"data.image_size": 8, "data.range_percentiles": [0.0, 100.0]})
    summary = run(root)
    meta = load_meta(root / "data/prepared")
    assert meta["channels"] == 13 and summary["counts"]["channels"] == 13
    ranges = np.array(meta["channel_ranges"])
    assert ranges.shape == (13, 2) and (ranges[:, 1] > ranges[:, 0]).all()
    images = load_split(root / "data/prepared", "train").images
    assert tuple(images.shape[1:]) == (13, 8, 8)


def test_worker_tasks_load_without_torch_or_the_pipeline(tmp_path, monkeypatch):
    """What a decode worker unpickles imports only ssl_core's torch-free data modules: a task from the
    pipeline package would import the schema and torch in every worker (about 0.5 GB each)."""
    import contextlib
    import pickle
    import subprocess
    import sys

    from ssl_pipeline.ingest import workers

    sent = {}

    @contextlib.contextmanager
    def recording_runner(n, address=""):
        def submit_all(fn, tasks, done):
            if tasks:
                sent[repr(fn)[:80]] = pickle.dumps(fn)
            return workers._in_process(fn, tasks, done)
        yield workers.Runner(submit_all, "recorded")

    monkeypatch.setattr(workers, "runner", recording_runner)
    run(make_root(tmp_path))   # PNGs: the channel-range sampling runs as tasks too
    assert len(sent) == 3, list(sent)   # hashing, range sampling, decoding
    check = ("import pickle, sys; pickle.loads(sys.stdin.buffer.read()); "
             "print(sorted(m for m in ('torch', 'ssl_pipeline', 'pandas') if m in sys.modules))")
    for name, payload in sent.items():
        out = subprocess.run([sys.executable, "-c", check], input=payload, capture_output=True, check=True)
        assert out.stdout.decode().strip() == "[]", (name, out.stdout, out.stderr[-500:])
