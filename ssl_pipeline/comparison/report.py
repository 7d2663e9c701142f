"""The comparison's report: reports/method_comparison.csv (one row per method x protocol x label
fraction x seed, one status row per skipped or failed method), a markdown summary and
reports/method_comparison.png (test accuracy vs label fraction, one panel per protocol)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

CSV_NAME = "method_comparison.csv"
PNG_NAME = "method_comparison.png"
MD_NAME = "method_comparison.md"
COLUMNS = ["method", "backbone", "protocol", "label_fraction", "seed", "accuracy", "pretrain_seconds", "feature_rank",
           "status"]
PROTOCOL_TITLES = {"knn": "kNN on frozen features", "linear": "linear probe", "finetune": "fine-tuning"}
BASELINE_STYLE = {"init": ("tab:brown", "-."), "random": ("tab:gray", ":"), "scratch": ("black", "--")}


def build_table(rows: list[dict], order: list[str]) -> pd.DataFrame:
    """Rows in plan order (methods, then the baselines: init when set, random, scratch), each sorted by
    protocol, fraction, seed."""
    table = pd.DataFrame(rows, columns=COLUMNS)
    rank = {m: i for i, m in enumerate(order)}
    table["_rank"] = table["method"].map(lambda m: rank.get(m, len(rank)))
    table["_protocol"] = table["protocol"].map(lambda p: list(PROTOCOL_TITLES).index(p) if p in PROTOCOL_TITLES else -1)
    table = table.sort_values(["_rank", "backbone", "_protocol", "label_fraction", "seed"], kind="stable")
    table = table.drop(columns=["_rank", "_protocol"]).reset_index(drop=True)
    table["seed"] = table["seed"].astype("Int64")   # blank, not NaN, on status rows
    return table


def _cell(acc: pd.Series) -> str:
    if len(acc) == 1:
        return f"{acc.iloc[0]:.3f}"
    return f"{acc.mean():.3f} ({acc.min():.3f}-{acc.max():.3f})"


def markdown(table: pd.DataFrame) -> str:
    """Mean (min-max over seeds) test accuracy per method/backbone/protocol and label fraction,
    then every method that was skipped or failed, with the reason. Feature rank: the effective rank of
    the encoder's validation features (RankMe), low when a method's features collapsed onto few directions."""
    ok = table[table.status == "ok"]
    fractions = sorted(ok["label_fraction"].dropna().unique())
    lines = ["| method | backbone | protocol | pretrain s | feature rank | "
             + " | ".join(f"{f:.0%} labels" for f in fractions) + " |",
             "|" + "---|" * (5 + len(fractions))]
    for (method, backbone, protocol), group in ok.groupby(["method", "backbone", "protocol"], sort=False):
        cells = [_cell(group[group.label_fraction == f]["accuracy"]) if (group.label_fraction == f).any() else "-"
                 for f in fractions]
        seconds, rank = group["pretrain_seconds"].iloc[0], group["feature_rank"].iloc[0]
        rank_text = "-" if pd.isna(rank) else f"{rank:.1f}"
        lines.append(f"| {method} | {backbone} | {protocol} | {seconds:.0f} | {rank_text} | " + " | ".join(cells) + " |")
    others = table[table.status != "ok"]
    if len(others):
        lines += ["", "Not compared:"]
        lines += [f"- {r.method} ({r.backbone}): {r.status}" for r in others.itertuples()]
    return "\n".join(lines)


def plot(table: pd.DataFrame, path: Path, title: str) -> Path:
    """Test accuracy (mean over seeds, band = min..max) vs label fraction: one panel per protocol, one line
    per method (same colour in every panel), baselines dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = table[table.status == "ok"]
    protocols = [p for p in PROTOCOL_TITLES if (ok.protocol == p).any()]
    main_backbone = ok["backbone"].mode().iloc[0] if len(ok) else ""
    fig, axes = plt.subplots(1, max(len(protocols), 1), figsize=(4.3 * max(len(protocols), 1) + 2.2, 4.2), dpi=120,
                             sharey=True, squeeze=False)
    methods = [m for m in dict.fromkeys(ok["method"]) if m not in BASELINE_STYLE]
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    handles: dict[str, object] = {}
    for ax, protocol in zip(axes[0], protocols):
        for (method, backbone), group in ok[ok.protocol == protocol].groupby(["method", "backbone"], sort=False):
            stats = group.groupby("label_fraction")["accuracy"].agg(["mean", "min", "max"]).sort_index()
            x = stats.index.to_numpy() * 100
            colour, style = BASELINE_STYLE.get(method, (colours.get(method), "-"))
            label = method if backbone == main_backbone else f"{method} ({backbone})"
            line, = ax.plot(x, stats["mean"], style, color=colour, marker="s" if backbone != main_backbone else "o",
                            markersize=4, label=label)
            ax.fill_between(x, stats["min"], stats["max"], color=colour, alpha=0.12)
            handles.setdefault(label, line)
        ax.set_xscale("log")
        ticks = sorted(ok["label_fraction"].unique() * 100)
        ax.set_xticks(ticks, [f"{t:g}%" for t in ticks])
        ax.minorticks_off()
        ax.set_title(PROTOCOL_TITLES[protocol], fontsize=10)
        ax.set_xlabel("labeled training images used (%)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("test accuracy")
    fig.suptitle(title, fontsize=10)
    fig.legend(list(handles.values()), list(handles), loc="center right", fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1 - 2.0 / fig.get_figwidth(), 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write(rows: list[dict], order: list[str], out_dir: Path, title: str) -> dict:
    """Write the CSV, PNG and markdown under out_dir; returns {table, markdown, csv, png, md}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = build_table(rows, order)
    table.to_csv(out_dir / CSV_NAME, index=False)
    text = markdown(table)
    (out_dir / MD_NAME).write_text(text + "\n")
    plot(table, out_dir / PNG_NAME, title)
    return {"table": table, "markdown": text, "csv": out_dir / CSV_NAME, "png": out_dir / PNG_NAME,
            "md": out_dir / MD_NAME}


def log_to_run(run_id: str, report: dict) -> None:
    """The report's files and mean accuracies on the parent MLflow run."""
    import time

    from mlflow.entities import Metric

    from ssl_pipeline.tracking import runs as tracking

    client = tracking.client()
    for key in ("csv", "png", "md"):
        client.log_artifact(run_id, str(report[key]), artifact_path="reports")
    ok = report["table"][report["table"].status == "ok"]
    means = ok.groupby(["method", "backbone", "protocol", "label_fraction"], sort=False)["accuracy"].mean()
    now = int(time.time() * 1000)
    metrics = [Metric(f"accuracy.{m}.{b}.{p}.{f:g}", float(acc), now, 0) for (m, b, p, f), acc in means.items()]
    for i in range(0, len(metrics), 500):
        client.log_batch(run_id, metrics=metrics[i:i + 500])
    client.set_tag(run_id, "compare.failed", ",".join(report["table"].loc[report["table"].status.str.startswith(
        "failed"), "method"]) or "none")
