"""Runs scored against a reference file (`fidelity`'s ``reference``), data not prepared yet
(`DataMissingError`, `validate` lists it), and file options hashed by content, not by path."""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest

from arflowbench.config import RunSpec, RuntimeOptions, run_hash
from arflowbench.errors import ConfigError, DataError, DataMissingError
from arflowbench.resolve import resolve

BASE = {"train": {"steps": 10, "batch_size": 20}, "sample": {"steps": 2, "grid_per_class": 1},
        "eval": {"num_samples": 20}}


def _spec(metric_options=None, data=None, metrics=None) -> RunSpec:
    metrics = metrics or [{"name": "fidelity", "options": {"extractor": "inception",
                                                          **(metric_options or {})}}]
    return RunSpec.model_validate({**BASE, "data": data or {"name": "digits"},
                                   "eval": {**BASE["eval"], "metrics": metrics}})


def _images_npz(path, shape=(12, 8, 8, 1), seed=0):
    np.savez(path, np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8))
    return path


def test_reference_enters_the_hash_by_content_not_path(tmp_path):
    ref = _images_npz(tmp_path / "ref.npz")
    (tmp_path / "moved").mkdir()
    moved = shutil.copy(ref, tmp_path / "moved" / "other-name.npz")
    other = _images_npz(tmp_path / "other.npz", seed=1)
    ids = [resolve(_spec({"reference": str(p)}), RuntimeOptions()).run_id for p in (ref, moved, other)]
    assert ids[0] == ids[1] != ids[2]
    res = resolve(_spec({"reference": str(ref)}), RuntimeOptions())
    assert res.spec.eval.metrics[0].options["reference"] == str(ref)  # the row keeps the path


def test_without_a_reference_the_run_id_is_the_one_from_before_the_option():
    res = resolve(_spec(), RuntimeOptions())
    before = res.spec.model_dump(mode="json")
    del before["eval"]["metrics"][0]["options"]["reference"]
    assert res.run_id == run_hash(RunSpec.model_validate(before), res.versions)


def test_bad_references_fail_at_resolve(tmp_path):
    rgb = _images_npz(tmp_path / "rgb.npz", shape=(12, 8, 8, 3))
    np.savez(tmp_path / "empty.npz", labels=np.arange(3))
    np.savez(tmp_path / "half.npz", mu=np.zeros(4))
    cases = [({"reference": str(rgb)}, DataError, r"\(3, 8, 8\), the samples will be \(1, 8, 8\)"),
             ({"reference": str(tmp_path / "empty.npz")}, DataError, "neither images"),
             ({"reference": str(tmp_path / "half.npz")}, DataError, "mu without sigma"),
             ({"reference": str(tmp_path / "no.npz")}, DataMissingError, "does not exist"),
             ({"reference": str(rgb), "extractor": "classifier"}, ConfigError, "'inception' extractor"),
             ({"reference": str(rgb), "reference_num": 5}, ConfigError, "used whole")]
    for options, err, msg in cases:
        with pytest.raises(err, match=msg):
            resolve(_spec(options), RuntimeOptions())


