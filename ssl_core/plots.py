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
