"""Rendering for `arflowbench report`: PNG figures, sample-grid copies and the page renderers.

Figures: every plotting function takes plain pandas data (built by
`arflowbench.report_summary.summarize_rows`), draws one figure, writes one PNG and returns its path.
Figures are `matplotlib.figure.Figure` objects on the Agg canvas, never pyplot, so nothing here
touches global plotting state or needs a display; seaborn styles apply through context managers.

Page: `render_markdown`, `render_latex` and `render_html` turn the same list of `Block` tuples
(built by `arflowbench.report.build_blocks`) into the three formats, so they always agree.
"""

from __future__ import annotations

import html
import math
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from arflowbench.report_summary import t_half_width

_STYLE = "whitegrid"
MISSING = "—"  # how tables show a missing value
#: One piece of the report page, rendered alike as Markdown, LaTeX and HTML:
#: ("h", level, text), ("p", text), ("list", [text]), ("table", caption, df_of_strings[, folded]),
#: ("img", caption, relpath), ("gallery", [(caption, relpath)]).
Block = tuple
_DPI = 120
#: files a row may name as its sample grid
GRID_SUFFIXES = (".png", ".jpg", ".jpeg")


def _figure(nrows: int = 1, ncols: int = 1, width: float = 6.4, height: float = 4.0):
    """A Figure on the Agg canvas with a grid of axes (always a 2-D array)."""
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI)
    return path


def _legend(ax, n: int) -> None:
    # Long legends (many cells) go outside the axes so they never hide the data.
    if n == 0:
        return
    if n > 6:
        ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    else:
        ax.legend(fontsize="small")


def smooth(y: np.ndarray, frac: float = 0.05) -> np.ndarray:
    """Bias-corrected exponential moving average over about `frac` of the points (as
    TensorBoard's smoothing): the trend of a noisy loss without shifting its start."""
    span = max(1.0, frac * len(y))
    a = 2.0 / (span + 1.0)
    out, acc, weight = np.empty_like(y, dtype=float), 0.0, 0.0
    for i, v in enumerate(y):
        acc = (1 - a) * acc + a * v
        weight = (1 - a) * weight + a
        out[i] = acc / weight
    return out


def loss_curves(curves: Mapping[str, Sequence[Sequence[float]]], labels: Mapping[str, str],
                title: str, path: Path, groups: Mapping[str, str] | None = None) -> Path | None:
    """Training loss against step, one line per run (keyed by run_id, labelled by its cell).
    With ``groups`` (run_id -> label of its cell without the seed), the seeds of one
    configuration share a colour and one legend entry."""
    series = {rid: np.asarray(c, dtype=float) for rid, c in curves.items() if len(c)}
    series = {rid: c for rid, c in series.items() if c.ndim == 2 and c.shape[1] >= 2}
    if not series:
        return None
    keys = {rid: (groups or {}).get(rid) or labels.get(rid, rid) for rid in series}
    names = list(dict.fromkeys(keys.values()))
    palette = dict(zip(names, sns.color_palette("husl" if len(names) > 10 else "tab10",
                                                len(names)), strict=True))
    with sns.axes_style(_STYLE):
        fig, axes = _figure(width=7.5)
        ax = axes[0, 0]
        seen: set[str] = set()
        for rid, c in series.items():
            name = keys[rid]
            ls = "--" if name.endswith("(failed)") else "-"
            ax.plot(c[:, 0], c[:, 1], color=palette[name], lw=0.8, alpha=0.2, ls=ls)  # raw, faint
            ax.plot(c[:, 0], smooth(c[:, 1]), color=palette[name], lw=1.6, ls=ls,
                    label=None if name in seen else name)
            seen.add(name)
        # Flow-matching losses fall fast early and then slowly: a log axis shows both phases.
        ys = np.concatenate([c[:, 1] for c in series.values()])
        if np.all(ys > 0) and ys.max() / ys.min() > 10:  # a narrow range reads better linear
            ax.set_yscale("log")
        ax.set(xlabel="training step", ylabel="training loss (smoothed; raw faint)", title=title)
        _legend(ax, len(names))
        return _save(fig, path)


