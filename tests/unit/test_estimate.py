"""`validate --estimate`: FLOPs counted from real steps, shared trainings counted once."""

from __future__ import annotations

import pytest

from arflowbench.config import RunSpec, RuntimeOptions
from arflowbench.errors import ConfigError
from arflowbench.estimate import cell_cost, fmt_flops, sampled_images
from arflowbench.resolve import resolve


def _res(**kw):
    base = {"train": {"steps": 10, "batch_size": 20}, "sample": {"steps": 4, "grid_per_class": 1}}
    return resolve(RunSpec.model_validate({**base, **kw}), RuntimeOptions())


def test_cell_cost_scales_with_nfe_guidance_and_images():
    plain = cell_cost(_res(eval={"num_samples": 30, "at": [100], "at_num_samples": 20}))
    assert plain.train_images == 200 and plain.sample_images == 10 + 20 + 30
    assert plain.train_flops == plain.train_flops_per_image * 200 > 0
    # a forward is about a third of a training step (forward + backward)
    per_nfe = plain.sample_flops_per_image / 4
    assert 0.2 < per_nfe / plain.train_flops_per_image < 0.5
    more_steps = cell_cost(_res(sample={"steps": 8, "grid_per_class": 1}))
    assert more_steps.sample_flops_per_image == pytest.approx(2 * plain.sample_flops_per_image)
    guided = cell_cost(_res(sample={"steps": 4, "grid_per_class": 1, "cfg_scale": 2.0}))
    assert guided.sample_flops_per_image == pytest.approx(2 * plain.sample_flops_per_image)
    shared = cell_cost(_res(), count_training=False)
    assert shared.train_images == 0 and shared.train_flops == 0
    assert plain.hours(1e9, 0.5) == pytest.approx(
        (plain.train_flops + plain.sample_flops) / 0.5e9 / 3600)


def test_sampled_images_and_flop_units():
    assert sampled_images(_res()) == 10  # the grid only
    assert fmt_flops(2.5e12) == "2.5 TFLOP" and fmt_flops(3e6) == "3 MFLOP"


def test_cli_estimate_rejects_bad_peak():
    from arflowbench.cli import _print_estimate

    with pytest.raises(ConfigError, match="--mfu"):
        _print_estimate([], 1e12, 0.0)
