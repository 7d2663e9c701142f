"""evaluate: test-split accuracy for every (init, protocol, label fraction, seed) cell.

Outputs: reports/label_efficiency.csv + .png, reports/confusion_matrix.png, metrics/evaluate.json
(headline numbers, DVC metrics), models/classifier.pt + .json (the best SSL classifier by val accuracy,
logged as an MLflow model; registration happens in the flow's register step).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from ssl_core.data.cache import load_fractions, load_meta, load_split
from ssl_core.evaluation.grid import EvalData, knn_rows
from ssl_core.evaluation.protocols import accuracy, extract_features
from ssl_core.fsutil import atomic_torch_save, write_json
from ssl_core.models import Classifier
from ssl_core.models.spec import EncoderSpec, build_encoder, load_encoder
from ssl_core.recipes import build_method
from ssl_core.training.runtime import setup_torch
from ssl_pipeline import outputs
from ssl_pipeline.config.schema import Params
from ssl_pipeline.progress import Progress, log
from ssl_pipeline.recipes import pretrain_recipe
from ssl_pipeline.reports import plots
from ssl_pipeline.tracking import runs as tracking
from ssl_pipeline.tracking.datasets import dataset_infos
from ssl_pipeline.tracking.models import log_torch_model, record_logged_model

COLUMNS = ["method", "init", "protocol", "label_fraction", "seed", "accuracy"]
REPORTS = (outputs.TABLE_CSV, outputs.PLOT_PNG, outputs.CONFUSION_PNG, outputs.EMBEDDING_PNG, outputs.VIEWS_PNG,
           outputs.CURVES_PNG)


def headline(table: pd.DataFrame) -> dict:
    """Mean test accuracy per (init, protocol) at each fraction, plus the SSL gain at the smallest."""
    out: dict[str, float] = {}
    means = table.groupby(["init", "protocol", "label_fraction"])["accuracy"].mean()
    for (init, protocol, frac), acc in means.items():
        out[f"{init}_{protocol}_{frac:g}"] = round(float(acc), 4)
    smallest = float(table["label_fraction"].min())
    ssl_best = max(means.get(("ssl", p, smallest), float("nan")) for p in ("linear", "finetune"))
    scratch = means.get(("scratch", "finetune", smallest), float("nan"))
    out[f"ssl_gain_over_scratch_{smallest:g}"] = round(float(ssl_best - scratch), 4)
    return out


def pictures(params: Params, meta: dict, encoder, test, spec: EncoderSpec, root: Path, device) -> None:
    """Embedding map of the test set, the method's augmented views, the pretraining curves."""
    n = min(len(test), 1000)
    feats = extract_features(encoder, test.images[:n], device).numpy()
    plots.embedding_map_plot(feats, test.labels[:n].numpy(), meta["classes"], root / outputs.EMBEDDING_PNG,
                             f"t-SNE of {spec.method} encoder features, test split", seed=params.seed)
    method = build_method(pretrain_recipe(params, meta))
    sample = test.images[:: max(len(test) // 6, 1)][:6]
    views = method.example_views(sample, torch.Generator().manual_seed(params.seed))
    plots.view_grid_plot(sample.float().numpy() / 255, [v.float().numpy() for v in views], root / outputs.VIEWS_PNG,
                         f"{spec.method}: what the encoder sees during pretraining")
    curve = pd.read_csv(root / outputs.CURVE_CSV)
    plots.training_curves_plot(curve, root / outputs.CURVES_PNG, f"{spec.method} pretraining ({spec.backbone})")


def score_classifiers(index: pd.DataFrame, spec: EncoderSpec, data: EvalData, root: Path, method: str,
                      device) -> tuple[list[dict], list[float]]:
    """Test accuracy of every classifier finetune trained (one row each)."""
    rows, accs = [], []
    bar = Progress(len(index), "evaluate")
    for i, cell in enumerate(index.itertuples()):
        model = Classifier(build_encoder(spec), data.num_classes)
        model.load_state_dict(torch.load(root / outputs.CLASSIFIER_DIR / cell.file, weights_only=True))
        acc = accuracy(model.to(device), data.test, device)
        accs.append(acc)
        rows.append({"method": method if cell.init == "ssl" else "scratch", "init": cell.init,
                     "protocol": cell.protocol, "label_fraction": cell.label_fraction, "seed": cell.seed,
                     "accuracy": acc})
        bar.update(i + 1)
    bar.close()
    return rows, accs


def best_classifier(index: pd.DataFrame, spec: EncoderSpec, meta: dict, data: EvalData, root: Path) -> tuple:
    """The SSL classifier with the best val accuracy at the largest fraction: saved, plotted, logged."""
    best = index[(index.init == "ssl") & (index.label_fraction == index.label_fraction.max())]
    best = best.sort_values(["val_accuracy", "protocol"], ascending=[False, True]).iloc[0]
    model = Classifier(build_encoder(spec), meta["num_classes"])
    model.load_state_dict(torch.load(root / outputs.CLASSIFIER_DIR / best.file, weights_only=True))
    model.eval()
    atomic_torch_save(model.state_dict(), root / outputs.CLASSIFIER_PT)
    test = data.test
    with torch.no_grad():
        pred = torch.cat([model(test.images[i:i + 512].float() / 255).argmax(1)
                          for i in range(0, len(test), 512)]).numpy()
    plots.confusion_matrix_plot(test.labels.numpy(), pred, meta["classes"], root / outputs.CONFUSION_PNG,
                                f"Best classifier ({best.protocol}, {best.label_fraction:g} labels): "
                                f"test acc {best.test_accuracy:.3f}")
    decoding = {"resize": meta.get("resize", "crop"), "channel_ranges": meta.get("channel_ranges")}
    model_uri = log_torch_model(model, test.images[:2].float() / 255, name="classifier",
                                metadata={"classes": meta["classes"], **decoding})
    write_json(root / outputs.CLASSIFIER_JSON, {**spec.to_dict(), "num_classes": meta["num_classes"], **decoding,
                                                "classes": meta["classes"], "protocol": best.protocol,
                                                "label_fraction": float(best.label_fraction),
                                                "val_accuracy": float(best.val_accuracy),
                                                "test_accuracy": float(best.test_accuracy)})
    # The run id stays out of classifier.json: DVC hashes that file into dvc.lock.
    record_logged_model(root, root / outputs.CLASSIFIER_PT, tracking.mlflow.active_run().info.run_id, model_uri)
    return best


def run(params: Params, root: Path = Path(".")) -> dict:
    d = params.data
    prepared = root / d.prepared_dir
    meta = load_meta(prepared)
    data = EvalData(load_split(prepared, "train"), load_split(prepared, "val"), load_split(prepared, "test"),
                    load_fractions(prepared), meta["num_classes"])
    device = setup_torch(params.pretrain.device)
    encoder, spec = load_encoder(root / outputs.ENCODER_JSON, root / outputs.ENCODER_PT)
    index = pd.read_csv(root / outputs.INDEX_CSV)
    method = params.pretrain.method
    with tracking.stage_run("evaluate", params, dataset_infos(root, d.raw_dir, d.prepared_dir), root):
        rows = knn_rows(method, encoder.to(device), data, params.evaluate.knn_k, device, init="ssl")
        torch.manual_seed(params.seed)
        rows += knn_rows("random", build_encoder(spec).to(device), data, params.evaluate.knn_k, device, init="scratch")
        cell_rows, accs = score_classifiers(index, spec, data, root, method, device)
        table = pd.DataFrame(rows + cell_rows, columns=COLUMNS).sort_values(["init", "protocol", "label_fraction", "seed"])
        (root / outputs.TABLE_CSV).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(root / outputs.TABLE_CSV, index=False)
        plots.label_efficiency_plot(table, root / outputs.PLOT_PNG,
                                    f"Label efficiency: {method} vs scratch ({spec.backbone})")
        metrics = headline(table)
        best = best_classifier(index.assign(test_accuracy=accs), spec, meta, data, root)
        metrics.update(best_classifier_test_accuracy=round(float(best.test_accuracy), 4),
                       best_classifier_protocol=best.protocol)
        write_json(root / outputs.EVALUATE_METRICS_JSON, metrics)
        tracking.mlflow.log_metrics({k: v for k, v in metrics.items() if isinstance(v, float)})
        pictures(params, meta, encoder, data.test, spec, root, device)
        for path in REPORTS:
            tracking.mlflow.log_artifact(str(root / path), artifact_path="reports")
    log.info("evaluate: %s", metrics)
    return metrics
