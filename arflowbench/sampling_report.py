"""The report's section for `bench sampling` rows: the whole-trajectory time ratio ARFlow-hybrid
/ SiT-softmax, and per-step time and state memory against the position in the trajectory
(hybrid's constant state against softmax's growing KV cache), as tables in readable units and
one figure per flavor."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import seaborn as sns

from arflowbench.plots import _STYLE, MISSING, _figure, _guard, _legend, _save, _slug
from arflowbench.report_bench import _range

MB = 1e6


def _fmt(v, spec: str) -> str:
    return MISSING if v is None or pd.isna(v) else format(v, spec)


def _ratio_table(df: pd.DataFrame) -> pd.DataFrame:
    rows = df[df["measure"] == "sampling_ratio"]
    out = []
    for _, r in rows.iterrows():
        rec = {"flavor": r["flavor"], "sampler": f"{r['sampler']} {int(r['steps'])} steps",
               "cfg": _fmt(r["cfg_scale"], "g"), "batch": str(int(r["batch"]))}
        if pd.notna(r.get("threads")):  # rows before the bench recorded them have neither
            rec |= {"threads": str(int(r["threads"])),
                    "load (1 min)": _fmt(r.get("load_avg_1m"), ".2f")}
        rec["allocator"] = r["host_allocator"]  # `allocator.short` of the row's environment
        rec["ARFlow-hybrid / SiT-softmax"] = (_fmt(r["ratio_median"], ".3f")
                                              + _range(r.get("ratio_p20_p80")))
        # the time ratio both would have at the same FLOP/s (rows before it was recorded: -)
        rec["FLOPs ratio per step"] = _fmt(r.get("flops_ratio"), ".3f")
        out.append(rec)
    return pd.DataFrame(out).fillna(MISSING)


def _step_table(steps: pd.DataFrame) -> pd.DataFrame:
    out = []
    for (flavor, variant), g in steps.groupby(["flavor", "variant"], sort=False):
        rec = {"flavor": flavor, "variant": variant}
        for r in g.sort_values("position").itertuples():
            state = "" if pd.isna(r.state_bytes) else f", {r.state_bytes / MB:.1f} MB"
            rec[f"step {int(r.position)}"] = f"{r.median_ms:.1f} ms{state}"
        out.append(rec)
    return pd.DataFrame(out).fillna(MISSING)


def _step_figure(g: pd.DataFrame, title: str, path: Path) -> Path:
    fig, axes = _figure(1, 2, width=5.2, height=3.6)
    with sns.axes_style(_STYLE):
        for ax, (col, label) in zip(axes[0], (("median_ms", "time per step (ms)"),
                                              ("state_mb", "state (MB)")), strict=True):
            part = g.dropna(subset=[col])
            sns.lineplot(data=part, x="position", y=col, hue="variant", marker="o", ax=ax)
            ax.set(xlabel="sampling step k (the state holds k - 1 earlier steps)",
                   ylabel=label)
            if col == "state_mb" and part[col].gt(0).all():
                ax.set_yscale("log")
            _legend(ax, part["variant"].nunique())
        fig.suptitle(title)
    return _save(fig, path)


def sampling_blocks(df: pd.DataFrame, out_dir: Path, problems: list[str]) -> list[tuple]:
    """Blocks (see `arflowbench.plots.Block`) for the sampling benchmark rows."""
    blocks: list[tuple] = [("h", 2, "Sampling cost")]
    ok = df[df.get("status", "ok").fillna("ok") == "ok"] if "status" in df else df
    ratios = _ratio_table(ok)
    if len(ratios):
        blocks.append(("table", "Whole trajectory: time ARFlow-hybrid / SiT-softmax (median "
                                "[p20-p80] over interleaved repeats), and the FLOPs of one "
                                "step, ARFlow-hybrid / SiT-softmax (the time ratio at equal "
                                "FLOP/s; matmuls and attention counted)", ratios))
    steps = ok[ok["measure"] == "step"].copy()
    if len(steps):
        steps["state_mb"] = pd.to_numeric(steps["state_bytes"], errors="coerce") / MB
        blocks.append(("table", "One sampling step at position k: median time and the state "
                                "it carries (hybrid: constant; softmax: KV cache)",
                       _step_table(steps)))
        for flavor, g in steps.groupby("flavor", sort=False):
            path = _guard(problems, f"sampling steps ({flavor})", _step_figure, g,
                          f"sampling step cost vs position, flavor {flavor}",
                          out_dir / "plots" / f"sampling_steps_{_slug(str(flavor))}.png")
            if path:
                blocks.append(("img", f"Per-step time and state vs position ({flavor})",
                               path.relative_to(out_dir).as_posix()))
    return blocks