def throughput(df: pd.DataFrame, labels: Mapping[str, str], title: str,
               path: Path) -> Path | None:
    """Horizontal bars of train and sample images/s per run (p20-p80 whiskers when recorded)."""
    panels = [(c, t) for c, t in (("train_images_per_s", "train images/s"),
                                  ("sample_images_per_s", "sample images/s"))
              if c in df and df[c].notna().any()]
    if not panels:
        return None
    ylabels = [labels.get(r, r) for r in df["run_id"]]
    height = max(2.5, 0.35 * len(df) + 1.2)
    with sns.axes_style(_STYLE):
        fig, axes = _figure(1, len(panels), width=5.0, height=height)
        for ax, (col, name) in zip(axes[0], panels, strict=True):
            values = pd.to_numeric(df[col], errors="coerce").to_numpy(float)
            ypos = np.arange(len(values))
            xerr = None
            lo, hi = f"{col}_p20", f"{col}_p80"
            if lo in df and hi in df:
                lo_v = pd.to_numeric(df[lo], errors="coerce").to_numpy(float)
                hi_v = pd.to_numeric(df[hi], errors="coerce").to_numpy(float)
                xerr = np.nan_to_num(np.vstack([values - lo_v, hi_v - values]).clip(min=0))
            finite = values[np.isfinite(values) & (values > 0)]
            if len(finite) and finite.max() / finite.min() > 10:
                # flavors of very different speeds: dots on a log axis keep the slow ones legible
                ax.errorbar(values, ypos, xerr=xerr, fmt="o", color=sns.color_palette()[0],
                            capsize=3)
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap
                name += ", log scale"
            else:
                ax.barh(ypos, np.nan_to_num(values), xerr=xerr, color=sns.color_palette()[0],
                        capsize=3)
            ax.set_yticks(ypos, ylabels, fontsize="small")
            ax.invert_yaxis()
            ax.set(xlabel=name + (" (whiskers: p20-p80)" if xerr is not None else ""), title=name)
        if len(panels) > 1:
            axes[0, 1].tick_params(labelleft=False)
        fig.suptitle(title)
        return _save(fig, path)


def metric_vs(df: pd.DataFrame, x: str, y: str, hue: str | None, xlabel: str, ylabel: str,
              title: str, path: Path) -> Path | None:
    """`y` against `x`, one line per `hue` value; repeats (seeds) at one x are shown as
    mean with a 95% t-interval, matching the aggregated tables."""
    data = df[[c for c in (x, y, hue) if c]].copy()
    data[x] = pd.to_numeric(data[x], errors="coerce")
    data[y] = pd.to_numeric(data[y], errors="coerce")
    data = data.dropna(subset=[x, y])
    if data.empty or data[x].nunique() < 2:
        return None
    groups = data.groupby(hue, dropna=False, sort=False) if hue else [("", data)]
    with sns.axes_style(_STYLE):
        fig, axes = _figure()
        ax = axes[0, 0]
        groups = list(groups)
        # Lines are nudged apart along x (1% of the range each) so error bars do not overlap.
        step = 0.01 * (data[x].max() - data[x].min())
        for i, (key, g) in enumerate(groups):
            key = key[0] if isinstance(key, tuple) else key
            agg = g.groupby(x)[y].agg(["mean", t_half_width]).sort_index()
            half = agg["t_half_width"]  # NaN (no bar) where a point has one value
            ax.errorbar(agg.index + (i - (len(groups) - 1) / 2) * step, agg["mean"],
                        yerr=np.nan_to_num(half), marker="o", capsize=3,
                        label=str(key) if hue else None)
        ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
        if hue:
            _legend(ax, len(groups))
        return _save(fig, path)


