"""The dataset classifier: deterministic training, cache files, and its feature extractor."""

from __future__ import annotations

import json

import torch

from arflowbench.metrics import classifier
from arflowbench.metrics.features import ClassifierFeatures
from arflowbench.plugins import DATASET


def _weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [t.clone() for t in model.state_dict().values()]


def test_training_is_seeded_and_restores_threads(monkeypatch):
    monkeypatch.setattr(classifier, "MIN_STEPS", 4)
    monkeypatch.setattr(classifier, "MAX_STEPS", 4)
    train = DATASET.get("digits")().load("train")
    images, labels = train.images[:256], train.labels[:256]
    torch.manual_seed(123)  # the global RNG must not matter
    with classifier._single_thread("cpu"):
        a, steps = classifier._train(images, labels, 10, "cpu")
    torch.manual_seed(456)
    threads = torch.get_num_threads()
    with classifier._single_thread("cpu"):
        b, _ = classifier._train(images, labels, 10, "cpu")
    assert torch.get_num_threads() == threads  # restored
    assert steps == 4
    for x, y in zip(_weights(a), _weights(b)):
        assert torch.equal(x, y)


def test_cached_classifier_files_and_extractor(tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "arflowbench-metrics-cache"
    digits = DATASET.get("digits")()
    info = classifier.dataset_classifier(digits, cache)
    meta = json.loads(info.path.with_suffix(".json").read_text())
    assert meta == info.meta
    assert meta["dataset"] == "digits" and meta["extractor_version"] == classifier.CLASSIFIER_VERSION
    assert 0.0 <= meta["test_accuracy"] <= 1.0 and len(meta["weights_sha1"]) == 40
    assert classifier.dataset_classifier(digits, cache).path == info.path  # cache hit
    ext = ClassifierFeatures("x", ["penultimate", "logits"],
                             feature_extractor_weights_path=str(info.path))
    images = digits.load("test").images[:5]
    feats, logits = ext(images)
    assert feats.shape == (5, classifier.FEATURE_DIM) and logits.shape == (5, 10)
    model = classifier.load_classifier(info.path)
    torch.testing.assert_close(logits, classifier.predict(model, images))
