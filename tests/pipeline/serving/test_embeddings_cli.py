"""`ssl-pipeline embed`, `similar`, `select`, `card` and `predict`'s label set, on real files, against a
real registry made by one tiny pipeline run (git + DVC + SQLite MLflow + Prefect harness); the last test
changes the label set and runs the pipeline again."""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image

from ssl_core.evaluation.protocols import extract_features
from ssl_core.models.spec import load_encoder
from ssl_core.data.cache import load_split
from ssl_pipeline.cli import main as cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ws(tmp_path_factory, prefect_harness):
    from flows.pipeline import pipeline
    from workspace import class_image, make_pipeline_workspace
    from ssl_pipeline.versioning import workspace as dvcops

    tmp = tmp_path_factory.mktemp("embeddings")
    root = make_pipeline_workspace(tmp, **{"pretrain.epochs": 1})
    rng = np.random.default_rng(5)
    for i in range(30):   # unlabeled images no one labeled yet: the pool `select` chooses from
        Image.fromarray(class_image(i % 3, rng, 16, False)).save(root / f"data/raw/unlabeled/extra_{i:03d}.png")
    dvcops.track(root, ["data/raw/unlabeled"])
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mp.chdir(root)
    result = pipeline(root=str(root))
    yield {"root": root, "tmp": tmp, "uri": uri, "result": result, "pipeline": pipeline}
    mp.undo()


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("command, words", [("embed", ["SOURCE", "--out", "--log-mlflow"]),
                                            ("similar", ["IMAGE_OR_FOLDER", "--k", "--threshold"]),
                                            ("select", ["--budget", "kcenter", "--by-cluster"]),
                                            ("card", ["MODEL_URI"])])
def test_every_command_has_help(capsys, command, words):
    with pytest.raises(SystemExit) as done:
        cli.main([command, "--help"])
    text = capsys.readouterr().out
    assert done.value.code == 0 and all(w in text for w in words)


def test_embed_a_prepared_split_equals_the_encoder_on_the_cache(ws, capsys):
    root = ws["root"]
    code, out, err = run(capsys, "embed", "train", "--out", "train.parquet")
    assert code == 0 and "wrote train.parquet" in out and "encoder: ssl-encoder v1" in err
    table = pq.read_table(root / "train.parquet")
    split = load_split(root / "data/prepared", "train")
    manifest = [r for r in csv.DictReader(open(root / "data/prepared/manifest.csv")) if r["split"] == "train"]
    assert table.num_rows == len(split) == len(manifest)
    assert table.column("path").to_pylist() == [r["path"] for r in manifest]
    assert table.column("label").to_pylist() == [r["class"] for r in manifest]
    assert set(table.column("split").to_pylist()) == {"train"}
    encoder, _ = load_encoder(root / "models/encoder.json", root / "models/encoder.pt")
    expected = extract_features(encoder, split.images[0:len(split)], torch.device("cpu"))
    got = torch.tensor(table.column("vector").to_pylist())
    assert torch.allclose(got, expected, atol=1e-5)
    meta = pq.read_schema(root / "train.parquet").metadata
    assert meta[b"ssl_pipeline.model_uri"] == b"models:/ssl-encoder/1"


def test_embed_a_folder_and_log_it(ws, capsys):
    root, client = ws["root"], MlflowClient(ws["uri"])
    code, out, _ = run(capsys, "embed", "data/raw/labeled/test", "--labeled", "--out", "test.parquet", "--log-mlflow")
    assert code == 0
    table = pq.read_table(root / "test.parquet").to_pandas()
    assert len(table) == 24 and sorted(set(table.label)) == ["class0", "class1", "class2"]
    assert all(Path(p).exists() for p in table.path)
    run_id = out.split("logged to MLflow run ")[1].split()[0]
    assert [a.path for a in client.list_artifacts(run_id, "embeddings")] == ["embeddings/test.parquet"]


def test_embed_refuses_bad_input_in_one_sentence(ws, capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "embed", str(tmp_path / "empty"))
    assert code == 2 and "holds no image files" in err
    code, _, err = run(capsys, "embed", "train", "--model", "models:/no-such-model@champion")
    assert code == 2 and "the model models:/no-such-model@champion does not exist" in err
    code, _, err = run(capsys, "embed", "train", "--model", "models:/ssl-encoder/9")
    assert code == 2 and "does not exist" in err and "hint: `ssl-pipeline ui`" in err


def test_similar_finds_the_image_itself_first(ws, capsys):
    root = ws["root"]
    run(capsys, "embed", "data/raw/unlabeled", "--out", "pool.parquet")
    image = sorted((root / "data/raw/unlabeled").glob("img_*.png"))[5]
    code, out, err = run(capsys, "similar", str(image), "--k", "3", "--embeddings", "pool.parquet")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and len(rows) == 3 and "encoder: ssl-encoder v1" in err
    assert (root / rows[0]["path"]).resolve() == image.resolve()
    assert float(rows[0]["similarity"]) == pytest.approx(1.0, abs=1e-5)
    assert float(rows[0]["similarity"]) >= float(rows[1]["similarity"]) >= float(rows[2]["similarity"])


