"""`arflowbench report` on synthetic rows: tables, superseding, corrupt lines, seed statistics,
plots, attention crossover and the published-numbers section."""

from __future__ import annotations

import contextlib
import io
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from arflowbench import allocator, paper, report
from arflowbench.results import append_row

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIDS = {  # (formulation, seed) -> FID, chosen so that the seed spread is uneven
    ("arflow", 1): 30.0, ("arflow", 2): 34.5, ("arflow", 3): 31.2,
    ("sit", 1): 40.0, ("sit", 2): 41.0, ("sit", 3): 45.5,
}


def _tiny_png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)


def _run_row(run_id: str, cell: dict, status: str = "ok", error: str | None = None,
             metrics: dict | None = None, matrix: str = "ablation") -> dict:
    return {
        "schema": 1, "kind": "run", "run_id": run_id, "status": status, "matrix": matrix,
        "cell": cell,
        "spec": {"train": {"steps": 100}, "sample": {"cfg_scale": 1.0}},
        "plugins": {"attention": {"name": "hybrid", "version": 1, "implementation": "reference"}},
        "metrics": metrics or {},
        "curves": {"loss": [[s, 1.0 / (1 + s)] for s in range(0, 100, 10)]},
        "artifacts": {"samples": f"artifacts/{run_id}/samples.png"},
        "env": {}, "started": "2026-11-23T00:00:00+00:00",
        "finished": "2026-11-23T00:01:00+00:00", "duration_s": 60.0, "error": error,
    }


def _metrics(fid: float, seed: int) -> dict:
    return {"train_loss_final": 0.5 + 0.01 * seed, "train_images_per_s": 100.0 + seed,
            "sample_images_per_s": 50.0, "nfe": 10, "peak_memory_mb": 123.0,
            "param_count": 1_234_567, "fid": fid, "kid_mean": 0.01, "kid_std": 0.001,
            "precision": 0.6, "recall": 0.5, "feature_extractor": "digits-classifier",
            "eval_num_samples": 500, "train_images_per_s_p20": 95.0 + seed,
            "train_images_per_s_p80": 105.0 + seed}