def attention_bench(df: pd.DataFrame, crossovers: pd.DataFrame, value: str, ylabel: str,
                    title: str, path: Path) -> Path | None:
    """`value` against sequence length S, log-log, one panel per (mode, N) and one line per
    series (backend[/implementation]); each series' crossover S against softmax is marked."""
    if value not in df or "S" not in df:
        return None
    data = df.copy()
    data[value] = pd.to_numeric(data[value], errors="coerce")
    data = data[(data[value] > 0) & (pd.to_numeric(data["S"], errors="coerce") > 0)]
    if data.empty:
        return None
    modes = list(dict.fromkeys(data["mode"]))
    ns = sorted(data["N"].unique())
    labels = list(dict.fromkeys(data["series"]))
    colors = dict(zip(labels, sns.color_palette("tab10", len(labels)), strict=True))
    with sns.axes_style(_STYLE):
        fig, axes = _figure(len(ns), len(modes), width=4.2, height=3.4)
        for j, mode in enumerate(modes):  # panels side by side: one column per mode
            for i, n in enumerate(ns):
                ax = axes[i, j]
                panel = data[(data["mode"] == mode) & (data["N"] == n)]
                for label in labels:
                    s = panel[panel["series"] == label].sort_values("S")
                    if s.empty:
                        continue
                    ax.plot(s["S"], s[value], marker="o", ms=3, color=colors[label], label=label)
                    cross = _crossover_at(crossovers, mode, n, label)
                    if cross is not None:
                        ax.axvline(cross, color=colors[label], ls=":", lw=1.2)
                        ax.annotate(f"S={cross:g}", (cross, 0.02),
                                    xycoords=("data", "axes fraction"), color=colors[label],
                                    fontsize="x-small", rotation=90, ha="right", va="bottom")
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                ax.set(title=f"{mode}, N={n}", xlabel="S (images in sequence)", ylabel=ylabel)
                if panel.empty:
                    ax.set_axis_off()
        handles, names = axes[0, 0].get_legend_handles_labels()
        for ax in axes.flat:  # the first panel may miss a series: gather names from all panels
            for h, nm in zip(*ax.get_legend_handles_labels(), strict=True):
                if nm not in names:
                    handles.append(h)
                    names.append(nm)
        fig.legend(handles, names, loc="outside lower center", ncols=min(len(names), 5),
                   fontsize="small", frameon=False)
        fig.suptitle(title + ("" if crossovers is None else " (dotted: crossover vs softmax)"),
                     fontsize="medium")
        return _save(fig, path)


def _crossover_at(crossovers: pd.DataFrame, mode: str, n, label: str) -> float | None:
    if crossovers is None or crossovers.empty:
        return None
    hit = crossovers[(crossovers["mode"] == mode) & (crossovers["N"] == n)
                     & (crossovers["series"] == label)]
    if hit.empty:
        return None
    value = hit["crossover_S"].iloc[0]
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


# ----------------------------------------------------------------------------- per-report sets
def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "matrix"


def _guard(problems: list[str], what: str, fn, *args) -> Path | None:
    # A plot that fails on odd data must not cost the user the tables: warn and go on.
    try:
        return fn(*args)
    except OSError:  # a full disk or an unwritable folder is not odd data: the report fails
        raise
    except Exception as exc:  # noqa: BLE001
        problems.append(f"warning: could not draw {what}: {type(exc).__name__}: {exc}")
        return None


def _varying_x(sub: pd.DataFrame, axes: list[str], is_axis, fallback: str) -> str | None:
    """The axis that varies a setting, else ``fallback`` when its values differ across runs."""
    for a in axes:
        if is_axis(a) and sub[a].nunique() > 1:
            return a
    if fallback in sub and sub[fallback].nunique() > 1:
        return fallback
    return None