def test_similar_reports_near_duplicates_in_a_folder(ws, capsys, tmp_path):
    folder = tmp_path / "photos"
    shutil.copytree(ws["root"] / "data/raw/labeled/test/class0", folder)
    shutil.copy(folder / "0003.png", folder / "copy_of_0003.png")
    code, out, err = run(capsys, "similar", str(folder), "--threshold", "0.999", "--out", str(tmp_path / "dups.csv"))
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and {(Path(r["path_a"]).name, Path(r["path_b"]).name) for r in rows} >= {("0003.png", "copy_of_0003.png")}
    assert "near-duplicate pair(s) at cosine >= 0.999" in err and (tmp_path / "dups.csv").exists()
    code, _, err = run(capsys, "similar", str(tmp_path / "nowhere.png"))
    assert code == 2 and "no such image or folder" in err


@pytest.mark.parametrize("strategy, extra", [("kcenter", []), ("random", ["--seed", "3"]),
                                             ("uncertainty", []), ("kcenter", ["--by-cluster"])])
def test_select_writes_paths_and_a_contact_sheet(ws, capsys, strategy, extra):
    root = ws["root"]
    code, out, err = run(capsys, "select", "--budget", "6", "--strategy", strategy, *extra, "--out", f"sel_{strategy}.csv")
    assert code == 0, err
    assert f"chose 6 of 30 pool images by {strategy}" in out
    rows = list(csv.DictReader(open(root / f"sel_{strategy}.csv")))
    assert [int(r["rank"]) for r in rows] == list(range(1, 7))
    assert len({r["path"] for r in rows}) == 6 and all("extra_" in r["path"] for r in rows)   # never an image already labeled
    if "--by-cluster" in extra:
        assert sorted(int(r["cluster"]) for r in rows) == [0, 0, 1, 1, 2, 2]
    if strategy == "uncertainty":
        margins = [float(r["margin"]) for r in rows]
        assert margins == sorted(margins)
    sheet = Image.open(root / f"sel_{strategy}.png")
    assert sheet.size == (6 * 50 + 2, 52)


def test_select_refuses_a_budget_larger_than_the_pool(ws, capsys):
    code, _, err = run(capsys, "select", "--budget", "31")
    assert code == 2 and "--budget 31 is larger than the pool of 30 unlabeled image(s)" in err


def test_card_prints_the_champions_model_card(ws, capsys):
    code, out, _ = run(capsys, "card")
    assert code == 0 and out.startswith("# Model card: ssl-classifier v1")
    assert "## Label efficiency (test split)" in out and "## Known limitations (measured)" in out
    code, out2, _ = run(capsys, "card", "models:/ssl-encoder/1")
    assert code == 0 and out2.startswith("# Model card: ssl-encoder v1 (encoder of ssl-classifier v1)")
    code, _, err = run(capsys, "card", "models:/ssl-classifier/7")
    assert code == 2 and "does not exist" in err


def test_predict_names_the_version_and_checks_the_label_set(ws, capsys, tmp_path):
    root = ws["root"]
    code, _, err = run(capsys, "predict", "data/raw/labeled/test", "--labeled")
    first = err.splitlines()[0]
    assert code == 0 and first.startswith("model: ssl-classifier v1 (models:/ssl-classifier@champion)")
    assert "3 classes: class0, class1, class2" in first and "accuracy against the class folders" in err
    other = tmp_path / "labeled"
    for name in ("cat", "class1"):
        shutil.copytree(root / "data/raw/labeled/test/class1", other / name)
    code, _, err = run(capsys, "predict", str(other), "--labeled")
    assert code == 2 and "has class folder(s) cat that ssl-classifier v1 does not know" in err


def readme_commands(section: str) -> list[list[str]]:
    """The shell lines of the first bash block under the README heading `section`, comments dropped."""
    import re
    import shlex

    from fixtures_repo import PROJECT_ROOT

    text = (PROJECT_ROOT / "README.md").read_text().split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", text, re.S)[1]
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


def test_the_readme_embedding_commands_run_as_written(ws, capsys, tmp_path, monkeypatch):
    root = ws["root"]
    home = tmp_path / "home"   # the README names the user's ~/photos/new, as its own-data section does
    photos = home / "photos/new"
    photos.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    for i, src in enumerate(sorted((root / "data/raw/labeled/test/class2").glob("*.png"))[:6]):
        Image.open(src).convert("RGB").save(photos / f"IMG_{i:04d}.jpg")
    shutil.copy(photos / "IMG_0001.jpg", photos / "IMG_0001_copy.jpg")
    commands = readme_commands("Using the embeddings")
    assert [c[:2] for c in commands] == [["ssl-pipeline", "embed"], ["ssl-pipeline", "similar"],
                                         ["ssl-pipeline", "similar"], ["ssl-pipeline", "select"], ["ssl-pipeline", "select"]]
    for argv in commands:
        code, out, err = run(capsys, *[os.path.expanduser(a) for a in argv[1:]])   # as the shell expands ~
        assert code == 0, (argv, err[-2000:])
    assert (root / "embeddings.parquet").exists() and (root / "to_label.png").exists()
    pairs = list(csv.reader(open(root / "duplicates.csv")))
    assert pairs[0] == ["similarity", "path_a", "path_b"] and any("IMG_0001_copy.jpg" in p[1] + p[2] for p in pairs[1:])


