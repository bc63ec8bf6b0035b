"""The pure part of `arflowbench report`: result records in, pandas DataFrames out (`Summary`).

`summarize_rows` keeps the latest row of every run, finds each matrix's axis columns, averages
seed repeats (mean and a 95% t-interval, `aggregate_seeds`) and tabulates the benchmark rows
(`report_bench`). Nothing here formats a value or writes a file: `report_format` formats,
`report` builds the page. Split from `report.py`, which re-exports these names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from arflowbench import results as store
from arflowbench.report_bench import _bench_tables, _scalar, attention_crossovers

# Metrics of the run table, in display order, with their column labels.
RUN_METRICS = {
    "train_loss_final": "loss (final)", "train_loss_smoothed": "loss (smoothed)",
    "train_images_per_s": "train img/s", "sample_images_per_s": "sample img/s", "nfe": "NFE",
    "peak_memory_mb": "peak mem (MB)", "train_peak_memory_mb": "train peak mem (MB)",
    "param_count": "params", "mfu": "MFU", "duration_s": "time (s)",
}


def metric_displays() -> dict[str, Any]:
    """key -> `Display` of every quality value a registered metric plugin declares (built-in
    and contributed, in registry order): the report's quality columns come from here."""
    from arflowbench.errors import ArflowbenchError
    from arflowbench.plugins import METRIC

    classes = []
    for name in METRIC.names():
        try:
            classes.append(METRIC.load(name))
        except ArflowbenchError:  # a broken plugin: its columns show as plain metrics
            continue
    out: dict[str, Any] = {}
    for cls in sorted(classes, key=lambda c: (getattr(c, "display_order", 100), c.name)):
        out.update({k: d for k, d in cls.display.items() if k not in out})
    return out


QUALITY_METRICS = {k: d.label for k, d in metric_displays().items()}
# Settings recorded with the evaluation: in the table header when constant, else a column.
EVAL_CONTEXT = {
    "feature_extractor": "feature extractor", "eval_num_samples": "samples",
    "sampler": "sampler", "cfg_scale": "cfg scale",
}
# Recorded in every row for provenance, too detailed for the run table (rows keep them).
DETAIL_METRICS = {
    "classifier_test_accuracy", "extractor_version", "kid_subset_size", "kid_subsets",
    "matmul_peak_flops", "reference_num", "sample_image_nfe_per_s", "train_achieved_flops",
    "train_flops_per_step", "resumed_from_step", "classifier_version",
    "peak_dtype", "peak_source", "flops_uncounted", "grad_accum", "world_size",
    "train_steps_timed",
}
# Spec-determined or spread values: not averaged over seeds.
NOT_AGGREGATED = {"nfe", "param_count", "eval_num_samples", "cfg_scale"}
_SPREAD_SUFFIXES = ("_p20", "_p80")
NO_MATRIX = "(no matrix)"


@dataclass
class Summary:
    """Everything the report shows, as DataFrames (no formatting)."""

    #: one row per run_id (its latest row): matrix, run_id, status, axis columns, metrics, ...
    runs: pd.DataFrame
    #: matrix -> its axis columns (the cell keys), in first-seen order
    axes: dict[str, list[str]]
    #: matrix -> mean / 95% CI half-width / count over seed axes (matrices with a seed axis)
    seeds: dict[str, pd.DataFrame]
    #: run_id -> [[step, loss], ...]
    curves: dict[str, list]
    #: run_id -> [EvalPoint, ...] (quality vs images seen)
    eval_curves: dict[str, list]
    #: bench kind -> its rows (latest per configuration)
    bench: dict[str, pd.DataFrame]
    #: attention backends' crossover S against softmax, one row per (config, mode, N, series)
    crossovers: pd.DataFrame
    #: published (paper) numbers
    published: pd.DataFrame
    #: warnings about skipped rows or files
    problems: list[str] = field(default_factory=list)


def is_seed_axis(key: str) -> bool:
    """Axes named ``seed`` or ``*.seed`` are repeats, aggregated over in the seed tables."""
    return key == "seed" or key.endswith(".seed")


def _first_line(text: Any) -> str | None:
    if not text:
        return None
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    return lines[0] if lines else None


