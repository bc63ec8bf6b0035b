"""`arflowbench report`: result rows -> tables (Markdown, LaTeX, HTML), plots and sample grids.

The report only reads rows (``runs.jsonl``, ``bench.jsonl``) and published numbers
(``registry/paper/*.toml``); it never re-runs anything. Three modules share the work:
`report_summary` is the pure part (rows in, pandas DataFrames out: `summarize_rows`, `Summary`)
that tests check, `report_format` turns values into display strings, and this module builds the
page as blocks and renders it into ``out_dir`` (`write_report`):

- ``report.md`` / ``report.tex``: per matrix a run table, failed runs with their error, a
  mean +- 95% t-interval table over seeds when the matrix has a seed axis, and a sample-quality
  table (FID, KID, precision, recall, accuracy) headed by its feature extractor and sample count;
  the attention benchmark with each backend's crossover against softmax; published numbers.
- ``plots/*.png``: loss curves, throughput, FID vs cfg scale / training steps, attention time and
  memory against S.
- ``index.html``: all of the above on one page; sample grids are copied into ``samples/`` and every
  path is relative, so the folder can be moved or zipped.

Published numbers are shown in their own section, labelled "published (paper)", never in a
measured column. The names of `report_summary` and `report_format` stay importable from here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from arflowbench import plots, quality_curves
from arflowbench import results as store
from arflowbench.paper import default_paper_dir, load_published
from arflowbench.plots import MISSING, render_html, render_latex, render_markdown
from arflowbench.report_bench import (
    _BENCH_CONFIG,
    BASELINE_BACKEND,
    timed_rows,
    training_tables,
)
from arflowbench.report_format import (
    axis_labels,
    cell_label,
    display_table,
    fmt_axis,
    fmt_ci,
    fmt_value,
    present_columns,
)
from arflowbench.report_summary import (
    DETAIL_METRICS,
    EVAL_CONTEXT,
    NO_MATRIX,
    NOT_AGGREGATED,
    QUALITY_METRICS,
    RUN_METRICS,
    Summary,
    aggregate_seeds,
    differences_vs_first,
    is_seed_axis,
    metric_columns,
    metric_displays,
    summarize_rows,
    welch_difference,
)
from arflowbench.sampling_report import sampling_blocks
from arflowbench.staged_dir import staged_dir

#: the public names, several defined in `report_summary` / `report_format` (imported from here)
__all__ = [
    "DETAIL_METRICS", "EVAL_CONTEXT", "MISSING", "NO_MATRIX", "QUALITY_METRICS", "REPORT_ENTRIES",
    "RUN_METRICS", "Summary", "aggregate_seeds", "build_blocks", "cell_label",
    "differences_vs_first", "fmt_axis",
    "fmt_ci", "fmt_value", "load_results", "metric_columns", "summarize_rows", "welch_difference",
    "write_report",
]

#: what a report folder holds (`--out` is replaced as a whole, so nothing else may be in it)
REPORT_ENTRIES = ("report.md", "report.tex", "index.html", "plots", "samples")


# ----------------------------------------------------------------------------- tables
def _runs_table(sub: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    cols = {"run_id": "run", **axis_labels(axes), "status": "status"}
    if sub["attention_impl"].notna().any():
        cols["attention_impl"] = "attention impl"
    extra = [m for m in metric_columns(sub)
             if m not in RUN_METRICS and m not in QUALITY_METRICS and m not in DETAIL_METRICS]
    return display_table(sub, {**cols, **present_columns(sub, RUN_METRICS),
                               **{m: m for m in extra}}, axes)


def _context(sub: pd.DataFrame, axes: list[str]) -> tuple[str, dict[str, str]]:
    """Evaluation settings: constant ones as header text, varying ones as columns (unless an
    axis already shows them, e.g. ``sample.cfg_scale``)."""
    header, columns = [], {}
    for key, label in present_columns(sub, EVAL_CONTEXT).items():
        if any(a.split(".")[-1] == key for a in axes):
            continue
        values = sub[key].dropna().unique()
        if len(values) == 1:
            header.append(f"{label}: {fmt_value(key, values[0])}")
        else:
            columns[key] = label
    return ", ".join(header), columns


def _seed_table(agg: pd.DataFrame, axes: list[str], metrics: dict[str, str]) -> pd.DataFrame:
    group = {a: lab for a, lab in axis_labels(axes).items() if not is_seed_axis(a)}
    out = display_table(agg, {**group, "n_runs": "runs"}, axes)
    for m, label in metrics.items():
        if f"{m}_mean" not in agg or agg[f"{m}_mean"].isna().all():
            continue
        out[label] = [fmt_ci(m, mu, h) + ("" if n == runs else f" (n={n})")
                      for mu, h, n, runs in zip(agg[f"{m}_mean"], agg[f"{m}_ci95"], agg[f"{m}_n"],
                                                agg["n_runs"], strict=True)]
    return out


def _difference_table(quality: pd.DataFrame, axes: list[str]) -> tuple[str, pd.DataFrame] | None:
    """(caption, table) of every configuration minus the first one, seeds paired by nothing
    (Welch 95% CI); None unless some side has repeated seeds."""
    compared = [m for m in QUALITY_METRICS if not m.endswith("_std")]  # spreads: not compared
    diff = differences_vs_first(quality, axes, compared)
    cis = [c for c in diff.columns if c.endswith("_ci95")]
    if diff.empty or diff[cis].isna().all().all():
        return None
    group = [a for a in axes if not is_seed_axis(a)]
    base = quality[quality["status"] == "ok"].iloc[0]
    name = ", ".join(f"{lab}={fmt_axis(base[a])}" for a, lab in axis_labels(group).items())
    out = display_table(diff, axis_labels(group), axes)
    for m in compared:
        label = QUALITY_METRICS[m]
        if f"{m}_diff" in diff and diff[f"{m}_diff"].notna().any():
            out[f"Δ {label}"] = [fmt_ci(m, d, h) for d, h in
                                 zip(diff[f"{m}_diff"], diff[f"{m}_ci95"], strict=True)]
    return (f"difference from {name} (this row minus it; 95% CI, Welch's t over seeds; an "
            "interval that excludes 0 is a difference at this scale)", out)


# ----------------------------------------------------------------------------- page content
# The page is a list of blocks (see `arflowbench.plots.Block`) rendered as Markdown, LaTeX and
# HTML, so the three outputs always hold the same tables.
Block = plots.Block


def _matrix_blocks(m: str, s: Summary, results_dir: Path, out_dir: Path, kept: Path | None,
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
        run_metrics = {k: v for k, v in RUN_METRICS.items() if k not in NOT_AGGREGATED}
        blocks.append(("table", f"{m}: mean ± 95% CI over {seed_names} (t-distribution)",
                       _seed_table(agg, axes, run_metrics)))
    quality = sub[(sub["status"] == "ok")
                  & sub[[c for c in QUALITY_METRICS if c in sub]].notna().any(axis=1)] \
        if any(c in sub for c in QUALITY_METRICS) else sub.iloc[:0]
    if len(quality):
        header, ctx_cols = _context(quality, axes)
        cols = {"run_id": "run", **axis_labels(axes), **ctx_cols,
                **present_columns(quality, QUALITY_METRICS)}
        blocks += [("h", 3, f"Sample quality ({header})" if header else "Sample quality"),
                   ("table", f"{m}: sample quality, measured", display_table(quality, cols, axes))]
        if agg is not None and len(agg):
            blocks.append(("table", f"{m}: sample quality, mean ± 95% CI over {seed_names}",
                           _seed_table(agg, axes, QUALITY_METRICS)))
            diff = _difference_table(quality, axes)
            if diff is not None:
                blocks.append(("table", diff[0], diff[1]))
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
    gallery = plots.copy_sample_grids(sub, labels, results_dir, out_dir, problems, absent, kept)
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
                           display_table(s.crossovers, {
                               **{c: c for c in _BENCH_CONFIG}, "mode": "mode", "N": "N",
                               "series": "backend", "vs": "vs", "crossover_S": "crossover S",
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
        blocks.append(("table", "Attention: all measurements",
                       display_table(att, present_columns(att, cols)), True))
    if "sampling" in s.bench and {"measure", "variant"} <= set(s.bench["sampling"].columns):
        blocks += sampling_blocks(s.bench["sampling"], out_dir, problems)
    if "training" in s.bench:
        blocks += _training_blocks(s.bench["training"])
    for kind, df in s.bench.items():
        if kind not in ("attention", "sampling", "training"):
            blocks += _other_bench_blocks(kind, df)
    return blocks


def _training_blocks(df: pd.DataFrame) -> list[Block]:
    """`bench training`: images/s, MFU and FLOPs per variant, and the hybrid / softmax ratio of
    each interleaved run (with the thread count and machine load it was measured under)."""
    steps, ratios = training_tables(df)
    steps = steps.assign(gflop=pd.to_numeric(steps.get("train_flops_per_step"),
                                             errors="coerce") / 1e9)
    blocks: list[Block] = [("h", 2, "Training throughput")]
    if len(ratios):
        blocks.append(("table", "Images/s ARFlow-hybrid / SiT-softmax, one interleaved run per "
                                "row (median [p20-p80])", display_table(ratios, {
                                    "flavor": "flavor", "batch": "batch", "threads": "threads",
                                    "load_avg_1m": "load (1 min)",
                                    "host_allocator": "allocator",
                                    "ratio": "ARFlow-hybrid / SiT-softmax"})))
    cols = {"flavor": "flavor", "variant": "variant", "threads": "threads", "batch": "batch",
            "param_count": "params", "gflop": "GFLOP/step",
            "train_images_per_s": "img/s", "train_images_per_s_p20": "img/s p20",
            "train_images_per_s_p80": "img/s p80", "mfu": "MFU",
            "load_avg_1m": "load (1 min)", "host_allocator": "allocator",
            "attention_implementation": "implementation"}
    blocks.append(("table", "Training steps (median over interleaved repeats)",
                   display_table(steps, present_columns(steps, cols)), len(steps) > 10))
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
    blocks.append(("table", f"Benchmark {kind}", display_table(df, {c: c for c in vary}),
                   len(df) > 10))
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
             display_table(pub, present_columns(pub, cols)))]


def build_blocks(s: Summary, results_dir: Path, out_dir: Path,
                 kept: Path | None = None) -> list[Block]:
    """The whole report as blocks. Side effects: writes plots, copies sample grids (from the
    runs' artifacts, else from ``kept``, a previous report folder), and adds the warnings met on
    the way (missing grids, failed plots) to ``s.problems``."""
    problems = list(s.problems)
    body: list[Block] = []
    if s.runs.empty and not s.bench:
        body.append(("p", f"No run rows yet in {results_dir / store.RUNS_FILE}: run a matrix "
                          "(arflowbench run ...) and report again."))
    for m in s.axes:
        body += _matrix_blocks(m, s, results_dir, out_dir, kept, problems)
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
        # grids of runs whose artifacts are gone (a fresh clone) are kept from the old report
        blocks = build_blocks(summary, results_dir, stage, kept=out_dir)
        for p in summary.problems:
            print(p, file=sys.stderr)
        (stage / "report.md").write_text(render_markdown(blocks))
        (stage / "report.tex").write_text(render_latex(blocks))
        (stage / "index.html").write_text(render_html(blocks))
    return out_dir / "report.md"
