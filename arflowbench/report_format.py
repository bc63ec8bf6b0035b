"""Formatting for `arflowbench report`: a value, an axis value or a mean with its interval as
displayed (rounding chosen per metric, missing values as a dash), legend labels of cells, and
DataFrames of display strings. Split from `report.py`, which re-exports the public names.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from arflowbench.plots import MISSING
from arflowbench.report_summary import metric_displays

_DECIMALS = {**{k: d.decimals for k, d in metric_displays().items()},
             "mfu": 3, "duration_s": 1, "cfg_scale": 2, "load_avg_1m": 2, "gflop": 1}
_INTEGERS = {"nfe", "eval_num_samples", "n_runs", "S", "N", "dim", "heads", "batch",
             "state_bytes", "crossover_S", "max_S", "resolution", "threads"}
_THREE_SIG = {"train_images_per_s", "sample_images_per_s", "train_images_per_s_p20",
              "train_images_per_s_p80"}


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA


def _decimals(metric: str, v: float) -> int:
    if metric in _DECIMALS:
        return _DECIMALS[metric]
    if metric in _INTEGERS or v == 0 or not math.isfinite(v):
        return 0
    # Significant digits without exponent notation: 3 for throughputs, 4 otherwise.
    sig = 3 if metric in _THREE_SIG else 4
    return min(8, max(0, sig - 1 - math.floor(math.log10(abs(v)))))


def fmt_value(metric: str, v: Any) -> str:
    """One cell of a displayed table: rounding chosen per metric, missing values as a dash."""
    if _missing(v):
        return MISSING
    if isinstance(v, str) and v.startswith("[") and v.endswith("]"):
        return v[1:-1] or MISSING  # a list (canonical JSON) reads as its items
    if isinstance(v, (str, bool)) or not isinstance(v, (int, float, np.number)):
        return str(v)
    if isinstance(v, (int, np.integer)) and metric != "param_count":
        return str(int(v))
    v = float(v)
    if metric == "param_count":
        for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
            if abs(v) >= div:
                return f"{v / div:.2f}{unit}"
        return f"{v:.0f}"
    if metric in _INTEGERS and v.is_integer():
        return f"{int(v)}"
    return f"{v:.{_decimals(metric, v)}f}"


def fmt_axis(v: Any) -> str:
    """An axis value as written in the matrix (no metric rounding; 2.0 read back as 2)."""
    if _missing(v):
        return MISSING
    if isinstance(v, (float, np.floating)):
        return str(int(v)) if float(v).is_integer() else f"{v:g}"
    return str(v)


def fmt_ci(metric: str, mean: float, half: float) -> str:
    """``mean ± half`` rounded alike; the mean alone when there is a single value."""
    if _missing(mean):
        return MISSING
    d = _decimals(metric, float(mean))
    return f"{mean:.{d}f}" + ("" if _missing(half) else f" ± {half:.{d}f}")


def axis_labels(axes: list[str]) -> dict[str, str]:
    """Short column names for dotted axis keys: ``attention.name`` -> ``attention``,
    ``train.seed`` -> ``seed``; the full key where shortening would collide."""
    def short(a: str) -> str:
        parts = a.removeprefix("axis:").split(".")
        return parts[-2] if parts[-1] == "name" and len(parts) > 1 else parts[-1]

    shorts = [short(a) for a in axes]
    return {a: (s if shorts.count(s) == 1 else a) for a, s in zip(axes, shorts, strict=True)}


def cell_label(row: pd.Series | dict, axes: list[str]) -> str:
    """A run's legend label from its cell: plugin names bare, other axes as ``key=value``."""
    labels = axis_labels(axes)
    parts = []
    for a in axes:
        v = row.get(a)
        if _missing(v):
            continue
        parts.append(str(v) if a.endswith(".name") else f"{labels[a]}={fmt_axis(v)}")
    return ", ".join(parts) or str(row.get("run_id"))


def display_table(df: pd.DataFrame, columns: dict[str, str], axes: list[str] = ()) -> pd.DataFrame:
    """Strings for display: the present ``columns`` (key -> label), each value formatted
    (``axes`` plainly, metrics with their rounding)."""
    cols = {k: v for k, v in columns.items() if k in df.columns}
    return pd.DataFrame({label: [fmt_axis(v) if k in axes else fmt_value(k, v) for v in df[k]]
                         for k, label in cols.items()})


def present_columns(df: pd.DataFrame, names: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in names.items() if k in df.columns and df[k].notna().any()}

