"""The ``class-accuracy`` metric plugin: does each sample show the class it was asked for?"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, Field

from arflowbench.errors import ConfigError
from arflowbench.metrics.base import Display, Metric
from arflowbench.plugins import Availability


class ClassAccuracy(Metric):
    """Accuracy of the dataset classifier (trained on the train split, cached) on the samples,
    against the requested labels; the classifier's own test accuracy is reported beside it
    as the ceiling to read it against."""

    name = "class-accuracy"
    version = 1
    display_order: ClassVar[int] = 10
    display: ClassVar[dict[str, Display]] = {
        "class_accuracy": Display("class acc.", higher_is_better=True),
    }

    class Config(BaseModel):
        model_config = {"extra": "forbid", "frozen": True}
        batch_size: int = Field(512, ge=1)

    @classmethod
    def availability(cls) -> Availability:
        if importlib.util.find_spec("torch_fidelity") is None:  # the classifier module uses it
            return Availability(False, "", "torch-fidelity is not installed")
        return Availability(True, "dataset classifier (pytorch)")

    def check(self, dataset: Any, sample_counts: list[int]) -> None:
        """The classifier trains on the dataset's own pixel images: refused, before training,
        for a dataset that has none (latents)."""
        if not getattr(dataset, "has_pixel_images", True):
            raise ConfigError(f"class-accuracy trains its classifier on the dataset's pixel "
                              f"images; the {dataset.name} dataset holds none: leave it out of "
                              "eval.metrics (score with fidelity and a reference file)")

    def compute(self, samples: torch.Tensor, labels: torch.Tensor | None, dataset: Any, *,
                cache_dir: str | os.PathLike | None = None, device: str = "cpu") -> dict[str, Any]:
        from arflowbench.metrics.classifier import CLASSIFIER_VERSION
        from arflowbench.metrics.evaluate import class_accuracy

        if labels is None:
            raise ConfigError("class-accuracy needs the labels the samples were generated for")
        out = class_accuracy(samples, labels, dataset, cache_dir, device, self.config.batch_size)
        return {**out, "classifier_version": CLASSIFIER_VERSION}
