"""The feature-extractor table: the one place extractor names are written.

Config (`FidelityMetric.Config.extractor`), the CLI's `eval --extractor` help and `ls` derive
their choices from `EXTRACTORS`; `features.py` maps each name to its torch-fidelity class.
Importing this module is cheap (no torch-fidelity).
"""

from __future__ import annotations

from typing import Literal

from arflowbench.errors import ConfigError

#: name -> what it is, for help texts and docs
EXTRACTORS: dict[str, str] = {
    "inception": "the standard FID Inception-v3 pool features (report these)",
    "classifier": "a small CNN trained on the dataset itself (fast checks and sweeps; "
                  "comparable only with the same extractor version)",
}
ExtractorName = Literal[tuple(EXTRACTORS)]  # type: ignore[valid-type]


def check_extractor(name: str) -> None:
    if name not in EXTRACTORS:
        raise ConfigError(f"unknown feature extractor {name!r} (known: {', '.join(EXTRACTORS)})")


def extractors_help() -> str:
    return "; ".join(f"{k}: {v}" for k, v in EXTRACTORS.items())
