"""Sanity checks of the FID pipeline on digits with the dataset-classifier features (seconds).

The digits classifier is trained once per test session into a cache folder shared by every
metrics test module (on-disk cache under pytest's session temp dir).
"""

from __future__ import annotations

import pytest
import torch

from arflowbench.errors import ConfigError, DataError
from arflowbench.metrics.evaluate import evaluate_samples
from arflowbench.plugins import DATASET

# Fewer KID subsets than the default 100: the subsets are numpy matmuls, the slow part here.
FAST = {"extractor": "classifier", "kid_subsets": 10}


def add_noise(images: torch.Tensor, std: float, seed: int = 0) -> torch.Tensor:
    """uint8 images plus Gaussian noise of `std` (in units of the full 0..255 range)."""
    gen = torch.Generator().manual_seed(seed)
    noisy = images.float() + std * 255.0 * torch.randn(images.shape, generator=gen)
    return noisy.round().clamp(0, 255).to(torch.uint8)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "arflowbench-metrics-cache"


@pytest.fixture(scope="module")
def digits():
    return DATASET.get("digits")()


@pytest.fixture(scope="module")
def train_vs_test(digits, cache):
    train = digits.load("train")
    return evaluate_samples(train.images, train.labels, digits, cache_dir=cache, **FAST)


def test_result_row_names_everything(train_vs_test, digits):
    r = train_vs_test
    expected = {"fid", "kid_mean", "kid_std", "precision", "recall", "class_accuracy",
                "feature_extractor", "extractor_version", "eval_num_samples", "reference_split",
                "reference_num", "kid_subset_size"}
    assert expected <= set(r)
    assert r["feature_extractor"] == "classifier"
    assert r["eval_num_samples"] == len(digits.load("train"))
    assert r["reference_num"] == len(digits.load("test"))
    # the test split has fewer than 2000 images: the automatic KID subset is half of it,
    # so the subsets differ and kid_std means something
    assert r["kid_subset_size"] == min(r["eval_num_samples"], r["reference_num"]) // 2
    assert r["kid_std"] > 0
    assert 0.0 <= r["precision"] <= 1.0 and 0.0 <= r["recall"] <= 1.0


def test_train_vs_test_is_far_below_noise(train_vs_test, digits, cache):
    n = len(digits.load("train"))
    gen = torch.Generator().manual_seed(1)
    noise = torch.randint(0, 256, (n, 1, 8, 8), generator=gen, dtype=torch.uint8)
    r_noise = evaluate_samples(noise, None, digits, cache_dir=cache, **FAST)
    assert train_vs_test["fid"] < 0.05 * r_noise["fid"]
    assert train_vs_test["precision"] > r_noise["precision"]


def test_fid_grows_with_noise(digits, cache):
    test = digits.load("test").images
    fids = [evaluate_samples(add_noise(test, std), None, digits, cache_dir=cache, **FAST)["fid"]
            for std in (0.0, 0.1, 0.2, 0.4)]
    assert abs(fids[0]) < 1e-3 * fids[1]  # the reference against itself: FID 0
    assert all(a < b for a, b in zip(fids, fids[1:])), fids


def test_fid_does_not_depend_on_batch_size(digits, cache):
    images = digits.load("train").images[:100]
    fids = [evaluate_samples(images, None, digits, cache_dir=cache, batch_size=bs,
                             reference_num=100, cache_reference=False, **FAST)["fid"]
            for bs in (7, 128)]
    assert fids[0] == pytest.approx(fids[1], rel=1e-5)


def test_cached_reference_gives_the_same_numbers(digits, cache, tmp_path):
    images = digits.load("train").images[:300]
    fresh = evaluate_samples(images, None, digits, cache_dir=cache, cache_reference=False, **FAST)
    first = evaluate_samples(images, None, digits, cache_dir=cache, **FAST)  # may write the cache
    again = evaluate_samples(images, None, digits, cache_dir=cache, **FAST)  # reads it
    for key in ("fid", "kid_mean", "precision", "recall"):
        assert fresh[key] == pytest.approx(first[key], rel=1e-6)
        assert again[key] == first[key]
    files = list((cache / "fidelity").iterdir())
    assert any(f.name.startswith("digits-test-8px-") and "classifier-v1" in f.name for f in files)
    # nothing half-written is left behind (temporary names start with "tmp" or "."); every
    # cached file has its checksum beside it, and a lock file serialises its writers
    assert all(f.suffix in (".pt", ".sha256", ".lock") and not f.name.startswith(("tmp", "."))
               for f in files), files
    assert all(f.with_name(f.name + ".sha256").is_file() for f in files if f.suffix == ".pt")


def test_class_accuracy(train_vs_test, digits, cache):
    test = digits.load("test")
    r = evaluate_samples(test.images, test.labels, digits, cache_dir=cache, **FAST)
    # the test images against their own labels: exactly the classifier's recorded accuracy
    assert r["class_accuracy"] == pytest.approx(r["classifier_test_accuracy"], abs=1e-6)
    assert r["classifier_test_accuracy"] > 0.9
    wrong = (test.labels + 1) % digits.num_classes
    r_wrong = evaluate_samples(test.images, wrong, digits, cache_dir=cache, **FAST)
    assert r_wrong["class_accuracy"] < 0.2
    assert train_vs_test["class_accuracy"] > 0.9


def test_too_few_samples_for_kid_subset(digits, cache):
    images = digits.load("train").images[:50]
    with pytest.raises(ConfigError, match=r"kid_subset_size 100 .* 50 samples / 360 reference"):
        evaluate_samples(images, None, digits, cache_dir=cache, kid_subset_size=100, **FAST)
    r = evaluate_samples(images, None, digits, cache_dir=cache, **FAST)
    assert r["kid_subset_size"] == 25


def test_bad_samples_and_labels(digits, cache):
    images = digits.load("test").images
    with pytest.raises(ConfigError, match="unknown feature extractor 'vgg'.*inception"):
        evaluate_samples(images, None, digits, "vgg", cache_dir=cache)
    with pytest.raises(DataError, match="uint8"):
        evaluate_samples(images.float(), None, digits, cache_dir=cache, **FAST)
    with pytest.raises(DataError, match=r"\(1, 16, 16\).*\(1, 8, 8\)"):
        evaluate_samples(torch.zeros(10, 1, 16, 16, dtype=torch.uint8), None, digits, **FAST)
    with pytest.raises(DataError, match=r"labels must lie in \[0, 10\)"):
        evaluate_samples(images, torch.full((len(images),), 10), digits, cache_dir=cache, **FAST)
    with pytest.raises(DataError, match="labels must be integers"):
        evaluate_samples(images, torch.zeros(3, dtype=torch.long), digits, cache_dir=cache,
                         **FAST)


def test_equal_rgb_channels_count_as_grayscale(digits, cache):
    images = digits.load("train").images[:200]
    gray = evaluate_samples(images, None, digits, cache_dir=cache, **FAST)
    rgb = evaluate_samples(images.expand(-1, 3, -1, -1).contiguous(), None, digits,
                           cache_dir=cache, **FAST)
    assert rgb["fid"] == gray["fid"]
