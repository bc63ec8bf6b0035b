"""`arflowbench report`: result rows -> tables (Markdown, LaTeX, HTML), plots and sample grids.

The report only reads rows (``runs.jsonl``, ``bench.jsonl``) and published numbers
(``registry/paper/*.toml``); it never re-runs anything. `summarize_rows` is the pure part (rows in,
pandas DataFrames out) that tests check; `write_report` renders it into ``out_dir``:

- ``report.md`` / ``report.tex``: per matrix a run table, failed runs with their error, a
  mean +- 95% t-interval table over seeds when the matrix has a seed axis, and a sample-quality
  table (FID, KID, precision, recall, accuracy) headed by its feature extractor and sample count;
  the attention benchmark with each backend's crossover against softmax; published numbers.
- ``plots/*.png``: loss curves, throughput, FID vs cfg scale / training steps, attention time and
  memory against S.
- ``index.html``: all of the above on one page; sample grids are copied into ``samples/`` and every
  path is relative, so the folder can be moved or zipped.

Published numbers are shown in their own section, labelled "published (paper)", never in a
measured column.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from arflowbench import plots, quality_curves
from arflowbench import results as store
from arflowbench.paper import default_paper_dir, load_published
from arflowbench.plots import MISSING, render_html, render_latex, render_markdown
from arflowbench.report_bench import (
    _BENCH_CONFIG,
    BASELINE_BACKEND,
    _bench_tables,
    _scalar,
    attention_crossovers,
    timed_rows,
)
from arflowbench.sampling_report import sampling_blocks
from arflowbench.staged_dir import staged_dir

# Metrics of the run table, in display order, with their column labels.
RUN_METRICS = {
    "train_loss_final": "loss (final)", "train_loss_smoothed": "loss (smoothed)",
    "train_images_per_s": "train img/s", "sample_images_per_s": "sample img/s", "nfe": "NFE",
    "peak_memory_mb": "peak mem (MB)", "param_count": "params", "mfu": "MFU",
    "duration_s": "time (s)",
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
    "peak_dtype", "peak_source", "flops_uncounted",
}
# Spec-determined or spread values: not averaged over seeds.
_NOT_AGGREGATED = {"nfe", "param_count", "eval_num_samples", "cfg_scale"}
_SPREAD_SUFFIXES = ("_p20", "_p80")
NO_MATRIX = "(no matrix)"
#: what a report folder holds (`--out` is replaced as a whole, so nothing else may be in it)
REPORT_ENTRIES = ("report.md", "report.tex", "index.html", "plots", "samples")


# ----------------------------------------------------------------------------- summarising rows
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


def aggregate_seeds(runs: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """Mean, 95% CI half-width (Student t, n - 1 dof) and count of every numeric metric over the
    seed axes, one row per combination of the other axes; ok runs only."""
    from scipy import stats

    seed_cols = [a for a in axes if is_seed_axis(a)]
    group_cols = [a for a in axes if a not in seed_cols]
    ok = runs[runs["status"] == "ok"]
    metrics = [m for m in metric_columns(ok) if m not in _NOT_AGGREGATED]
    if ok.empty:
        return pd.DataFrame(columns=[*group_cols, "n_runs"])
    groups = ok.groupby(group_cols, dropna=False, sort=False) if group_cols else [((), ok)]
    out = []
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        rec: dict[str, Any] = dict(zip(group_cols, key, strict=True))
        rec["n_runs"] = len(g)
        for m in metrics:
            vals = pd.to_numeric(g[m], errors="coerce").dropna().to_numpy(float)
            n = len(vals)
            rec[f"{m}_mean"] = vals.mean() if n else math.nan
            rec[f"{m}_ci95"] = (stats.t.ppf(0.975, n - 1) * vals.std(ddof=1) / math.sqrt(n)
                                if n >= 2 else math.nan)
            rec[f"{m}_n"] = n
        out.append(rec)
    return pd.DataFrame(out)


# ----------------------------------------------------------------------------- formatting
_DECIMALS = {**{k: d.decimals for k, d in metric_displays().items()},
             "mfu": 3, "duration_s": 1, "cfg_scale": 2}
_INTEGERS = {"nfe", "eval_num_samples", "n_runs", "S", "N", "dim", "heads", "batch",
             "state_bytes", "crossover_S", "max_S", "resolution"}
_THREE_SIG = {"train_images_per_s", "sample_images_per_s"}


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


def _axis_labels(axes: list[str]) -> dict[str, str]:
    """Short column names for dotted axis keys: ``attention.name`` -> ``attention``,
    ``train.seed`` -> ``seed``; the full key where shortening would collide."""
    def short(a: str) -> str:
        parts = a.removeprefix("axis:").split(".")
        return parts[-2] if parts[-1] == "name" and len(parts) > 1 else parts[-1]

    shorts = [short(a) for a in axes]
    return {a: (s if shorts.count(s) == 1 else a) for a, s in zip(axes, shorts, strict=True)}


def cell_label(row: pd.Series | dict, axes: list[str]) -> str:
    """A run's legend label from its cell: plugin names bare, other axes as ``key=value``."""
    labels = _axis_labels(axes)
    parts = []
    for a in axes:
        v = row.get(a)
        if _missing(v):
            continue
        parts.append(str(v) if a.endswith(".name") else f"{labels[a]}={fmt_axis(v)}")
    return ", ".join(parts) or str(row.get("run_id"))


