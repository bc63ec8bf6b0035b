"""`eval --reference`: ADM reference batches (precomputed mu/sigma used as they are), image files,
dataset names, and bad references as one error line. A stub feature function keeps it fast; one
test runs the real FID Inception on five images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from arflowbench.errors import DataError
from arflowbench.metrics import inception, reference
from arflowbench.metrics.reference import evaluate_reference, load_reference

D = 16  # stub feature width
PROJ = torch.randn(3 * 8 * 8, D, generator=torch.Generator().manual_seed(0))


def stub_features(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, 8, 8) -> (N, 16): a fixed random projection."""
    return (images.float().flatten(1) / 255.0) @ PROJ


STUB_INFO = {"feature_extractor": "stub", "extractor_version": 0, "weights_tag": "stub"}


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(1))  # (N, C, H, W)


def nhwc(images: torch.Tensor) -> np.ndarray:
    return images.permute(0, 2, 3, 1).numpy()


def adm_batch(path, images, shift: float = 0.0, with_images: bool = True):
    f = stub_features(images).double().numpy()
    arrays = {"mu": f.mean(0) + shift, "sigma": np.cov(f, rowvar=False),
              "mu_s": np.zeros(3), "sigma_s": np.eye(3)}
    if with_images:
        arrays["arr_0"] = nhwc(images)
    np.savez(path, **arrays)
    return path


def test_adm_statistics_are_used_as_they_are(images, tmp_path):
    ref = load_reference(adm_batch(tmp_path / "ref.npz", images))
    assert ref.kind == "adm-batch" and ref.images.shape == (40, 3, 8, 8) and ref.has_spatial
    out = evaluate_reference(images, ref, features=stub_features, info=STUB_INFO, cache_dir=tmp_path)
    assert abs(out["fid"]) < 1e-6 and out["fid_reference_statistics"] == "precomputed"
    assert out["precision"] == 1.0 and out["recall"] == 1.0  # the reference images themselves
    assert np.isfinite(out["kid_mean"]) and out["kid_subset_size"] == 20
    assert out["inception_score"] is None and "no logits" in out["inception_score_note"]
    assert out["sfid"] is None and out["reference_num"] == 40
    json.dumps(out)
    # shifted statistics, same images: FID follows mu (D * 0.5^2), not a recomputation from arr_0
    shifted = load_reference(adm_batch(tmp_path / "shift.npz", images, shift=0.5))
    out = evaluate_reference(images, shifted, features=stub_features, info=STUB_INFO,
                             cache_dir=tmp_path)
    assert out["fid"] == pytest.approx(D * 0.25, abs=1e-6)


def test_statistics_only_and_images_only_references(images, tmp_path):
    stats = load_reference(adm_batch(tmp_path / "stats.npz", images, with_images=False))
    out = evaluate_reference(images[:20], stats, features=stub_features, info=STUB_INFO)
    assert out["fid"] > 0 and out["precision"] is None and out["reference_num"] is None
    np.savez(tmp_path / "imgs.npz", nhwc(images))
    plain = load_reference(tmp_path / "imgs.npz")
    assert plain.kind == "images"
    out = evaluate_reference(images, plain, features=stub_features, info=STUB_INFO,
                             cache_dir=tmp_path)
    assert abs(out["fid"]) < 1e-6 and out["fid_reference_statistics"] == "computed"
    assert list((tmp_path / "reference").glob("imgs-40-*.pt"))  # reference features cached


def test_bad_references(images, tmp_path):
    np.savez(tmp_path / "empty.npz", labels=np.arange(3))
    with pytest.raises(DataError, match="neither reference images .* nor Inception statistics"):
        load_reference(tmp_path / "empty.npz")
    np.savez(tmp_path / "half.npz", mu=np.zeros(4))
    with pytest.raises(DataError, match="has mu without sigma"):
        load_reference(tmp_path / "half.npz")
    np.savez(tmp_path / "shape.npz", mu=np.zeros(4), sigma=np.eye(3))
    with pytest.raises(DataError, match="not \\(D,\\) and \\(D, D\\)"):
        load_reference(tmp_path / "shape.npz")
    ref = load_reference(adm_batch(tmp_path / "ref.npz", images))
    with pytest.raises(DataError, match="reference .* has \\(3, 8, 8\\)"):
        evaluate_reference(images[:, :, :4, :4].contiguous(), ref, features=stub_features)