def matrix_plots(matrix: str, sub: pd.DataFrame, axes: list[str], labels: Mapping[str, str],
                 curves: Mapping[str, Sequence], plot_dir: Path, problems: list[str],
                 groups: Mapping[str, str] | None = None) -> list[tuple[str, Path]]:
    """The plots of one matrix: loss curves, throughput, FID vs cfg scale and vs training steps
    (when the matrix varies them). Returns (caption, path) for each plot written."""
    slug, out = _slug(matrix), []
    run_curves = {r: curves.get(r) or [] for r in sub["run_id"]}
    path = _guard(problems, f"loss curves of {matrix}", loss_curves, run_curves, labels,
                  f"{matrix}: training loss", plot_dir / f"{slug}_loss.png", groups)
    out.append((f"{matrix}: training loss per run", path))
    ok = sub[sub["status"] == "ok"]
    path = _guard(problems, f"throughput of {matrix}", throughput, ok, labels,
                  f"{matrix}: throughput", plot_dir / f"{slug}_throughput.png")
    out.append((f"{matrix}: throughput per run", path))
    if "fid" in ok and ok["fid"].notna().any():
        scored = ok[ok["fid"].notna()]
        for x, name, xlabel, fallback, is_axis in (
                ("cfg", "FID vs cfg scale", "cfg scale", "cfg_scale",
                 lambda a: a.split(".")[-1] in ("cfg_scale", "cfg")),
                ("steps", "FID vs training steps", "training steps", "train_steps",
                 lambda a: a.startswith("train.") and a.endswith("steps"))):
            col = _varying_x(scored, axes, is_axis, fallback)
            if col is None:
                continue
            hue_axes = [a for a in axes if a != col and not a.endswith("seed")]
            data = scored.assign(_hue=scored[hue_axes].astype(str).agg(", ".join, axis=1)
                                 if hue_axes else "")
            path = _guard(problems, f"{name} of {matrix}", metric_vs, data, col, "fid",
                          "_hue" if hue_axes else None, xlabel, "FID", f"{matrix}: {name}",
                          plot_dir / f"{slug}_fid_vs_{x}.png")
            out.append((f"{matrix}: {name} (mean ± 95% CI over seeds)", path))
    return [(cap, p) for cap, p in out if p is not None]


def bench_plots(df: pd.DataFrame, crossovers: pd.DataFrame, plot_dir: Path,
                problems: list[str], config_cols: Sequence[str]) -> list[tuple[str, Path]]:
    """Attention time and memory against S, one figure pair per configuration (the values of
    ``config_cols``, e.g. dim, heads, batch, device, dtype)."""
    cols = [c for c in config_cols if c in df.columns]
    configs = list(df.groupby(cols, dropna=False, sort=False)) if cols else [((), df)]
    out = []
    for i, (key, part) in enumerate(configs):
        key = key if isinstance(key, tuple) else (key,)
        desc = ", ".join(f"{c}={v}" for c, v in zip(cols, key, strict=True))
        cross = crossovers
        for c, v in zip(cols, key, strict=True):
            if c in cross:
                cross = cross[cross[c].astype(str) == str(v)]
        suffix = f"_{i}" if len(configs) > 1 else ""
        memory, mem_label = "peak_memory_mb", "peak memory (MB)"
        if ("peak_memory_mb" not in part or part["peak_memory_mb"].isna().all()) \
                and "state_bytes" in part:
            # CPU runs have no peak-memory counter: the state/cache size is the memory story.
            part = part.assign(state_mb=pd.to_numeric(part["state_bytes"], errors="coerce") / 2**20)
            memory, mem_label = "state_mb", "recurrent state / cache (MB)"
        # Crossovers are about time: only the time figure marks them.
        for value, ylabel, name, marks in (("median_ms", "median time (ms)", "time", cross),
                                           (memory, mem_label, "memory", None)):
            path = _guard(problems, f"attention {name} plot", attention_bench, part, marks,
                          value, ylabel, f"attention {name} vs S",
                          plot_dir / f"attention_{name}{suffix}.png")
            if path is not None:
                out.append((f"attention benchmark: {name} vs S ({desc})", path))
    return out


