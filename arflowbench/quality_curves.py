"""Quality vs images seen: the report's plot of the evaluation points recorded during training.

One panel per quality metric with a direction (FID, accuracy, ...), one line per cell; the seeds
of a cell (runs whose labels agree once the seed axis is dropped) are aggregated into their mean
with a 95% confidence band.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import seaborn as sns

from arflowbench.plots import _STYLE, _figure, _guard, _legend, _save, _slug
from arflowbench.report_summary import t_interval


def quality_points(sub: pd.DataFrame, eval_curves: Mapping[str, list], labels: Mapping[str, str],
                   groups: Mapping[str, str] | None, keys: list[str]) -> pd.DataFrame:
    """Long table: cell, run_id, images_seen, metric, value (ok runs with a curve)."""
    recs = []
    for rid in sub.loc[sub["status"] == "ok", "run_id"]:
        cell = (groups or {}).get(rid) or labels.get(rid, rid)
        for point in eval_curves.get(rid, []):
            for key in keys:
                value = point.metrics.get(key)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    recs.append({"cell": cell, "run_id": rid, "images_seen": point.images_seen,
                                 "metric": key, "value": float(value)})
    return pd.DataFrame(recs, columns=["cell", "run_id", "images_seen", "metric", "value"])


def quality_vs_images(df: pd.DataFrame, displays: Mapping[str, Any], title: str,
                      path: Path) -> Path | None:
    metrics = list(dict.fromkeys(df["metric"]))
    if not metrics:
        return None
    ncols = min(3, len(metrics))  # a grid, so the figure stays readable at page width
    nrows = -(-len(metrics) // ncols)
    fig, axes = _figure(nrows, ncols, width=4.6, height=3.4)
    cells = list(axes.flat)
    for ax in cells[len(metrics):]:
        ax.set_visible(False)
    seeds = df.groupby(["cell", "images_seen", "metric"])["run_id"].nunique().max() > 1
    with sns.axes_style(_STYLE):
        for ax, key in zip(cells, metrics):
            part = df[df["metric"] == key]
            sns.lineplot(data=part, x="images_seen", y="value", hue="cell", marker="o", ax=ax,
                         errorbar=t_interval if seeds else None)
            d = displays.get(key)
            arrow = "" if d is None or d.higher_is_better is None else \
                (" (higher is better)" if d.higher_is_better else " (lower is better)")
            ax.set(xlabel="images seen", ylabel=(d.label if d else key) + arrow)
            _legend(ax, part["cell"].nunique())
        fig.suptitle(title)
    return _save(fig, path)


def matrix_quality_plots(matrix: str, sub: pd.DataFrame, eval_curves: Mapping[str, list],
                         labels: Mapping[str, str], groups: Mapping[str, str] | None,
                         displays: Mapping[str, Any], plot_dir: Path,
                         problems: list[str]) -> list[tuple[str, Path]]:
    """The quality-vs-images-seen figure of one matrix, if any run recorded evaluation points."""
    keys = [k for k, d in displays.items() if d.higher_is_better is not None]
    df = quality_points(sub, eval_curves, labels, groups, keys)
    if df.empty:
        return []
    path = _guard(problems, f"quality vs images seen of {matrix}", quality_vs_images, df,
                  displays, f"{matrix}: quality vs images seen",
                  plot_dir / f"{_slug(matrix)}_quality_vs_images.png")
    band = " (mean and 95% CI over seeds)" if df.groupby(["cell", "images_seen", "metric"])[
        "run_id"].nunique().max() > 1 else ""
    return [(f"{matrix}: quality vs images seen{band}", path)] if path else []
