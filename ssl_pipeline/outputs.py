"""Where every stage's outputs live in the workspace (relative to its root): the one list the
stages, the flows, registration, export and predict read. dvc.yaml names the same paths as the
stages' outs; tests/pipeline/test_dvc_yaml.py keeps the two in step."""
from __future__ import annotations

from pathlib import Path

# prepare (beside data.prepared_dir, which params.yaml names)
QUARANTINE_CSV = Path("reports/quarantine.csv")
LEAKAGE_CSV = Path("reports/leakage.csv")
# pretrain
ENCODER_PT = Path("models/encoder.pt")
ENCODER_JSON = Path("models/encoder.json")
PRETRAIN_METRICS_JSON = Path("metrics/pretrain.json")
CURVE_CSV = Path("plots/pretrain.csv")
# finetune
CLASSIFIER_DIR = Path("models/classifiers")
INDEX_CSV = CLASSIFIER_DIR / "index.csv"
# evaluate
TABLE_CSV = Path("reports/label_efficiency.csv")
PLOT_PNG = Path("reports/label_efficiency.png")
CONFUSION_PNG = Path("reports/confusion_matrix.png")
EMBEDDING_PNG = Path("reports/embedding_map.png")
VIEWS_PNG = Path("reports/augmented_views.png")
CURVES_PNG = Path("reports/training_curves.png")
EVALUATE_METRICS_JSON = Path("metrics/evaluate.json")
CLASSIFIER_PT = Path("models/classifier.pt")
CLASSIFIER_JSON = Path("models/classifier.json")
# not DVC outputs: which MLflow run logged each model output (run ids differ on every run, so they stay
# out of what dvc.lock hashes)
LOGGED_MODELS_JSON = Path("models/logged_models.json")
# not DVC outputs: crash-safe state, removed once a result is recorded
PRETRAIN_CHECKPOINT_DIR = Path("checkpoints/pretrain")
DISTRIBUTED_HANDOFF_DIR = PRETRAIN_CHECKPOINT_DIR / "dist"   # shared by every node of a job
COMPARE_CHECKPOINT_DIR = Path("checkpoints/compare")
# not DVC outputs: pretrain.init's weights fetched from MLflow or torchvision, named by their SHA-256 (git-ignored)
INIT_WEIGHTS_DIR = Path(".ssl-pipeline/init")
# a pipeline run whose --set overrides change what a stage reads runs in RUNS_DIR/<digest> (run_workspace.py)
RUNS_DIR = Path(".dvc/tmp/ssl-runs")


def user_workspace(root: Path) -> Path:
    """The workspace a run workspace (RUNS_DIR/<digest>) belongs to, else `root`: where a user's own files
    named by a relative path in params (pretrain.init) are."""
    parts, here = RUNS_DIR.parts, Path(root).resolve().parts
    if len(here) > len(parts) + 1 and here[-1 - len(parts):-1] == parts:
        return Path(*here[:-1 - len(parts)])
    return Path(root)
