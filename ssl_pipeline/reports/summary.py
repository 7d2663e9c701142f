"""Human-readable summaries of the result tables (terminal, Prefect artifacts, MLflow)."""
from __future__ import annotations

import pandas as pd


def label_efficiency_markdown(table: pd.DataFrame) -> str:
    """Mean (min-max over seeds) test accuracy: rows = method/init/protocol, columns = label fraction."""
    def cell(acc: pd.Series) -> str:
        if len(acc) == 1:
            return f"{acc.iloc[0]:.3f}"
        return f"{acc.mean():.3f} ({acc.min():.3f}-{acc.max():.3f})"

    fractions = sorted(table["label_fraction"].unique())
    header = "| method | init | protocol | " + " | ".join(f"{f:.0%} labels" for f in fractions) + " |"
    lines = [header, "|" + "---|" * (3 + len(fractions))]
    for (method, init, protocol), group in table.groupby(["method", "init", "protocol"], sort=True):
        cells = [cell(group[group.label_fraction == f]["accuracy"]) if (group.label_fraction == f).any() else "-"
                 for f in fractions]
        lines.append(f"| {method} | {init} | {protocol} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