def _table(df: pd.DataFrame, columns: dict[str, str], axes: list[str] = ()) -> pd.DataFrame:
    """Strings for display: the present ``columns`` (key -> label), each value formatted
    (``axes`` plainly, metrics with their rounding)."""
    cols = {k: v for k, v in columns.items() if k in df.columns}
    return pd.DataFrame({label: [fmt_axis(v) if k in axes else fmt_value(k, v) for v in df[k]]
                         for k, label in cols.items()})


def _present(df: pd.DataFrame, names: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in names.items() if k in df.columns and df[k].notna().any()}


def _runs_table(sub: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    cols = {"run_id": "run", **_axis_labels(axes), "status": "status"}
    if sub["attention_impl"].notna().any():
        cols["attention_impl"] = "attention impl"
    extra = [m for m in metric_columns(sub)
             if m not in RUN_METRICS and m not in QUALITY_METRICS and m not in DETAIL_METRICS]
    return _table(sub, {**cols, **_present(sub, RUN_METRICS), **{m: m for m in extra}}, axes)


def _context(sub: pd.DataFrame, axes: list[str]) -> tuple[str, dict[str, str]]:
    """Evaluation settings: constant ones as header text, varying ones as columns (unless an
    axis already shows them, e.g. ``sample.cfg_scale``)."""
    header, columns = [], {}
    for key, label in _present(sub, EVAL_CONTEXT).items():
        if any(a.split(".")[-1] == key for a in axes):
            continue
        values = sub[key].dropna().unique()
        if len(values) == 1:
            header.append(f"{label}: {fmt_value(key, values[0])}")
        else:
            columns[key] = label
    return ", ".join(header), columns


def _seed_table(agg: pd.DataFrame, axes: list[str], metrics: dict[str, str]) -> pd.DataFrame:
    group = {a: lab for a, lab in _axis_labels(axes).items() if not is_seed_axis(a)}
    out = _table(agg, {**group, "n_runs": "runs"}, axes)
    for m, label in metrics.items():
        if f"{m}_mean" not in agg or agg[f"{m}_mean"].isna().all():
            continue
        out[label] = [fmt_ci(m, mu, h) + ("" if n == runs else f" (n={n})")
                      for mu, h, n, runs in zip(agg[f"{m}_mean"], agg[f"{m}_ci95"], agg[f"{m}_n"],
                                                agg["n_runs"], strict=True)]
    return out


# ----------------------------------------------------------------------------- page content
# The page is a list of blocks (see `arflowbench.plots.Block`) rendered as Markdown, LaTeX and
# HTML, so the three outputs always hold the same tables.
Block = plots.Block


def _matrix_blocks(m: str, s: Summary, results_dir: Path, out_dir: Path,
                   problems: list[str]) -> list[Block]:
    sub = s.runs[s.runs["matrix"] == m]
    axes = s.axes[m]
    labels = {r["run_id"]: cell_label(r, axes) for _, r in sub.iterrows()}
    n_ok = int((sub["status"] == "ok").sum())
    blocks: list[Block] = [("h", 2, f"Matrix: {m}"),
                           ("p", f"{len(sub)} runs: {n_ok} ok, {len(sub) - n_ok} not ok."),
                           ("table", f"Runs of {m}", _runs_table(sub, axes))]
    bad = sub[sub["status"] != "ok"]
    if len(bad):
        blocks += [("p", "Failed runs (first line of the error):"),
                   ("list", [f"{r.run_id} ({labels[r.run_id]}): {r.error or 'no error recorded'}"
                             for r in bad.itertuples()])]
    agg = s.seeds.get(m)
    seed_names = ", ".join(a for a in axes if is_seed_axis(a))
    if agg is not None and len(agg):
        run_metrics = {k: v for k, v in RUN_METRICS.items() if k not in _NOT_AGGREGATED}
        blocks.append(("table", f"{m}: mean ± 95% CI over {seed_names} (t-distribution)",
                       _seed_table(agg, axes, run_metrics)))
    quality = sub[(sub["status"] == "ok")
                  & sub[[c for c in QUALITY_METRICS if c in sub]].notna().any(axis=1)] \
        if any(c in sub for c in QUALITY_METRICS) else sub.iloc[:0]
    if len(quality):
        header, ctx_cols = _context(quality, axes)
        cols = {"run_id": "run", **_axis_labels(axes), **ctx_cols,
                **_present(quality, QUALITY_METRICS)}
        blocks += [("h", 3, f"Sample quality ({header})" if header else "Sample quality"),
                   ("table", f"{m}: sample quality, measured", _table(quality, cols, axes))]
        if agg is not None and len(agg):
            blocks.append(("table", f"{m}: sample quality, mean ± 95% CI over {seed_names}",
                           _seed_table(agg, axes, QUALITY_METRICS)))
        if len(s.published):
            blocks.append(("p", "Published (paper) numbers are listed in their own section "
                                "below; they come from other datasets and scales."))
    # Seeds of one configuration share a colour in the loss plot.
    same = [a for a in axes if not is_seed_axis(a)]
    groups = {rid: cell_label(r, same) + (" (failed)" if r["status"] != "ok" else "")
              for rid, r in sub.set_index("run_id").iterrows()} if same != axes else None
    figs = plots.matrix_plots(m, sub, axes, labels, s.curves, out_dir / "plots", problems,
                              groups)
    figs += quality_curves.matrix_quality_plots(m, sub, s.eval_curves, labels, groups,
                                                metric_displays(), out_dir / "plots", problems)
    blocks += [("img", cap, p.relative_to(out_dir).as_posix()) for cap, p in figs]
    absent: list[str] = []
    gallery = plots.copy_sample_grids(sub, labels, results_dir, out_dir, problems, absent)
    if gallery:
        blocks += [("h", 3, "Sample grids"),
                   ("p", "One row per class, class 0 at the top (the dataset's class order); "
                         "each row shows the images asked of that class."),
                   ("gallery", gallery)]
    if absent:
        blocks += [("h", 3, "Sample grids"),
                   ("p", f"{len(absent)} sample grid(s) are not here: run artifacts "
                         f"({store.ARTIFACTS_DIR}/) are not committed, only rows are. Run the "
                         f"matrix in this results dir to draw them (e.g. {absent[0]}).")]
    return blocks


def _bench_blocks(s: Summary, out_dir: Path, problems: list[str]) -> list[Block]:
    blocks: list[Block] = []
    att = s.bench.get("attention")
    if att is not None and len(att):
        blocks += [("h", 2, "Attention benchmark"),
                   ("p", f"Crossover S: the smallest S from which the backend is faster than "
                         f"{BASELINE_BACKEND} (median time) at every larger S measured; "
                         f"'{MISSING}' means not faster at the largest S.")]
        if len(s.crossovers):
            blocks.append(("table", "Attention: crossover against softmax",
                           _table(s.crossovers, {**{c: c for c in _BENCH_CONFIG}, "mode": "mode",
                                                 "N": "N", "series": "backend", "vs": "vs",
                                                 "crossover_S": "crossover S",
                                                 "max_S": "largest S"})))
        figs = plots.bench_plots(timed_rows(att), s.crossovers, out_dir / "plots", problems,
                                 [c for c in _BENCH_CONFIG if c in att])
        blocks += [("img", cap, p.relative_to(out_dir).as_posix()) for cap, p in figs]
        cols = {c: c for c in ("series", "implementation", "mode", "S", "N", *_BENCH_CONFIG)}
        cols.update({"median_ms": "median (ms)", "p20_ms": "p20 (ms)", "p80_ms": "p80 (ms)",
                     "peak_memory_mb": "peak mem (MB)", "state_mb": "state (MB)",
                     "status": "status", "reason": "reason"})
        if "state_bytes" in att:  # bytes are unreadable at a glance: MB like every memory column
            att = att.assign(state_mb=pd.to_numeric(att["state_bytes"], errors="coerce") / 1e6)
        blocks.append(("table", "Attention: all measurements", _table(att, _present(att, cols)),
                       True))
    if "sampling" in s.bench and {"measure", "variant"} <= set(s.bench["sampling"].columns):
        blocks += sampling_blocks(s.bench["sampling"], out_dir, problems)
    for kind, df in s.bench.items():
        if kind not in ("attention", "sampling"):
            blocks += _other_bench_blocks(kind, df)
    return blocks


#: bench columns that are bookkeeping, not results (the rows keep them)
_BENCH_BOOKKEEPING = ("bench", "kind", "timestamp", "started", "finished")


def _other_bench_blocks(kind: str, df: pd.DataFrame) -> list[Block]:
    """A benchmark without its own section: the columns that vary, the constant ones said once
    above the table; long tables start folded."""
    keep = [c for c in df.columns if c not in _BENCH_BOOKKEEPING and not c.startswith("env")
            and df[c].notna().any()]
    same = [c for c in keep if df[c].astype(str).nunique() == 1 and len(df) > 1]
    vary = [c for c in keep if c not in same]
    blocks: list[Block] = [("h", 2, f"Benchmark: {kind}")]
    if same:
        blocks.append(("p", "Same in every row: " + ", ".join(
            f"{c} = {fmt_value(c, df[c].dropna().iloc[0])}" for c in same) + "."))
    blocks.append(("table", f"Benchmark {kind}", _table(df, {c: c for c in vary}), len(df) > 10))
    return blocks


def _published_blocks(pub: pd.DataFrame) -> list[Block]:
    if pub.empty:
        return []
    cols = {"method": "method", "model": "model", "dataset": "dataset",
            "resolution": "resolution", "cfg_scale": "cfg scale", "sampler": "sampler",
            "training_steps": "training steps", "fid": "FID — published (paper)",
            "source": "source", "note": "note"}
    return [("h", 2, "Published numbers (paper)"),
            ("p", "Quoted from the publications named in 'source'; NOT measured by arflowbench. "
                  "Shown for orientation only: the measured runs above use other datasets, "
                  "model sizes and sample counts."),
            ("table", "Published (paper) FID, not measured here",
             _table(pub, _present(pub, cols)))]


def build_blocks(s: Summary, results_dir: Path, out_dir: Path) -> list[Block]:
    """The whole report as blocks. Side effects: writes plots, copies sample grids, and adds
    the warnings met on the way (missing grids, failed plots) to ``s.problems``."""
    problems = list(s.problems)
    body: list[Block] = []
    if s.runs.empty and not s.bench:
        body.append(("p", f"No run rows yet in {results_dir / store.RUNS_FILE}: run a matrix "
                          "(arflowbench run ...) and report again."))
    for m in s.axes:
        body += _matrix_blocks(m, s, results_dir, out_dir, problems)
    body += _bench_blocks(s, out_dir, problems) + _published_blocks(s.published)
    n_ok = int((s.runs["status"] == "ok").sum()) if len(s.runs) else 0
    head: list[Block] = [
        ("h", 1, "arflowbench report"),
        ("p", f"Generated {store.now_iso()} from {results_dir}: {len(s.runs)} runs "
              f"({n_ok} ok) in {len(s.axes)} matri{'x' if len(s.axes) == 1 else 'ces'}, "
              f"{sum(len(d) for d in s.bench.values())} benchmark rows.")]
    if problems:
        head += [("h", 2, "Warnings"), ("list", problems)]
    s.problems = problems
    return head + body


def load_results(results_dir: Path) -> store.Loaded:
    """Run and bench records, and one warning per unreadable row, from ``results_dir``."""
    return store.load(results_dir / store.RUNS_FILE, results_dir / store.BENCH_FILE)


def write_report(results_dir: Path, out_dir: Path, paper_dir: Path | None = None) -> Path:
    """Write report.md, report.tex, index.html, plots/ and samples/ under ``out_dir`` from the
    rows in ``results_dir``; returns the path of report.md. ``paper_dir`` defaults to the
    shipped ``registry/paper`` (`arflowbench.registry_files`). Warnings (corrupt rows, missing
    files) go to stderr and into the report; nothing is re-run. The folder is built beside
    ``out_dir`` and swapped in whole (`staged_dir`): a failed or killed report leaves the
    previous one as it was."""
    results_dir, out_dir = Path(results_dir), Path(out_dir)
    loaded = load_results(results_dir)
    published, paper_problems = load_published(paper_dir if paper_dir is not None
                                                else default_paper_dir())
    summary = summarize_rows(loaded.runs, loaded.bench, published)
    summary.problems = loaded.problems + paper_problems + summary.problems
    with staged_dir(out_dir, REPORT_ENTRIES) as stage:  # a killed report leaves the old one
        blocks = build_blocks(summary, results_dir, stage)
        for p in summary.problems:
            print(p, file=sys.stderr)
        (stage / "report.md").write_text(render_markdown(blocks))
        (stage / "report.tex").write_text(render_latex(blocks))
        (stage / "index.html").write_text(render_html(blocks))
    return out_dir / "report.md"