def copy_sample_grids(sub: pd.DataFrame, labels: dict[str, str], results_dir: Path, out_dir: Path,
                      problems: list[str], absent: list[str] | None = None,
                      kept: Path | None = None) -> list[tuple[str, str]]:
    """Copy each run's sample grid into out_dir/samples/ so the page keeps working when moved.
    Rows are untrusted: a run_id that is not an id, or a grid path that leaves the results dir
    (``..``, absolute, a link out) or is not an image, is skipped with a warning. A grid whose
    artifact is not on disk (artifacts are not committed) is taken from ``kept``, the previous
    report's folder, when that holds this run's copy (the run_id hashes the whole run: the same
    grid); the rest go to ``absent`` when given (the report says why), else a warning."""
    from arflowbench.results import is_id, path_inside

    out, missing = [], []
    for r in sub[sub["status"] == "ok"].itertuples():
        if not isinstance(r.samples, str):
            continue
        src = path_inside(results_dir, r.samples)
        if not is_id(r.run_id) or src is None or src.suffix.lower() not in GRID_SUFFIXES:
            problems.append(f"warning: run {str(r.run_id)[:80]!r}: sample grid "
                            f"{str(r.samples)[:120]!r} skipped (a row must name an image inside "
                            f"the results dir and a run_id of the hash format)")
            continue
        dst = out_dir / "samples" / f"{r.run_id}{src.suffix.lower()}"
        if not src.is_file():
            earlier = None if kept is None else kept / "samples" / dst.name
            if earlier is None or earlier.is_symlink() or not earlier.is_file():
                missing.append(str(src))
                continue
            src = earlier
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        out.append((f"{labels[r.run_id]} ({r.run_id})", dst.relative_to(out_dir).as_posix()))
    if missing and absent is not None:
        absent += missing
    elif missing:  # one line per matrix: artifacts/ is not committed, so this is common
        problems.append(f"warning: {len(missing)} sample grid(s) of matrix {sub['matrix'].iloc[0]} "
                        f"not found, e.g. {missing[0]}")
    return out




# ----------------------------------------------------------------------------- page renderers
_NUMBER = re.compile(r"^[-+]?(\d|\.\d)")


def _right_aligned(df: pd.DataFrame) -> list[bool]:
    """Columns whose shown values are all numbers (dashes for missing allowed)."""
    return [bool((vals := df[c][df[c] != MISSING]).size) and vals.str.match(_NUMBER).all()
            for c in df.columns]


def _md_cell(v: str) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: list[Block]) -> str:
    out = []
    for b in blocks:
        if b[0] == "h":
            out.append(f"{'#' * b[1]} {b[2]}")
        elif b[0] == "p":
            out.append(b[1])
        elif b[0] == "list":
            out.append("\n".join(f"- {_md_cell(x)}" for x in b[1]))
        elif b[0] == "table":
            df = b[2]
            lines = [f"*{_md_cell(b[1])}*", "",
                     "| " + " | ".join(_md_cell(c) for c in df.columns) + " |",
                     "|" + "|".join("---:" if r else "---" for r in _right_aligned(df)) + "|"]
            lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |"
                      for row in df.itertuples(index=False)]
            out.append("\n".join(lines))
        elif b[0] == "img":
            out.append(f"![{b[1]}]({b[2]})")
        elif b[0] == "gallery":
            out.append("\n".join(f"![{cap}]({path}) {cap}  " for cap, path in b[1]))
    return "\n\n".join(out) + "\n"


def latex_escape(text: Any) -> str:
    """Escape LaTeX specials; the few non-ASCII symbols used here become LaTeX commands."""
    text = re.sub(r"([&%$#_{}])", r"\\\1", str(text).replace("\\", "\0"))
    text = text.replace("\0", r"\textbackslash{}").replace("~", r"\textasciitilde{}")
    text = text.replace("^", r"\textasciicircum{}")
    return text.replace("±", r"$\pm$").replace("—", "--").replace("→", r"$\to$")


