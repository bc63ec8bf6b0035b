"""The benchmark part of `arflowbench report`: bench rows -> tables, and attention crossovers.

Split from `report.py`; `report` and `report_summary` import these names. Pure pandas, no files
written.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from arflowbench import allocator
from arflowbench import results as store

BASELINE_BACKEND = "softmax"
_BENCH_CONFIG = ("dim", "heads", "batch", "device", "dtype")
_BENCH_KEYS = ("backend", "implementation", "mode", "S", "N", *_BENCH_CONFIG)


def _scalar(value: Any) -> Any:
    # Lists and dicts (e.g. a list-valued axis) become canonical JSON so they group and print.
    return json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value


def _bench_tables(rows: list[store.BenchRecord], problems: list[str]) -> dict[str, pd.DataFrame]:
    by_kind: dict[str, list[dict]] = {}
    for row in rows:
        flat = row.flat()
        if "threads" not in flat and "torch_threads" in row.env:  # rows before `threads`
            flat["threads"] = row.env["torch_threads"]
        flat["host_allocator"] = allocator.short(row.env.get("host_allocator"))
        by_kind.setdefault(row.bench, []).append({k: _scalar(v) for k, v in flat.items()})
    out = {}
    for kind, recs in by_kind.items():
        df = pd.DataFrame(recs)
        keys = [k for k in _BENCH_KEYS if k in df.columns]
        if kind == "attention" and keys:
            # A re-measured configuration replaces the older measurement.
            df = df.drop_duplicates(subset=keys, keep="last").reset_index(drop=True)
        out[kind] = df
    if "attention" in out:
        out["attention"] = _with_series(out["attention"])
    return out


def _with_series(df: pd.DataFrame) -> pd.DataFrame:
    """Add ``series``: the backend, plus its implementation when one backend has several."""
    df = df.copy()
    if "backend" not in df:
        df["backend"] = "?"
    impl = df["implementation"] if "implementation" in df else pd.Series(None, index=df.index)
    several = df.assign(_i=impl).groupby("backend")["_i"].transform("nunique") > 1
    df["series"] = np.where(several, df["backend"].astype(str) + "/" + impl.astype(str),
                            df["backend"].astype(str))
    return df


def timed_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Attention rows that hold a timing (status ok, median present): plots and crossovers."""
    if df.empty or "median_ms" not in df:
        return df.iloc[:0]
    ok = df["status"].fillna("ok") == "ok" if "status" in df else True
    return df[ok & pd.to_numeric(df["median_ms"], errors="coerce").notna()]


def attention_crossovers(df: pd.DataFrame) -> pd.DataFrame:
    """Crossover S against softmax for every non-softmax series, per (config, mode, N), by
    `arflowbench.benchmarks.attention.crossover` (the project's one definition: the smallest S
    from which the backend is faster at every larger S measured for both)."""
    cols = [*_BENCH_CONFIG, "mode", "N", "series", "vs", "crossover_S", "max_S"]
    df = timed_rows(df)
    if df.empty or not {"backend", "mode", "S", "N", "series"} <= set(df.columns):
        return pd.DataFrame(columns=cols)
    from arflowbench.benchmarks.attention import crossover  # imports torch: only when needed

    group = [c for c in (*_BENCH_CONFIG, "mode", "N") if c in df.columns]
    out = []
    for key, g in df.groupby(group, dropna=False, sort=False):
        ref = g[g["backend"] == BASELINE_BACKEND]
        if ref.empty:
            continue
        ref_label = ref["series"].iloc[0]  # one softmax implementation is the reference
        # Series labels stand in for backend names so that implementations compare apart.
        rows = g.assign(kind="bench", bench="attention", status="ok",
                        backend=g["series"]).to_dict("records")
        rec = dict(zip(group, key if isinstance(key, tuple) else (key,), strict=True))
        for label in dict.fromkeys(g.loc[g["backend"] != BASELINE_BACKEND, "series"]):
            common = set(g.loc[g["series"] == label, "S"]) & set(ref["S"])
            out.append({**rec, "series": label, "vs": ref_label,
                        "crossover_S": crossover(rows, label, ref_label, rec["mode"], rec["N"]),
                        "max_S": max(common, default=None)})
    return pd.DataFrame(out, columns=[c for c in cols if c in group or c not in _BENCH_CONFIG])


def _range(p: Any) -> str:
    """A [p20, p80] pair (a list, or canonical JSON of one) as " [a-b]", else ""."""
    if isinstance(p, str):
        p = json.loads(p)
    return f" [{p[0]:.2f}-{p[1]:.2f}]" if isinstance(p, (list, tuple)) and len(p) == 2 else ""


def training_tables(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`bench training` rows -> (throughput rows: one per variant and run, the ratio rows: the
    images/s of ARFlow-hybrid over SiT-softmax per interleaved run). Rows written before the
    bench recorded ``measure`` are throughput rows. The ratio rows get ``ratio``: the median and
    its [p20-p80] range as one string."""
    ok = df[df["status"].fillna("ok") == "ok"] if "status" in df else df
    measure = ok["measure"] if "measure" in ok else pd.Series("step", index=ok.index)
    steps = ok[measure.fillna("step") == "step"]
    ratios = ok[measure == "training_ratio"]
    ratio_table = ratios.assign(ratio=[f"{r['ratio_median']:.3f}" + _range(r.get("ratio_p20_p80"))
                                       for _, r in ratios.iterrows()])
    return steps, ratio_table
