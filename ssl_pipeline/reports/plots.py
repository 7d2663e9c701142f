"""Pictures written under reports/ and logged to MLflow (matplotlib, headless)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def label_efficiency_plot(table: pd.DataFrame, path: Path, title: str = "Label efficiency") -> Path:
    """Accuracy vs label fraction, one line per (init, protocol); band = min..max over seeds."""
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for (method, init, protocol), group in table.groupby(["method", "init", "protocol"], sort=True):
        stats = group.groupby("label_fraction")["accuracy"].agg(["mean", "min", "max"]).sort_index()
        x = stats.index.to_numpy() * 100
        style = "-" if init == "ssl" else "--"
        line, = ax.plot(x, stats["mean"], style, marker="o", label=f"{method} / {protocol}")
        ax.fill_between(x, stats["min"], stats["max"], color=line.get_color(), alpha=0.15)
    ax.set_xscale("log")
    ax.set_xlabel("labeled training images used (%)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def confusion_matrix_plot(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str], path: Path, title: str) -> Path:
    n = len(classes)
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    fig, ax = plt.subplots(figsize=(1.2 + 0.5 * n, 1.0 + 0.5 * n), dpi=120)
    ax.imshow(cm, cmap="Blues")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xticks(range(n), classes, rotation=45, fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def training_curves_plot(curve: pd.DataFrame, path: Path, title: str) -> Path:
    """Per-epoch pretraining loss and kNN monitor accuracy (from plots/pretrain.csv)."""
    fig, ax1 = plt.subplots(figsize=(6.5, 4), dpi=120)
    ax1.plot(curve["epoch"], curve["loss"], "-o", color="tab:blue", label="loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("SSL loss", color="tab:blue")
    ax2 = ax1.twinx()
    knn = curve.dropna(subset=["knn_accuracy"])   # the monitor may run only every pretrain.knn_every epochs
    ax2.plot(knn["epoch"], knn["knn_accuracy"], "-s", color="tab:orange", label="kNN accuracy (val)")
    ax2.set_ylabel("kNN accuracy (val)", color="tab:orange")
    ax1.set_title(title)
    ax1.grid(True, alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def embedding_map_plot(features: np.ndarray, labels: np.ndarray, classes: list[str], path: Path, title: str,
                       seed: int = 0) -> Path:
    """2-D t-SNE of encoder features, coloured by class."""
    from sklearn.manifold import TSNE

    perplexity = float(min(30, max(2, (len(features) - 1) // 3)))
    xy = TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(features)
    fig, ax = plt.subplots(figsize=(6, 6), dpi=120)
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for c, name in enumerate(classes):
        sel = labels == c
        ax.scatter(xy[sel, 0], xy[sel, 1], s=6, color=cmap(c % cmap.N), label=name)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    ax.legend(markerscale=3, fontsize=7, loc="best", ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def view_grid_plot(originals: np.ndarray, views: list[np.ndarray], path: Path, title: str) -> Path:
    """Rows: images; first column the original, then one column per augmented view. Arrays: [N, C, H, W] in [0, 1].
    Multi-band images (C not 1 or 3) show their first band in gray."""
    n, cols = originals.shape[0], 1 + len(views)
    fig, axes = plt.subplots(n, cols, figsize=(1.3 * cols, 1.3 * n), dpi=120, squeeze=False)
    for i in range(n):
        for j, img in enumerate([originals[i]] + [v[i] for v in views]):
            ax = axes[i][j]
            arr = np.clip(np.transpose(img if img.shape[0] in (1, 3) else img[:1], (1, 2, 0)), 0, 1)
            ax.imshow(arr[..., 0] if arr.shape[-1] == 1 else arr, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title("original" if j == 0 else f"view {j}", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