def render_latex(blocks: list[Block]) -> str:
    """Headings, notes and tables (booktabs); figures stay in the HTML and Markdown pages."""
    out = ["% Generated by `arflowbench report`. Needs \\usepackage{booktabs}.", ""]
    for b in blocks:
        if b[0] == "h":
            cmd = {1: "section*", 2: "subsection*"}.get(b[1], "subsubsection*")
            out.append(f"\\{cmd}{{{latex_escape(b[2])}}}")
        elif b[0] == "p":
            out.append(latex_escape(b[1]) + "\n")
        elif b[0] == "list":
            out += ["\\begin{itemize}", *(f"  \\item {latex_escape(x)}" for x in b[1]),
                    "\\end{itemize}"]
        elif b[0] == "table":
            df = b[2]
            align = "".join("rl"[not r] for r in _right_aligned(df)) or "l"
            out += ["\\begin{table}[ht]", "\\centering\\small",
                    f"\\caption{{{latex_escape(b[1])}}}", f"\\begin{{tabular}}{{{align}}}",
                    "\\toprule",
                    " & ".join(latex_escape(c) for c in df.columns) + r" \\", "\\midrule",
                    *(" & ".join(latex_escape(v) for v in row) + r" \\"
                      for row in df.itertuples(index=False)),
                    "\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
    return "\n".join(out) + "\n"


_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;
color:#222}table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.85em}
th,td{border-bottom:1px solid #ddd;padding:.25em .45em;text-align:left;max-width:18em}
th{background:#f3f3f3}
.num{text-align:right;font-variant-numeric:tabular-nums}.wrap{overflow-x:auto}
caption{caption-side:top;text-align:left;font-style:italic;color:#555;padding:.3em 0}
img{max-width:100%}.gallery{display:flex;flex-wrap:wrap;gap:1em}
.gallery figure{margin:0;width:240px}
.gallery img{width:240px;height:320px;object-fit:contain;image-rendering:pixelated}
figcaption{font-size:.8em;color:#444}h2{border-bottom:2px solid #ccc;margin-top:2em}"""


def _html_table(caption: str, df: pd.DataFrame) -> str:
    e = html.escape
    cls = [" class='num'" if r else "" for r in _right_aligned(df)]
    head = "".join(f"<th{c}>{e(str(h))}</th>" for c, h in zip(cls, df.columns, strict=True))
    rows = "".join("<tr>" + "".join(f"<td{c}>{e(str(v))}</td>" for c, v in
                                    zip(cls, row, strict=True)) + "</tr>\n"
                   for row in df.itertuples(index=False))
    # The wrapper scrolls sideways, so wide tables never break the page layout.
    return (f"<div class='wrap'><table><caption>{e(caption)}</caption><thead><tr>{head}</tr>"
            f"</thead><tbody>\n{rows}</tbody></table></div>")


def render_html(blocks: list[Block]) -> str:
    """A self-contained page: inline CSS, tables as HTML, images by relative path."""
    e = html.escape
    out = ["<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
           "<title>arflowbench report</title>", f"<style>{_CSS}</style></head><body>"]
    for b in blocks:
        if b[0] == "h":
            out.append(f"<h{b[1]}>{e(b[2])}</h{b[1]}>")
        elif b[0] == "p":
            out.append(f"<p>{e(b[1])}</p>")
        elif b[0] == "list":
            out.append("<ul>" + "".join(f"<li>{e(x)}</li>" for x in b[1]) + "</ul>")
        elif b[0] == "table":
            body = _html_table(b[1], b[2])
            if len(b) > 3 and b[3]:  # long tables (every benchmark measurement) start folded
                body = f"<details><summary>{e(b[1])} ({len(b[2])} rows)</summary>{body}</details>"
            out.append(body)
        elif b[0] == "img":
            out.append(f"<figure><img src='{e(b[2])}' alt='{e(b[1])}'>"
                       f"<figcaption>{e(b[1])}</figcaption></figure>")
        elif b[0] == "gallery":
            out.append("<div class='gallery'>" + "".join(
                f"<figure><img src='{e(p)}' alt='{e(c)}'><figcaption>{e(c)}</figcaption></figure>"
                for c, p in b[1]) + "</div>")
    return "\n".join(out + ["</body></html>"]) + "\n"
