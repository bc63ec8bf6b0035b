"""The trainer's numerics as in the public ARFlow code: AdamW weight decay on weight matrices only,
and fp32 unless `train.precision = "bf16"` (CUDA autocast) is asked for."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
from pydantic import ValidationError

from arflowbench.config import PRECISIONS, RunSpec, TrainSpec
from arflowbench.errors import ConfigError
from arflowbench.trainer import (
    AUTOCAST_DTYPES,
    autocast_context,
    autocast_dtype,
    param_groups,
    train,
)


# ------------------------------------------------------------------ weight decay groups
@pytest.mark.parametrize("attention", ["softmax", "hybrid", "mamba"])
def test_param_groups_partition_the_parameters_by_dimension(model_factory, attention):
    model = model_factory(attention=attention)
    no_decay, decay = param_groups(model, 0.02)
    assert (no_decay["weight_decay"], decay["weight_decay"]) == (0.0, 0.02)
    ids_no, ids_de = [id(p) for p in no_decay["params"]], [id(p) for p in decay["params"]]
    every = [id(p) for p in model.parameters()]
    assert sorted(ids_no + ids_de) == sorted(every)  # a partition: nothing lost, nothing twice
    assert len(set(ids_no + ids_de)) == len(every)
    assert all(p.ndim < 2 for p in no_decay["params"]) and no_decay["params"]
    assert all(p.ndim >= 2 for p in decay["params"]) and decay["params"]
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[i] for i in ids_de}
    # as the public code: the label table and the patch-embedding kernel decay, biases do not
    assert {"y_embed.table.weight", "x_embed.weight"} <= decayed
    assert not any(n.endswith(".bias") for n in decayed)


def test_adamw_decays_only_the_decay_group(model_factory):
    """With zero gradients Adam's step is zero, so only the decoupled decay moves parameters:
    >= 2-D ones shrink by (1 - lr * wd), 1-D ones do not move."""
    model = model_factory(randomize=True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(param_groups(model, 0.5), lr=0.1)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in model.named_parameters():
        expected = before[n] * (1 - 0.1 * 0.5) if p.ndim >= 2 else before[n]
        torch.testing.assert_close(p.detach(), expected, atol=0, rtol=1e-6, msg=n)


def test_frozen_parameters_are_left_out(model_factory):
    model = model_factory()
    model.y_embed.requires_grad_(False)
    groups = param_groups(model, 0.02)
    kept = {id(p) for g in groups for p in g["params"]}
    assert id(model.y_embed.table.weight) not in kept
    assert len(kept) == sum(p.requires_grad for p in model.parameters())


# ------------------------------------------------------------------ precision
@pytest.mark.parametrize("device, precision, expected", [
    ("cpu", "fp32", None), ("cuda", "fp32", None), ("cuda:1", "fp32", None),
    ("cuda", "bf16", torch.bfloat16), ("cuda:0", "bf16", torch.bfloat16),
])
@pytest.mark.filterwarnings("ignore:CUDA is not available")  # CPU-only here: still built
def test_autocast_follows_precision(device, precision, expected):
    assert autocast_dtype(device, precision) is expected
    ctx = autocast_context(device, precision)
    if expected is None:
        assert isinstance(ctx, nullcontext)
    else:
        assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_bf16_off_cuda_is_one_clear_config_error(device):
    with pytest.raises(ConfigError, match=r"train.precision = 'bf16' needs a CUDA device.*fp32"):
        autocast_dtype(device, "bf16")


def test_precision_is_a_strict_hashed_option():
    assert TrainSpec().precision == "fp32"  # the public code's default
    assert set(AUTOCAST_DTYPES) == set(PRECISIONS)  # every spec value has an autocast mapping
    with pytest.raises(ValidationError, match="fp32"):
        TrainSpec(precision="fp16")
    bf16 = RunSpec.model_validate({"train": {"precision": "bf16"}})
    assert bf16.train_json() != RunSpec().train_json()  # part of the train_id
    with pytest.raises(ConfigError, match="unknown train.precision 'tf32'"):
        autocast_dtype("cuda", "tf32")


def test_bf16_cell_on_cpu_fails_before_any_work(tmp_path, model_factory, digits_train):
    from arflowbench.formulations.sit import SiT

    ckpt = tmp_path / "train" / "checkpoint.pt"
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        train(model_factory(), SiT(), digits_train, TrainSpec(steps=2, precision="bf16"),
              train_id="x", checkpoint_path=ckpt, device="cpu")
    assert not ckpt.parent.exists()
