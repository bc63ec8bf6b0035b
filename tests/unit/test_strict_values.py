"""Spec values: booleans are not numbers, inf and nan are not values; what TOML spells only one
way (lists for tuples, strings for paths, real booleans) still validates."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from arflowbench.config import RunSpec, RuntimeOptions
from arflowbench.errors import ConfigError
from arflowbench.plugins import METRIC


@pytest.mark.parametrize(("tree", "says"), [
    ({"train": {"steps": True}}, "train: steps: expected a number, got the boolean true"),
    ({"train": {"lr": float("inf")}}, "lr: must be a finite number"),
    ({"train": {"betas": [0.9, float("nan")]}}, "betas[1]: must be a finite number"),
    ({"eval": {"at": [False]}}, "at[0]: expected a number"),
    ({"data": {"options": {"x": float("-inf")}}}, "options.x: must be a finite number"),
    ({"sample": {"cfg_scale": True}}, "cfg_scale: expected a number"),
])
def test_booleans_and_non_finite_values_are_refused(tree, says) -> None:
    with pytest.raises(ValidationError) as err:
        RunSpec.model_validate(tree)
    assert says.split(": ", 1)[-1] in str(err.value)


def test_values_toml_can_only_spell_one_way_still_validate(tmp_path) -> None:
    spec = RunSpec.model_validate({"train": {"betas": [0.9, 0.95], "lr": 1, "grad_clip": None},
                                   "eval": {"at": [64], "num_samples": 10}})
    assert spec.train.betas == (0.9, 0.95) and spec.train.lr == 1.0
    rt = RuntimeOptions(results_dir=str(tmp_path), progress=False, threads=None)
    assert rt.results_dir == tmp_path and rt.progress is False


def test_plugin_options_are_checked_too() -> None:
    with pytest.raises(ConfigError, match="kid_subsets: expected a number, got the boolean true"):
        METRIC.validate_options("fidelity", {"kid_subsets": True})
    with pytest.raises(ConfigError, match="batch_size: must be a finite number"):
        METRIC.validate_options("fidelity", {"batch_size": float("nan")})
    assert METRIC.validate_options("fidelity", {"kid_subsets": 3})["kid_subsets"] == 3
