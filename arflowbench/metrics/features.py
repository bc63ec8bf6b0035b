"""Feature extractors for FID/KID/precision-recall, registered in torch-fidelity's own registry.

Two extractors, one code path (``torch_fidelity.calculate_metrics``):

- ``inception``: the standard FID Inception-v3 (2048-d pool features); weights from
  `inception.py`. Use it for numbers you report.
- ``classifier``: the penultimate layer (128-d) of a small CNN trained on the dataset's train
  split (`classifier.py`). Thousands of times cheaper on a CPU; use it for tests and quick
  sweeps. Its numbers are only comparable with other numbers from the same extractor version.

torch-fidelity builds an extractor as ``cls(name, features_list, **kwargs)`` from the registry
name; our weights file comes in through its ``feature_extractor_weights_path`` option.
`prepare_extractor` makes that file available (converting or training it on first use) and
returns an `ExtractorSpec` naming everything that determines the features.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

from arflowbench.metrics import classifier, inception
from arflowbench.metrics.base import FeatureWeightsError
from arflowbench.metrics.extractors import check_extractor

#: names in torch-fidelity's registry (prefixed: that registry is global)
INCEPTION_TF_NAME = "arflowbench-inception-v3"
CLASSIFIER_TF_NAME = "arflowbench-classifier"


class FidInceptionV3(FeatureExtractorInceptionV3):
    """torch-fidelity's FID Inception-v3 (its TF-1.x resize to 299, its pooling quirks), taking
    grayscale (N, 1, H, W) uint8 images as well, and offering no logits (see `inception.py`)."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        if feature_extractor_weights_path is None:  # torch-fidelity would download unverified
            raise FeatureWeightsError("the inception extractor needs feature_extractor_weights_path")
        # torch-fidelity unpickles the file it is given (weights_only=False): give it a buffer
        # of the verified tensors, loaded here with weights_only=True
        buf = io.BytesIO()
        torch.save(inception.load_weights(feature_extractor_weights_path), buf)
        buf.seek(0)
        super().__init__(name, features_list, feature_extractor_weights_path=buf, **kwargs)
        del self.fc  # NaN with fid-helper weights (no logits layer); never used here

    @staticmethod
    def get_provided_features_list():
        return "64", "192", "768", "2048"

    @staticmethod
    def can_be_compiled():
        return False

    def forward(self, x):
        if x.dim() == 4 and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # (N, 3, H, W): grayscale as equal R, G, B
        return super().forward(x)


class ClassifierFeatures(FeatureExtractorBase):
    """The dataset classifier's penultimate layer (128-d) and logits, for uint8 images."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise FeatureWeightsError("the classifier extractor needs feature_extractor_weights_path")
        self.model = classifier.load_classifier(feature_extractor_weights_path)

    @staticmethod
    def get_provided_features_list():
        return "penultimate", "logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"isc": "logits", "fid": "penultimate", "kid": "penultimate",
                "prc": "penultimate"}[metric]

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 1, 8, 8, dtype=torch.uint8)

    def forward(self, x):
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise ValueError(f"expected uint8 (N, C, H, W) images, got {x.dtype} {tuple(x.shape)}")
        feats = self.model.features(x)  # (N, 128)
        out = {"penultimate": feats, "logits": self.model.head(feats)}
        return tuple(out[name] for name in self.features_list)


_TF_CLASSES = {INCEPTION_TF_NAME: FidInceptionV3, CLASSIFIER_TF_NAME: ClassifierFeatures}


def register_torch_fidelity_extractors() -> None:
    """Register our extractors with torch-fidelity (idempotent; done on import)."""
    for name, cls in _TF_CLASSES.items():
        if name not in FEATURE_EXTRACTORS_REGISTRY:
            register_feature_extractor(name, cls)


register_torch_fidelity_extractors()


@dataclass(frozen=True)
class ExtractorSpec:
    """A ready-to-use feature extractor: what torch-fidelity needs, and what a result records."""

    name: str  # "inception" | "classifier"
    tf_name: str  # the torch-fidelity registry name
    version: int
    weights_path: Path
    #: identifies the weights inside cache file names (trained classifiers differ by content)
    weights_tag: str
    info: dict[str, Any] = field(default_factory=dict)


def extractor_version(name: str) -> int:
    """The version of an extractor's features (bumped whenever they change)."""
    check_extractor(name)
    return inception.INCEPTION_VERSION if name == "inception" else classifier.CLASSIFIER_VERSION


def prepare_extractor(name: str, dataset: Any, cache_dir: str | os.PathLike | None = None,
                      device: str = "cpu") -> ExtractorSpec:
    """Make the extractor's weights available (convert or train once, then cached)."""
    check_extractor(name)
    if name == "inception":
        source = inception.weights_source()
        path = inception.inception_weights(cache_dir)
        # Both sources hold the same 2015 TF weights (features agree to 1e-6): one tag.
        return ExtractorSpec(name, INCEPTION_TF_NAME, inception.INCEPTION_VERSION, path,
                             "tf2015", {"weights_source": source})
    info = classifier.dataset_classifier(dataset, cache_dir, device)
    return ExtractorSpec(
        name, CLASSIFIER_TF_NAME, classifier.CLASSIFIER_VERSION, info.path,
        info.meta["weights_sha1"][:8],
        {"classifier_test_accuracy": info.test_accuracy},
    )
