"""DiT's basic init reaches the attention: every attention nn.Linear is xavier-uniform with zero
bias (as in the official DiT/SiT/ARFlow), except the layers a backend initialises itself
(`keeps_own_init`, e.g. Mamba's dt_proj), which keep exactly their own init."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from arflowbench.attention.base import AttentionBackend
from arflowbench.errors import ConfigError, PluginUnavailableError
from arflowbench.models.backbone import DiT
from arflowbench.models.flavors import Flavor
from arflowbench.plugins import ATTENTION, availability_for

#: wide enough that every weight matrix has >= 2,048 entries: a tight std estimate
FLAVOR = Flavor(depth=2, width=128, heads=2)


def _backend_names() -> list:
    """Every registered backend (derived from the registry), skipped with the reason if unusable."""
    out = []
    for name in ATTENTION.names():
        try:
            avail = availability_for(ATTENTION.load(name), "cpu")  # the models run on CPU
            reason = None if avail.available else avail.reason
        except PluginUnavailableError as err:
            reason = str(err)
        marks = [pytest.mark.skip(reason=reason)] if reason else []
        out.append(pytest.param(name, marks=marks, id=name))
    return out


def _dit(name: str) -> DiT:
    torch.manual_seed(0)
    return DiT(image_size=8, channels=1, patch_size=2, num_classes=10, flavor=FLAVOR,
               attention=name)


@pytest.mark.parametrize("name", _backend_names())
def test_attention_linears_are_xavier_with_zero_bias(name):
    model = _dit(name)
    checked = 0
    for block in model.blocks:
        attn: AttentionBackend = block.attn
        for lname, layer in attn.dit_init_linears().items():
            fan_out, fan_in = layer.weight.shape
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            w = layer.weight.detach()
            assert float(w.abs().max()) <= bound, f"{name}.{lname}: outside the xavier bound"
            # uniform(-b, b) has std b / sqrt(3); PyTorch's default would give 1 / sqrt(3 fan_in)
            std = float(w.std())
            assert std == pytest.approx(bound / math.sqrt(3), rel=0.08), f"{name}.{lname}"
            if layer.bias is not None:
                assert int(layer.bias.count_nonzero()) == 0, f"{name}.{lname}: bias not zero"
            checked += 1
        kept = set(attn.keeps_own_init)
        all_linears = {n for n, m in attn.named_modules() if isinstance(m, nn.Linear)}
        assert set(attn.dit_init_linears()) == all_linears - kept
    assert checked > 0, f"{name}: no attention Linear layer checked"


def test_mamba_keeps_its_own_dt_proj_A_log_and_D(monkeypatch):
    """The kept parameters are bit-identical to those of the same model built without DiT's init
    (same seed, so the same construction draws); the other Linear layers did change."""
    if not availability_for(ATTENTION.load("mamba"), "cpu").available:
        pytest.skip("mamba unavailable here")
    model = _dit("mamba")
    monkeypatch.setattr(DiT, "_init_weights", lambda self: None)
    raw = _dit("mamba")
    for got, own in zip(model.blocks, raw.blocks):
        for pname in ("dt_proj.weight", "dt_proj.bias", "A_log", "D"):
            a, b = got.attn.get_parameter(pname), own.attn.get_parameter(pname)
            assert torch.equal(a, b), f"mamba {pname} changed by the backbone's init"
        assert not torch.equal(got.attn.in_proj.weight, own.attn.in_proj.weight)
    # and what the kept init is: A = -(1..d_state), D = 1, softplus(dt bias) in [dt_min, dt_max]
    attn = model.blocks[0].attn
    d_state = attn.config.d_state
    torch.testing.assert_close(attn.A_log.exp(), torch.arange(1, d_state + 1.0).expand_as(attn.A_log))
    assert torch.equal(attn.D, torch.ones_like(attn.D))
    dt = nn.functional.softplus(attn.dt_proj.bias.detach())
    assert float(dt.min()) >= 1e-4 - 1e-7 and float(dt.max()) <= attn.config.dt_max * (1 + 1e-5)


def test_keeps_own_init_must_name_linear_layers():
    class Typo(ATTENTION.load("softmax")):
        keeps_own_init = ("qkv_proj",)

    attn = Typo(32, 2, 4)
    with pytest.raises(ConfigError, match="keeps_own_init lists qkv_proj, not nn.Linear layers"):
        attn.reset_parameters_like_dit()