@pytest.mark.skipif(inception.fid_helper_weights_path() is None and
                    inception.torch_hub_weights_path() is None,
                    reason=f"no FID Inception weights offline ({inception.FID_HELPER_INSTALL})")
@pytest.mark.filterwarnings("ignore:.*torch.jit.load.*:FutureWarning")
def test_real_inception_on_five_images(images, tmp_path_factory):
    """Five 8x8 images (~1-2 s of Inception on 2 cores, plus a one-time weight conversion)."""
    cache = tmp_path_factory.getbasetemp() / "arflowbench-metrics-cache"  # shared with other tests
    features, info = reference.torch_fidelity_features("inception", cache)
    few = images[:5]
    f = features(few).double().numpy()  # (5, 2048)
    assert f.shape == (5, 2048)
    path = tmp_path_factory.mktemp("inc") / "ref.npz"
    np.savez(path, mu=f.mean(0), sigma=np.cov(f, rowvar=False))
    out = evaluate_reference(few, load_reference(path), features=features, info=info)
    assert abs(out["fid"]) < 1e-2 and out["feature_extractor"] == "inception"
    assert out["inception_score"] is None


# ---------------------------------------------------------------------------------- CLI
def test_cli_eval_against_an_adm_batch(run_cli, images, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(reference, "torch_fidelity_features",
                        lambda *a, **k: (stub_features, STUB_INFO))
    samples = tmp_path / "samples.npz"
    np.savez(samples, nhwc(images), np.arange(40) % 4)  # ADM layout: arr_0 NHWC, arr_1 labels
    ref = adm_batch(tmp_path / "VIRTUAL_tiny_labeled.npz", images)
    code, out, err = run_cli("eval", "--samples", str(samples), "--reference",
                             str(ref), "--cache-dir", str(tmp_path / "cache"))
    assert code == 0, err
    metrics = json.loads(out)
    assert abs(metrics["fid"]) < 1e-6 and metrics["reference_kind"] == "adm-batch"
    seen = {}
    monkeypatch.setattr("arflowbench.metrics.evaluate.evaluate_samples",
                        lambda imgs, labels, ds, **kw: seen.update(ds=ds.name, split=kw["reference_split"])
                        or {"fid": 0.0})
    code, out, err = run_cli("eval", "--samples", str(samples), "--reference",
                             "digits", "--split", "train")
    assert code == 0 and seen == {"ds": "digits", "split": "train"}, err


def test_cli_bad_references_are_one_error_line(run_cli, images, tmp_path, monkeypatch, capsys):
    samples = tmp_path / "samples.npz"
    np.savez(samples, nhwc(images))
    np.savez(tmp_path / "empty.npz", labels=np.arange(3))
    np.savez(tmp_path / "small.npz", nhwc(images[:, :, :4, :4].contiguous()))
    ref = adm_batch(tmp_path / "ref.npz", images)
    cases = {
        "no images, no statistics": (["--reference", str(tmp_path / "empty.npz")], "neither"),
        "unknown reference": (["--reference", "imagenet-nope"], "neither a file, a folder nor"),
        "geometry": (["--reference", str(tmp_path / "small.npz")], "samples have shape"),
        "classifier on ADM statistics": (["--reference", str(ref), "--extractor", "classifier"],
                                         "score it with the 'inception' extractor"),
        "no reference": ([], "pass one reference"),
        "two references": (["--reference", str(ref), "--dataset", "digits"], "pass one reference"),
    }
    for case, (args, expected) in cases.items():
        code, _, err = run_cli("eval", "--samples", str(samples), *args)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error:"), (case, err)
        assert expected in lines[0], (case, lines[0])
