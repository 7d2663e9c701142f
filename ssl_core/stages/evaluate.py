"""evaluate: test-split accuracy for every (init, protocol, label fraction, seed) cell.

Outputs: reports/label_efficiency.csv + .png, reports/confusion_matrix.png, metrics/evaluate.json
(headline numbers, DVC metrics), models/classifier.pt + .json (the best SSL classifier by val accuracy,
logged as an MLflow model; registration happens in the flow's register step).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ssl_core.config import Params
from ssl_core.data.cache import atomic_torch_save, load_fractions, load_meta, load_split
from ssl_core.evaluation import accuracy, extract_features, knn_predict
from ssl_core.models import Classifier
from ssl_core.progress import Progress, log
from ssl_core.stages.common import dataset_infos, setup_torch, write_json
from ssl_core.stages.finetune import CLASSIFIER_DIR, INDEX_CSV, load_encoder
from ssl_core.stages.pretrain import build_encoder

TABLE_CSV = Path("reports/label_efficiency.csv")
PLOT_PNG = Path("reports/label_efficiency.png")
CONFUSION_PNG = Path("reports/confusion_matrix.png")
EMBEDDING_PNG = Path("reports/embedding_map.png")
VIEWS_PNG = Path("reports/augmented_views.png")
CURVES_PNG = Path("reports/training_curves.png")
METRICS_JSON = Path("metrics/evaluate.json")
CLASSIFIER_PT = Path("models/classifier.pt")
CLASSIFIER_JSON = Path("models/classifier.json")
COLUMNS = ["method", "init", "protocol", "label_fraction", "seed", "accuracy"]


def knn_rows(method: str, encoder, train, test, fractions: dict, num_classes: int, k: int, device,
             init: str) -> list[dict]:
    train_f = extract_features(encoder, train.images, device)
    test_f = extract_features(encoder, test.images, device)
    rows = []
    for frac, seeds in fractions.items():
        for seed, idx in seeds.items():
            idx_t = torch.as_tensor(idx, dtype=torch.long)
            pred = knn_predict(train_f[idx_t], train.labels[idx_t], test_f, num_classes, k)
            rows.append({"method": method, "init": init, "protocol": "knn", "label_fraction": float(frac),
                         "seed": int(seed), "accuracy": (pred == test.labels).float().mean().item()})
    return rows


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


def pictures(params: Params, meta: dict, encoder, test, spec: dict, root: Path, device) -> None:
    """Embedding map of the test set, the method's augmented views, the pretraining curves."""
    from ssl_core.plots import embedding_map_plot, training_curves_plot, view_grid_plot
    from ssl_core.stages.pretrain import CURVE_CSV, build_method

    n = min(len(test), 1000)
    feats = extract_features(encoder, test.images[:n], device).numpy()
    embedding_map_plot(feats, test.labels[:n].numpy(), meta["classes"], root / EMBEDDING_PNG,
                       f"t-SNE of {spec['method']} encoder features, test split", seed=params.seed)
    method = build_method(params, meta)
    sample = test.images[:: max(len(test) // 6, 1)][:6]
    views = method.example_views(sample, torch.Generator().manual_seed(params.seed))
    view_grid_plot(sample.float().numpy() / 255, [v.float().numpy() for v in views], root / VIEWS_PNG,
                   f"{spec['method']}: what the encoder sees during pretraining")
    curve = pd.read_csv(root / CURVE_CSV)
    training_curves_plot(curve, root / CURVES_PNG, f"{spec['method']} pretraining ({spec['backbone']})")


def run(params: Params, root: Path = Path(".")) -> dict:
    from ssl_core import tracking
    from ssl_core.model_logging import log_torch_model
    from ssl_core.plots import confusion_matrix_plot, label_efficiency_plot

    d = params.data
    prepared = root / d.prepared_dir
    meta = load_meta(prepared)
    train, test = load_split(prepared, "train"), load_split(prepared, "test")
    fractions = load_fractions(prepared)
    device = setup_torch(params.pretrain.device)
    encoder, spec = load_encoder(root)
    index = pd.read_csv(root / INDEX_CSV)
    method = params.pretrain.method
    with tracking.stage_run("evaluate", params, dataset_infos(root, d.raw_dir, d.prepared_dir), root):
        rows = knn_rows(method, encoder.to(device), train, test, fractions, meta["num_classes"],
                        params.evaluate.knn_k, device, init="ssl")
        torch.manual_seed(params.seed)
        rows += knn_rows("random", build_encoder(spec).to(device), train, test, fractions,
                         meta["num_classes"], params.evaluate.knn_k, device, init="scratch")
        accs = []
        bar = Progress(len(index), "evaluate")
        for i, cell in enumerate(index.itertuples()):
            model = Classifier(build_encoder(spec), meta["num_classes"])
            model.load_state_dict(torch.load(root / CLASSIFIER_DIR / cell.file, weights_only=True))
            acc = accuracy(model.to(device), test, device)
            accs.append(acc)
            rows.append({"method": method if cell.init == "ssl" else "scratch", "init": cell.init,
                         "protocol": cell.protocol, "label_fraction": cell.label_fraction, "seed": cell.seed,
                         "accuracy": acc})
            bar.update(i + 1)
        bar.close()
        table = pd.DataFrame(rows, columns=COLUMNS).sort_values(["init", "protocol", "label_fraction", "seed"])
        (root / TABLE_CSV).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(root / TABLE_CSV, index=False)
        label_efficiency_plot(table, root / PLOT_PNG, f"Label efficiency: {method} vs scratch ({spec['backbone']})")
        metrics = headline(table)

        index = index.assign(test_accuracy=accs)
        best = index[(index.init == "ssl") & (index.label_fraction == index.label_fraction.max())]
        best = best.sort_values(["val_accuracy", "protocol"], ascending=[False, True]).iloc[0]
        model = Classifier(build_encoder(spec), meta["num_classes"])
        model.load_state_dict(torch.load(root / CLASSIFIER_DIR / best.file, weights_only=True))
        model.eval()
        atomic_torch_save(model.state_dict(), root / CLASSIFIER_PT)
        with torch.no_grad():
            pred = torch.cat([model(test.images[i:i + 512].float() / 255).argmax(1)
                              for i in range(0, len(test), 512)]).numpy()
        confusion_matrix_plot(test.labels.numpy(), pred, meta["classes"], root / CONFUSION_PNG,
                              f"Best classifier ({best.protocol}, {best.label_fraction:g} labels): "
                              f"test acc {best.test_accuracy:.3f}")
        metrics.update(best_classifier_test_accuracy=round(float(best.test_accuracy), 4),
                       best_classifier_protocol=best.protocol)
        example = test.images[:2].float() / 255
        model_uri = log_torch_model(model, example, name="classifier", metadata={"classes": meta["classes"]})
        run_id = tracking.mlflow.active_run().info.run_id
        write_json(root / CLASSIFIER_JSON, {**spec, "num_classes": meta["num_classes"], "classes": meta["classes"],
                                             "protocol": best.protocol, "label_fraction": float(best.label_fraction),
                                             "val_accuracy": float(best.val_accuracy),
                                             "test_accuracy": float(best.test_accuracy),
                                             "run_id": run_id, "model_uri": model_uri})
        write_json(root / METRICS_JSON, metrics)
        tracking.mlflow.log_metrics({k: v for k, v in metrics.items() if isinstance(v, float)})
        pictures(params, meta, encoder, test, spec, root, device)
        for path in (TABLE_CSV, PLOT_PNG, CONFUSION_PNG, EMBEDDING_PNG, VIEWS_PNG, CURVES_PNG):
            tracking.mlflow.log_artifact(str(root / path), artifact_path="reports")
    log.info("evaluate: %s", metrics)
    return metrics