def test_fidelity_scores_samples_against_an_image_npz(tmp_path, digits, monkeypatch):
    import torch

    import arflowbench.metrics.reference as reference
    from arflowbench.metrics.fid import FidelityMetric

    ref = _images_npz(tmp_path / "ref.npz", shape=(12, 8, 8, 1))
    metric = FidelityMetric(FidelityMetric.Config(reference=str(ref)))
    metric.check(digits, [12])
    calls = []

    def fake_features(images: torch.Tensor) -> torch.Tensor:  # stands in for Inception here
        calls.append(len(images))
        return images.float().flatten(1)[:, :4]  # (N, 4): a full-rank covariance from 12 images

    monkeypatch.setattr(reference, "torch_fidelity_features",
                        lambda *a, **k: (fake_features, {"feature_extractor": "fake"}))
    same = torch.from_numpy(np.load(ref)["arr_0"]).permute(0, 3, 1, 2).contiguous()
    out = metric.compute(same, None, digits, cache_dir=tmp_path)
    assert out["fid"] == pytest.approx(0, abs=1e-2) and out["precision"] == 1.0
    assert out["reference"] == str(ref) and len(out["reference_sha256"]) == 64
    assert "class_accuracy" not in out and calls == [12, 12]
    darker = metric.compute(same // 2, None, digits, cache_dir=tmp_path)
    assert darker["fid"] > 100 * max(out["fid"], 1e-3)
    assert calls == [12, 12, 12]  # the reference's features came from the cache


LATENTS = {"name": "latents", "options": {"cache": "not-prepared", "size": 128, "num_classes": 1000}}


def test_latents_need_a_reference_and_no_class_accuracy(tmp_path):
    ref = tmp_path / "ref.npz"
    np.savez(ref, mu=np.zeros(4), sigma=np.eye(4))
    rt = RuntimeOptions(data_root=tmp_path)
    with pytest.raises(ConfigError, match="holds no pixel images"):
        resolve(_spec(data=LATENTS, metrics=[{"name": "fidelity"}]), rt, missing_data_ok=True)
    with pytest.raises(ConfigError, match="class-accuracy trains its classifier"):
        resolve(_spec(data=LATENTS, metrics=[{"name": "class-accuracy"}]), rt, missing_data_ok=True)
    res = resolve(_spec({"reference": "ref.npz"}, data=LATENTS), rt, missing_data_ok=True)
    assert "prepare latents" in res.data_missing and "--size 128" in res.data_missing
    assert (res.dataset.channels, res.dataset.image_size, res.dataset.num_classes) == (4, 16, 1000)
    with pytest.raises(DataMissingError, match="--out .*not-prepared` first"):
        resolve(_spec({"reference": "ref.npz"}, data=LATENTS), rt)


def test_validate_lists_missing_data_and_run_refuses(tmp_path, monkeypatch, capsys):
    from arflowbench.cli import main

    matrix = tmp_path / "m.toml"
    matrix.write_text('[base]\ndata = { name = "latents", options = { cache = "c", size = 64, '
                      'num_classes = 10 } }\neval = { num_samples = 10, metrics = [{ name = '
                      '"fidelity", options = { reference = "ref.npz" } }] }\n')
    codes = []
    for cmd in ("validate", "run"):
        monkeypatch.setattr(sys, "argv", ["arflowbench", cmd, "--matrix", str(matrix),
                                          "--results-dir", str(tmp_path / "r")])
        try:
            main()
            codes.append(0)
        except SystemExit as exit_:
            codes.append(exit_.code)
    out = capsys.readouterr()
    assert codes == [0, 2]
    assert "data missing" in out.out and "1 waiting for data" in out.out
    assert "warning: evaluation reference ref.npz does not exist" in out.err
    assert out.err.strip().splitlines()[-1].startswith("error: latent cache c is not prepared")
    assert not (tmp_path / "r" / "runs.jsonl").exists()  # nothing ran


@pytest.mark.parametrize("size", [128, 256])
def test_paper_matrices_validate_here_as_data_missing(size, tmp_path):
    from pathlib import Path

    from arflowbench.config import Matrix
    from arflowbench.runner import DATA_MISSING, plan

    path = Path(__file__).resolve().parents[2] / "registry" / "matrices" / f"paper_imagenet{size}.toml"
    assert "total: training" in path.read_text()  # the header holds the tool's estimate
    planned = plan(Matrix.from_file(path), RuntimeOptions(results_dir=tmp_path),
                   warn=lambda s: None, missing_data_ok=True)
    assert [p.state for p in planned] == [DATA_MISSING] * 4
    assert [(p.matrix_label, p.resolved.spec.sample.cfg_scale) for p in planned] == [
        (f"paper-imagenet{size}/{g}", c) for g in ("arflow", "sit") for c in (1.0, 1.5)]
    ds = planned[0].resolved.dataset
    assert (ds.channels, ds.image_size, ds.num_classes) == (4, size // 8, 1000)
    assert len({p.resolved.train_id for p in planned}) == 2  # guidance shares the training
    assert f"--size {size} --out imagenet{size}-latents" in planned[0].resolved.data_missing