def test_the_measurement_reports_run_on_the_workspace(ws, capsys):
    root = ws["root"]
    code, out, _ = run(capsys, "measure", "select", "--fraction", "0.1", "--seeds", "2", "--out", "m/select")
    result = json.loads((root / "m/select/result.json").read_text())
    budget = max(round(0.1 * result["train_images"]), 3)
    assert code == 0 and result["budget"] == budget and len(result["rows"]) == 5 * 2 * 2   # strategies x seeds x protocols
    assert {r["strategy"] for r in result["rows"]} == {"random", "kcenter", "kcenter by cluster", "uncertainty",
                                                       "uncertainty by cluster"}
    assert all(r["labels"] == len(set(r["chosen"])) == budget and 0 <= r["accuracy"] <= 1 for r in result["rows"])
    chosen = {(r["strategy"], r["seed"]): r["chosen"] for r in result["rows"]}
    for seed in (0, 1):   # one active-learning round: random's own first half, then the probe's least sure
        for strategy in ("uncertainty", "uncertainty by cluster"):
            assert chosen[strategy, seed][:budget // 2] == chosen["random", seed][:budget // 2]
    assert "| kcenter | linear |" in out and "| uncertainty by cluster | finetune |" in out
    code, _, err = run(capsys, "measure", "select", "--strategies", "kcenter,entropy", "--out", "m/bad")
    assert code != 0 and "unknown entropy" in err and not (root / "m/bad").exists()
    code, out, _ = run(capsys, "measure", "warm-start", "--set", "retrain.warm_epochs=1", "--set",
                       "retrain.warm_warmup_epochs=0", "--out", "m/warm")
    result = json.loads((root / "m/warm/result.json").read_text())
    assert code == 0 and result["new_images"] == round(102 * 0.1 / 1.1)
    rows = result["rows"]
    assert rows["warm challenger"]["epochs"] == 1 and rows["cold challenger"]["epochs"] == 1
    assert rows["cold challenger"]["images"] == rows["warm challenger"]["images"] == 102
    assert rows["champion (before the new images)"]["images"] == 102 - result["new_images"]
    assert all(r["cpu_s"] > 0 and 0 <= r["knn_test"] <= 1 for r in rows.values())
    assert "warm - cold kNN" in out


def test_a_new_label_set_makes_its_version_champion_and_says_why(ws, capsys):
    from workspace import write_tiny_images
    from ssl_pipeline.versioning import workspace as dvcops

    root, client = ws["root"], MlflowClient(ws["uri"])
    shutil.rmtree(root / "data/raw/labeled")
    write_tiny_images(root / "data/raw/fresh", classes=4, seed=3)
    shutil.move(root / "data/raw/fresh/labeled", root / "data/raw/labeled")
    for i, name in enumerate(["ant", "bee", "cow", "dog"]):
        (root / f"data/raw/labeled/train/class{i}").rename(root / f"data/raw/labeled/train/{name}")
        (root / f"data/raw/labeled/test/class{i}").rename(root / f"data/raw/labeled/test/{name}")
    dvcops.track(root, ["data/raw/labeled"])
    from ssl_pipeline.cli.commands.run import print_summary

    result = ws["pipeline"](root=str(root))
    print_summary(result)
    out = capsys.readouterr().out
    assert result["registered"]["champion_set"] and result["registered"]["classifier_version"] == 2
    assert "champion: v2, because the champion v1 cannot be compared on this test split: its label set differs" in out
    assert int(client.get_model_version_by_alias("ssl-classifier", "champion").version) == 2
    assert int(client.get_model_version_by_alias("ssl-encoder", "champion").version) == 2
    tags = client.get_model_version("ssl-classifier", "2").tags
    assert json.loads(tags["classes"]) == ["ant", "bee", "cow", "dog"] and tags["channels"] == "1"
    assert tags["image_size"] == "16"
    assert json.loads(tags["champion.previous_classes"]) == ["class0", "class1", "class2"]
    assert json.loads(tags["champion.new_classes"]) == ["ant", "bee", "cow", "dog"]
    assert client.get_model_version("ssl-classifier", "1").tags["champion.replaced_version"] == "1"
    assert tags["drift.vs_encoder_version"] == "1" and tags["drift.measured"] == "True"   # `run` measures it too
    card = client.get_model_version("ssl-classifier", "2").description
    assert "## Drift vs its predecessor\n\nvs champion encoder v1: " in card and "Champion: the champion v1" in card
    code, _, err = run(capsys, "predict", "data/raw/labeled/test", "--labeled")
    assert code == 0 and "ssl-classifier v2" in err.splitlines()[0] and "4 classes: ant, bee, cow, dog" in err
