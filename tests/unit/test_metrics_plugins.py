"""The metric plugins as the registry sees them."""

from __future__ import annotations

import pytest
import torch

from arflowbench.errors import ConfigError
from arflowbench.metrics.evaluate import evaluate_samples
from arflowbench.plugins import DATASET, METRIC


@pytest.mark.parametrize("name", ["fidelity", "class-accuracy"])
def test_registered_plugins_load_and_are_available(name):
    cls = METRIC.get(name)  # checks base class, name, integer version, availability
    assert cls.name == name
    avail = cls.availability()
    assert avail.available and avail.implementation


def test_fidelity_config_is_strict():
    with pytest.raises(ConfigError, match="unknown key"):
        METRIC.validate_options("fidelity", {"extractr": "inception"})
    with pytest.raises(ConfigError, match="extractor"):
        METRIC.validate_options("fidelity", {"extractor": "vgg"})
    opts = METRIC.validate_options("fidelity", {"extractor": "classifier"})
    assert opts["kid_subset_size"] is None and opts["reference_split"] == "test"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "arflowbench-metrics-cache"


def test_plugins_compute_what_evaluate_computes(cache):
    digits = DATASET.get("digits")()
    test = digits.load("test")
    images, labels = test.images[:120], test.labels[:120]
    fid_cls = METRIC.get("fidelity")
    metric = fid_cls(fid_cls.Config(extractor="classifier", kid_subsets=5))
    got = metric.compute(images, labels, digits, cache_dir=cache)
    want = evaluate_samples(images, labels, digits, "classifier", cache_dir=cache, kid_subsets=5)
    # fidelity scores the features; the class accuracy is the class-accuracy metric's
    assert "class_accuracy" not in got
    assert got == {k: v for k, v in want.items() if k != "class_accuracy"}
    acc_cls = METRIC.get("class-accuracy")
    acc = acc_cls().compute(images, labels, digits, cache_dir=cache)
    assert acc["class_accuracy"] == want["class_accuracy"]
    with pytest.raises(ConfigError, match="needs the labels"):
        acc_cls().compute(images, None, digits, cache_dir=cache)
    assert isinstance(acc["classifier_version"], int) and torch.is_tensor(images)