def _run_record(row: store.RunRecord, reserved: set[str]) -> dict[str, Any]:
    rec: dict[str, Any] = {"matrix": row.matrix or NO_MATRIX, "run_id": row.run_id,
                           "status": row.status, "train_id": row.train_id}
    for key, value in row.cell.items():
        rec[key if key not in reserved else f"axis:{key}"] = _scalar(value)
    for key, value in row.metrics.items():
        rec.setdefault(key, _scalar(value))
    # Fall back on the spec for settings the FID plots need when metrics lack them.
    if rec.get("cfg_scale") is None:
        rec["cfg_scale"] = row.setting("sample.cfg_scale")
    rec["train_steps"] = row.setting("train.steps")
    att = row.plugins.get("attention")
    rec["attention_impl"] = att.implementation if att and att.implementation else None
    rec["duration_s"] = row.duration_s
    rec["error"] = _first_line(row.error)
    rec["samples"] = row.artifacts.get("samples")
    rec["finished"] = row.finished
    return rec


_RESERVED = {"matrix", "run_id", "train_id", "status", "train_steps", "attention_impl", "duration_s", "error",
             "samples", "finished", *RUN_METRICS, *QUALITY_METRICS, *EVAL_CONTEXT}


def _numeric(df: pd.DataFrame, skip: set[str]) -> pd.DataFrame:
    """Convert columns whose non-null values are all numbers (not bools) to float."""
    for col in df.columns:
        if col in skip:
            continue
        vals = df[col].dropna()
        if len(vals) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                             for v in vals):
            df[col] = pd.to_numeric(df[col], errors="coerce")
    return df


def summarize_rows(run_rows: list[store.RunRecord], bench_rows: list[store.BenchRecord] = (),
                   published: pd.DataFrame | None = None) -> Summary:
    """Turn records into DataFrames. Later rows for a run_id supersede earlier ones in the same
    matrix (a failed run rerun ok); the run keeps its first position so tables stay stable
    across reruns. One run recorded under two matrices (groups) shows in both."""
    problems: list[str] = []
    latest: dict[tuple[str, str], store.RunRecord] = {}
    for row in run_rows:
        latest[(row.matrix, row.run_id)] = row
    axes: dict[str, list[str]] = {}
    for row in latest.values():
        cols = axes.setdefault(row.matrix or NO_MATRIX, [])
        for key in row.cell:
            col = key if key not in _RESERVED else f"axis:{key}"
            if col not in cols:
                cols.append(col)
    for m, cols in axes.items():  # rows store keys sorted; seeds go last as the repeat axis
        axes[m] = [c for c in cols if not is_seed_axis(c)] + [c for c in cols if is_seed_axis(c)]
    runs = pd.DataFrame([_run_record(r, _RESERVED) for r in latest.values()])
    if not runs.empty:
        runs = _numeric(runs, {"matrix", "run_id", "status"} | {a for v in axes.values()
                                                                   for a in v})
    curves = {r.run_id: r.loss_curve for r in latest.values()}
    eval_curves = {r.run_id: r.eval_curve for r in latest.values() if r.eval_curve}
    seeds = {m: aggregate_seeds(runs[runs["matrix"] == m], a) for m, a in axes.items()
             if any(is_seed_axis(x) for x in a)}
    bench = _bench_tables(bench_rows, problems)
    crossovers = attention_crossovers(bench.get("attention", pd.DataFrame()))
    return Summary(runs=runs, axes=axes, seeds=seeds, curves=curves, eval_curves=eval_curves,
                   bench=bench,
                   crossovers=crossovers,
                   published=published if published is not None else pd.DataFrame(),
                   problems=problems)


def metric_columns(runs: pd.DataFrame) -> list[str]:
    """Numeric metric columns with values in ``runs``: known ones first, then any others
    (not axes, not the p20/p80 spread columns that only feed plot whiskers)."""
    def numeric(c: str) -> bool:
        col = runs[c]
        return (pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)
                and col.notna().any())

    known = [c for c in (*RUN_METRICS, *QUALITY_METRICS) if c in runs.columns and numeric(c)]
    others = [c for c in runs.columns if c not in _RESERVED and c != "seed" and "." not in c
              and not c.startswith("axis:") and not c.endswith(_SPREAD_SUFFIXES) and numeric(c)]
    return known + others