def _bench_row(backend: str, s: int, ms: float, mode: str = "forward", n: int = 64) -> dict:
    return {"schema": 1, "kind": "bench", "bench": "attention", "timestamp": "t",
            "backend": backend, "implementation": "reference", "mode": mode, "S": s, "N": n,
            "dim": 64, "heads": 2, "batch": 2, "device": "cpu", "median_ms": ms,
            "p20_ms": ms * 0.9, "p80_ms": ms * 1.1, "peak_memory_mb": None,
            "state_bytes": 1024 * s if backend == "softmax" else 4096, "env": {}}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A results dir: a 2x3 (formulation x seed) matrix with sample grids, a failed run later
    rerun ok, a still-failed run, two corrupt lines and an attention benchmark (read-only)."""
    d = tmp_path_factory.mktemp("report") / "results"
    for (form, seed), fid in FIDS.items():
        rid = f"{form}{seed}"
        _tiny_png(d / "artifacts" / rid / "samples.png")
        cell = {"formulation.name": form, "attention.name": "hybrid", "train.seed": seed}
        if rid == "sit2":  # first attempt failed, the rerun below supersedes it
            append_row(d / "runs.jsonl", _run_row(rid, cell, "failed", "OOM\ntraceback..."))
        append_row(d / "runs.jsonl", _run_row(rid, cell, metrics=_metrics(fid, seed)))
    append_row(d / "runs.jsonl", _run_row(
        "broken1", {"formulation.name": "sit", "attention.name": "linear", "train.seed": 1},
        "failed", "NonFiniteLossError: loss is nan at step 7\nmore"))
    with open(d / "runs.jsonl", "a") as f:
        f.write("this is not json\n")
        f.write('{"schema": 1, "kind": "run", "run_id": "abcdef12", "status": "ok", "met\n')
    # softmax is quadratic in S, linear is flat: linear wins from S=8 on (S=4 is a tie).
    for s in (1, 2, 4, 8, 16, 32):
        append_row(d / "bench.jsonl", _bench_row("softmax", s, 0.5 * s * s))
        append_row(d / "bench.jsonl", _bench_row("linear", s, 8.0 + (s == 2) * 10.0))
    # A noisy blip at S=2 (linear briefly faster) must not move the crossover below 8.
    append_row(d / "bench.jsonl", _bench_row("linear", 2, 1.0))
    # A configuration the benchmark skipped (over its limits): no timing, not compared.
    append_row(d / "bench.jsonl", {**_bench_row("linear", 64, 0.0), "median_ms": None,
                                   "status": "skipped", "reason": "predicted over max_call_ms"})
    append_row(d / "bench.jsonl", _bench_row("softmax", 64, 0.5 * 64 * 64))
    append_row(d / "bench.jsonl", {"schema": 1, "kind": "bench", "bench": "sampler",
                                   "steps": 10, "images_per_s": 3.5})
    return d


@pytest.fixture(scope="module")
def written(results: Path) -> tuple[Path, str, str]:
    """The report written once from `results` (plots are the slow part): out dir, report.md
    text and what went to stderr."""
    out, err = results.parent / "out", io.StringIO()
    with contextlib.redirect_stderr(err):
        md = report.write_report(results, out)  # default paper dir: the checkout's registry
    return out, md.read_text(), err.getvalue()


def _summary(results: Path) -> report.Summary:
    loaded = report.load_results(results)
    s = report.summarize_rows(loaded.runs, loaded.bench)
    s.problems = loaded.problems + s.problems
    return s


def test_every_run_in_table_and_later_row_supersedes(results: Path) -> None:
    s = _summary(results)
    runs = s.runs.set_index("run_id")
    assert sorted(runs.index) == sorted([f"{f}{k}" for f, k in FIDS] + ["broken1"])
    assert runs.loc["sit2", "status"] == "ok" and runs.loc["sit2", "fid"] == FIDS[("sit", 2)]
    assert runs.loc["broken1", "error"] == "NonFiniteLossError: loss is nan at step 7"
    axes = s.axes["ablation"]  # seed axes last: they are the repeats
    assert set(axes) == {"formulation.name", "attention.name", "train.seed"}
    assert axes[-1] == "train.seed"


def test_corrupt_lines_are_warned_and_skipped(results: Path, written) -> None:
    s = _summary(results)
    assert len(s.problems) == 2
    assert "abcdef12" in s.problems[1]  # the torn row names the run it belonged to
    _, md, err = written
    assert err.count("skipped corrupt row") == 2
    assert md.count("skipped corrupt row") == 2


def test_seed_aggregation_mean_and_t_interval(results: Path) -> None:
    agg = _summary(results).seeds["ablation"].set_index("formulation.name")
    for form in ("arflow", "sit"):
        vals = np.array([FIDS[(form, k)] for k in (1, 2, 3)])
        half = stats.t.ppf(0.975, len(vals) - 1) * vals.std(ddof=1) / np.sqrt(len(vals))
        assert agg.loc[form, "fid_mean"] == pytest.approx(vals.mean())
        assert agg.loc[form, "fid_ci95"] == pytest.approx(half)
        assert agg.loc[form, "fid_n"] == 3
    # the failed linear run is not averaged in: only ok runs count
    assert set(agg.index) == {"arflow", "sit"}


def test_bench_crossover_found(results: Path) -> None:
    cross = _summary(results).crossovers
    row = cross[(cross["series"] == "linear") & (cross["mode"] == "forward")]
    assert len(row) == 1 and row["crossover_S"].iloc[0] == 8
    assert row["max_S"].iloc[0] == 32  # the skipped S=64 row holds no timing


def test_crossover_none_when_never_faster(results: Path) -> None:
    loaded = report.load_results(results)
    slow = [b.model_copy(update={"values": {**b.values, "median_ms": b.values["median_ms"] * 1e3}})
            if b.values.get("backend") == "linear" and b.values.get("median_ms") else b
            for b in loaded.bench]
    cross = report.summarize_rows(loaded.runs, slow).crossovers
    assert cross["crossover_S"].isna().all()


def test_difference_from_the_first_configuration_with_a_welch_interval(results: Path,
                                                                       written) -> None:
    s = _summary(results)
    diff = report.differences_vs_first(s.runs[s.runs["matrix"] == "ablation"],
                                       s.axes["ablation"], ["fid"]).set_index("formulation.name")
    arflow, sit = ([FIDS[(f, k)] for k in (1, 2, 3)] for f in ("arflow", "sit"))
    ci = stats.ttest_ind(sit, arflow, equal_var=False).confidence_interval(0.95)
    assert list(diff.index) == ["sit"]  # the first configuration (arflow) is the baseline
    assert diff.loc["sit", "fid_diff"] == pytest.approx(np.mean(sit) - np.mean(arflow))
    assert diff.loc["sit", "fid_ci95"] == pytest.approx((ci.high - ci.low) / 2)
    _, md, _ = written
    caption = md[md.index("difference from attention=hybrid, formulation=arflow"):]
    row = next(line for line in caption.splitlines() if "| sit |" in line)
    assert f"{np.mean(sit) - np.mean(arflow):.2f} ± {(ci.high - ci.low) / 2:.2f}" in row
    assert "Δ KID std" not in caption  # a spread is not compared
    # one value per side: a difference without an interval
    assert np.isnan(report.welch_difference([1.0], [2.0, 3.0])[1])


def test_write_report_files_plots_and_labels(written) -> None:
    out, md, _ = written
    tex, page = (out / "report.tex").read_text(), (out / "index.html").read_text()
    for rid in [f"{f}{k}" for f, k in FIDS] + ["broken1"]:
        assert rid in md and rid in tex and rid in page
    assert "feature extractor: digits-classifier" in md and "samples: 500" in md
    assert "± " in md and r"$\pm$" in tex
    published, problems = paper.load_published(paper.default_paper_dir())
    assert not problems and len(published) >= 6  # registry/paper: ARFlow and SiT numbers
    for text in (md, page):  # in their own, labelled section, after every measured table
        section = text[text.index("Published numbers (paper)"):]
        assert "FID — published (paper)" in section and "NOT measured" in section
        for fid in published["fid"]:
            assert f"{fid:.2f}" in section
    pngs = sorted((out / "plots").glob("*.png"))
    names = {p.name for p in pngs}
    assert {"ablation_loss.png", "ablation_throughput.png", "attention_time.png",
            "attention_memory.png"} <= names
    for p in pngs:
        assert p.read_bytes()[:8] == PNG_MAGIC and Image.open(p).size[0] > 100
        assert f"plots/{p.name}" in page
    for src in re.findall(r"<img src='([^']+)'", page):  # the page only uses relative paths
        assert not Path(src).is_absolute() and (out / src).is_file()
    for rid in [f"{f}{k}" for f, k in FIDS]:  # sample grids copied next to the page
        assert (out / "samples" / f"{rid}.png").is_file() and f"samples/{rid}.png" in page
    assert "Benchmark: sampler" in md  # unknown bench kinds get a generic table


def test_grids_of_runs_whose_artifacts_are_gone_are_kept_from_the_previous_report(
        results: Path, tmp_path: Path) -> None:
    d = tmp_path / "results"
    shutil.copytree(results, d)
    out = tmp_path / "out"
    with contextlib.redirect_stderr(io.StringIO()):
        report.write_report(d, out, paper_dir=tmp_path)
        before = {p.name: p.read_bytes() for p in (out / "samples").iterdir()}
        shutil.rmtree(d / "artifacts")  # a fresh clone: rows and the committed report only
        md = report.write_report(d, out, paper_dir=tmp_path).read_text()
        fresh = report.write_report(d, tmp_path / "new", paper_dir=tmp_path).read_text()
    assert len(before) == len(FIDS)
    assert {p.name: p.read_bytes() for p in (out / "samples").iterdir()} == before
    assert "are not here" not in md and "samples/sit1.png" in md
    assert f"{len(FIDS)} sample grid(s) are not here" in fresh  # nothing to keep them from
    assert not (tmp_path / "new" / "samples").exists()


def test_fid_plots_when_matrix_varies_cfg_or_steps(tmp_path: Path) -> None:
    d = tmp_path / "results"
    for i, (cfg, seed) in enumerate([(1.0, 1), (1.0, 2), (1.5, 1), (1.5, 2), (2.0, 1)]):
        append_row(d / "runs.jsonl", _run_row(
            f"c{i}", {"sample.cfg_scale": cfg, "seed": seed}, matrix="guidance scale",
            metrics={"fid": 20.0 - cfg + seed, "cfg_scale": cfg}))
    for steps in (100, 200, 400):
        append_row(d / "runs.jsonl", _run_row(f"s{steps}", {"train.steps": steps},
                                              matrix="budget", metrics={"fid": 1e4 / steps}))
    md = report.write_report(d, tmp_path / "out", paper_dir=tmp_path).read_text()
    for name in ("guidance_scale_fid_vs_cfg.png", "budget_fid_vs_steps.png"):
        assert (tmp_path / "out" / "plots" / name).read_bytes()[:8] == PNG_MAGIC
        assert f"plots/{name}" in md
    assert "budget_fid_vs_cfg.png" not in md  # cfg does not vary there


def test_empty_results_dir(tmp_path: Path) -> None:
    md = report.write_report(tmp_path / "nothing", tmp_path / "out", paper_dir=tmp_path)
    assert "No run rows yet" in md.read_text()
    assert (tmp_path / "out" / "index.html").is_file()


def test_bad_paper_file_is_warned(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text('[[result]]\nmethod = "X"\nfid = "high"\n')
    (tmp_path / "good.toml").write_text(
        '[[result]]\nmethod = "X"\ndataset = "D"\nresolution = 32\nfid = 1.5\nsource = "s"\n')
    df, problems = paper.load_published(tmp_path)
    assert list(df["method"]) == ["X"] and len(problems) == 1 and "bad.toml" in problems[0]


def test_formatting_rounds_per_metric() -> None:
    assert report.fmt_value("fid", 14.0812) == "14.08"
    assert report.fmt_value("train_images_per_s", 1234.4) == "1234"
    assert report.fmt_value("train_images_per_s", 12.345) == "12.3"
    assert report.fmt_value("param_count", 1_234_567) == "1.23M"
    assert report.fmt_value("nfe", 250.0) == "250"
    assert report.fmt_value("fid", None) == report.MISSING
    assert report.fmt_ci("fid", 31.9, 5.83) == "31.90 ± 5.83"
    assert report.cell_label({"a.name": "x", "train.seed": 2.0}, ["a.name", "train.seed"]) \
        == "x, seed=2"


def test_sampling_bench_rows_become_ratio_step_tables_and_a_plot(tmp_path: Path) -> None:
    from arflowbench.results import BenchRecord, append

    d = tmp_path / "results"
    common = {"flavor": "mini", "sampler": "sde", "steps": 250, "cfg_scale": 1.5, "batch": 2}
    tuned = {"host_allocator": f"{allocator.TUNED_PREFIX}: mmap threshold 32 MiB"}
    append(d / "bench.jsonl", BenchRecord(bench="sampling", env=tuned, values={
        **common, "measure": "sampling_ratio", "variant": "arflow-hybrid/sit-softmax",
        "ratio_median": 1.08, "ratio_p20_p80": [1.02, 1.11], "flops_ratio": 1.0412,
        "target": 1.15}))
    for variant, per_pos in (("arflow-hybrid", lambda k: (20.0, 4.7e6)),
                             ("arflow-softmax", lambda k: (10.0 + k, 1e6 * k))):
        for k in (1, 50, 250):
            ms, state = per_pos(k)
            append(d / "bench.jsonl", BenchRecord(bench="sampling", values={
                **common, "measure": "step", "variant": variant, "position": k,
                "median_ms": ms, "state_bytes": state}))
    md = report.write_report(d, tmp_path / "out", paper_dir=tmp_path).read_text()
    section = md[md.index("## Sampling cost"):]
    assert "| mini | sde 250 steps | 1.5 | 2 | tuned | 1.080 [1.02-1.11] | 1.041 |\n" in section
    assert "target" not in section  # the bench's internal target is not a result
    assert "| mini | arflow-softmax | 11.0 ms, 1.0 MB | 60.0 ms, 50.0 MB | 260.0 ms, 250.0 MB |" \
        in section
    assert (tmp_path / "out" / "plots" / "sampling_steps_mini.png").read_bytes()[:8] == PNG_MAGIC
    assert "Benchmark: sampling" not in md  # not the raw table any more


def test_training_bench_rows_become_a_throughput_section_with_ratios(tmp_path: Path) -> None:
    from arflowbench.results import BenchRecord, append

    d = tmp_path / "results"
    common = {"flavor": "mini", "batch": 40, "train_flops_per_step": 61.0e9}
    # a row from before the bench recorded `measure` and `threads`: threads from its env stamp
    append(d / "bench.jsonl", BenchRecord(bench="training", env={"torch_threads": 1}, values={
        **common, "variant": "sit-softmax", "train_images_per_s": 58.24, "mfu": 0.5}))
    for variant, ips in (("sit-softmax", 120.0), ("arflow-hybrid", 99.0)):
        env = {"host_allocator": f"{allocator.TUNED_PREFIX}: mmap threshold 32 MiB"}
        append(d / "bench.jsonl", BenchRecord(bench="training", env=env, values={
            **common, "variant": variant, "measure": "step", "threads": 2,
            "train_images_per_s": ips, "mfu": 0.61}))
    append(d / "bench.jsonl", BenchRecord(bench="training", values={
        "flavor": "mini", "batch": 40, "measure": "training_ratio", "threads": 2,
        "variant": "arflow-hybrid/sit-softmax", "load_avg_1m": 0.52, "ratio_median": 0.825,
        "ratio_p20_p80": [0.81, 0.84], "target": 0.8, "within_target": True}))
    md = report.write_report(d, tmp_path / "out", paper_dir=tmp_path).read_text()
    section = md[md.index("## Training throughput"):]
    # the allocator column: rows without `host_allocator` ran under glibc's own thresholds
    assert "| mini | 40 | 2 | 0.52 | glibc | 0.825 [0.81-0.84] |\n" in section
    assert "| mini | sit-softmax | 1 | 40 | 61.0 | 58.2 | 0.500 | glibc |" in section
    assert "| mini | arflow-hybrid | 2 | 40 | 61.0 | 99.0 | 0.610 | tuned |" in section
    assert "Benchmark: training" not in md  # not the raw table any more


def test_seed_bands_of_the_quality_curve_are_the_tables_t_interval(tmp_path, monkeypatch):
    import pandas as pd

    from arflowbench import quality_curves

    fids = {20000: [20.0, 21.0, 23.5], 40000: [10.0, 10.5, 12.0]}
    df = pd.DataFrame([{"cell": "hybrid, arflow", "run_id": f"r{i}", "images_seen": k,
                        "metric": "fid", "value": v}
                       for k, vals in fids.items() for i, v in enumerate(vals)])
    figs = []
    monkeypatch.setattr(quality_curves, "_save", lambda fig, path: figs.append(fig) or path)
    quality_curves.quality_vs_images(df, {}, "t", tmp_path / "q.png")
    (band,) = [c for c in figs[0].axes[0].collections if len(c.get_paths())]
    verts = band.get_paths()[0].vertices
    for x, vals in fids.items():
        ys = verts[np.isclose(verts[:, 0], x), 1]
        lo, hi = stats.t.interval(0.95, len(vals) - 1, loc=np.mean(vals), scale=stats.sem(vals))
        assert ys.min() == pytest.approx(lo) and ys.max() == pytest.approx(hi)