def _seed_groups(runs: pd.DataFrame, axes: list[str]):
    """(columns of the non-seed axes, ok runs, [(those axes' values as a dict, the group's runs)])
    in first-seen order: the configurations whose seeds are repeats of each other."""
    group_cols = [a for a in axes if not is_seed_axis(a)]
    ok = runs[runs["status"] == "ok"]
    if ok.empty:
        return group_cols, ok, []
    grouped = ok.groupby(group_cols, dropna=False, sort=False) if group_cols else [((), ok)]
    groups = [(dict(zip(group_cols, k if isinstance(k, tuple) else (k,), strict=True)), g)
              for k, g in grouped]
    return group_cols, ok, groups


def _values(g: pd.DataFrame, metric: str):
    """The metric's numeric values in `g` (missing and non-numeric dropped), float array."""
    return pd.to_numeric(g[metric], errors="coerce").dropna().to_numpy(float)


def t_half_width(vals: Any) -> float:
    """Half-width of the 95% CI of the mean of `vals` (Student t, n - 1 dof); NaN below 2."""
    from scipy import stats

    vals = pd.Series(vals, dtype=float).dropna()
    n = len(vals)
    if n < 2:
        return math.nan
    return stats.t.ppf(0.975, n - 1) * vals.std(ddof=1) / math.sqrt(n)


def t_interval(vals: Any) -> tuple[float, float]:
    """The 95% Student-t interval of the mean of `vals`, (low, high): the seed bands of the
    report's plots, so that they match its tables (seaborn's ("ci", 95) would bootstrap)."""
    mean, half = pd.Series(vals, dtype=float).mean(), t_half_width(vals)
    return (mean, mean) if math.isnan(half) else (mean - half, mean + half)


def aggregate_seeds(runs: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """Mean, 95% CI half-width (Student t, n - 1 dof) and count of every numeric metric over the
    seed axes, one row per combination of the other axes; ok runs only."""
    group_cols, ok, groups = _seed_groups(runs, axes)
    metrics = [m for m in metric_columns(ok) if m not in NOT_AGGREGATED]
    if ok.empty:
        return pd.DataFrame(columns=[*group_cols, "n_runs"])
    out = []
    for key, g in groups:
        rec: dict[str, Any] = {**key, "n_runs": len(g)}
        for m in metrics:
            vals = _values(g, m)
            n = len(vals)
            rec[f"{m}_mean"] = vals.mean() if n else math.nan
            rec[f"{m}_ci95"] = t_half_width(vals)
            rec[f"{m}_n"] = n
        out.append(rec)
    return pd.DataFrame(out)


def welch_difference(a: Any, b: Any) -> tuple[float, float]:
    """(mean(b) - mean(a), 95% CI half-width) with Welch's t (unequal variances); the half-width
    is NaN unless both sides have two or more values."""
    import numpy as np
    from scipy import stats

    a, b = np.asarray(a, float), np.asarray(b, float)
    if not len(a) or not len(b):
        return math.nan, math.nan
    diff = b.mean() - a.mean()
    if len(a) < 2 or len(b) < 2:
        return diff, math.nan
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return diff, 0.0
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return diff, stats.t.ppf(0.975, dof) * se


def differences_vs_first(runs: pd.DataFrame, axes: list[str],
                         metrics: list[str]) -> pd.DataFrame:
    """Each configuration's seeds against the first configuration's (the matrix's first axis
    values): one row per other configuration with ``<metric>_diff`` and ``<metric>_ci95``
    (Welch); empty unless seeds repeat and there are two configurations or more."""
    group_cols, ok, groups = _seed_groups(runs, axes)
    if len(group_cols) == len(axes) or len(groups) < 2:  # no seed axis, or one configuration
        return pd.DataFrame()
    (_, base), out = groups[0], []
    for key, g in groups[1:]:
        rec: dict[str, Any] = dict(key)
        for m in (m for m in metrics if m in ok):
            rec[f"{m}_diff"], rec[f"{m}_ci95"] = welch_difference(_values(base, m),
                                                                  _values(g, m))
        out.append(rec)
    return pd.DataFrame(out)
