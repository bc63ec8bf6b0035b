"""The `mamba` backend: scans, mambapy parity with identical weights, causality inside an image."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from arflowbench.attention.mamba import MambaMixer, chunked_scan, sequential_scan
from arflowbench.errors import ConfigError

mambapy_mamba = pytest.importorskip("mambapy.mamba")

ATOL = 1e-5  # float32; reached ~1e-7 on these sizes


def _scan_inputs(b=2, n=37, e=6, s=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    dA = torch.rand(b, n, e, s, generator=g) * 0.5 + 0.5  # decays in (0.5, 1)
    u = torch.randn(b, n, e, s, generator=g)
    h0 = torch.randn(b, e, s, generator=g)
    return dA, u, h0


@pytest.mark.parametrize("block", [None, 1, 4, 8, 37, 64])
def test_chunked_scan_equals_sequential_loop(block):
    dA, u, h0 = _scan_inputs()
    expected = sequential_scan(dA, u, h0)
    torch.testing.assert_close(chunked_scan(dA, u, h0, block), expected, atol=ATOL, rtol=ATOL)


def test_chunked_scan_gradients_equal_sequential():
    dA, u, h0 = _scan_inputs(n=20)
    grads = []
    for scan in (sequential_scan, lambda a, b, c: chunked_scan(a, b, c, 6)):
        leaves = [t.clone().requires_grad_(True) for t in (dA, u, h0)]
        (scan(*leaves) * torch.linspace(-1, 1, 4)).sum().backward()
        grads.append([t.grad for t in leaves])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=ATOL)


def _mambapy_block(m: MambaMixer):
    cfg = mambapy_mamba.MambaConfig(d_model=m.dim, n_layers=1, d_state=m.config.d_state,
                                    expand_factor=m.config.expand, d_conv=m.config.d_conv,
                                    dt_rank=m.dt_rank)
    block = mambapy_mamba.MambaBlock(cfg)
    block.load_state_dict(m.state_dict(), strict=True)  # same names and shapes
    return block


@pytest.mark.parametrize("options", [{}, {"d_state": 8, "expand": 1, "d_conv": 3}])
def test_matches_mambapy_with_identical_weights(options):
    torch.manual_seed(0)
    m = MambaMixer(32, 4, 8, **options)
    block = _mambapy_block(m)
    x = torch.randn(2, 40, 32)
    with torch.no_grad():
        ours, theirs = m(x), block(x)  # mambapy: parallel (Blelloch) scan
    assert theirs.abs().max() > 1e-2
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=1e-4)


def test_step_matches_mambapy_token_steps():
    """Our chunk step from a carried state == mambapy's one-token recurrent step, token by token."""
    torch.manual_seed(1)
    m = MambaMixer(16, 2, 4)
    block = _mambapy_block(m)
    x = torch.randn(2, 12, 16)
    with torch.no_grad():
        state, ours = m.init_state(2), []
        for c in range(3):
            y, state = m.step(x[:, 4 * c:4 * c + 4], state)
            ours.append(y)
        cache = (None, torch.zeros(2, m.d_inner, m.config.d_conv - 1))
        theirs = []
        for t in range(12):
            y, cache = block.step(x[:, t], cache)
            theirs.append(y)
    torch.testing.assert_close(torch.cat(ours, 1), torch.stack(theirs, 1), atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(state["ssm"], cache[0], atol=ATOL, rtol=1e-4)


def test_causal_inside_an_image():
    """Unlike the attention backends, a token does not see later tokens of its own image."""
    torch.manual_seed(0)
    m = MambaMixer(16, 2, 8)
    x = torch.randn(1, 16, 16)
    x2 = x.clone()
    x2[:, 5] += 1.0  # a token in the middle of the first image
    with torch.no_grad():
        y, y2 = m(x), m(x2)
    assert torch.equal(y[:, :5], y2[:, :5])
    assert not torch.allclose(y[:, 5:8], y2[:, 5:8])


def test_state_shapes_constant_and_options_validated():
    m = MambaMixer(16, 2, 4, d_state=8, d_conv=3)
    state = m.init_state(3)
    for _ in range(2):
        _, state = m.step(torch.randn(3, 4, 16), state)
    assert state["conv"].shape == (3, 32, 2) and state["ssm"].shape == (3, 32, 8)
    with pytest.raises(ConfigError, match="d_state"):
        MambaMixer(16, 2, 4, d_state=0)
    with pytest.raises(ConfigError, match="unknown key"):
        MambaMixer(16, 2, 4, bidirectional=True)
    assert m.implementation == "pytorch selective scan (CPU)"


def _no_mamba_ssm() -> str | None:
    if not torch.cuda.is_available():
        return "needs CUDA (mamba-ssm kernels)"
    if importlib.util.find_spec("mamba_ssm") is None:
        return "mamba-ssm not installed (pip install 'arflowbench[gpu]')"
    return None


@pytest.mark.gpu
@pytest.mark.skipif(_no_mamba_ssm() is not None, reason=str(_no_mamba_ssm()))
def test_matches_mamba_ssm_on_gpu():
    from mamba_ssm import Mamba

    torch.manual_seed(0)
    m = MambaMixer(64, 4, 16).cuda()
    official = Mamba(d_model=64, d_state=16, d_conv=4, expand=2).cuda()
    official.load_state_dict(m.state_dict(), strict=True)
    x = torch.randn(2, 64, 64, device="cuda")
    with torch.no_grad():
        ours = m(x)
        theirs = official(x)
        pytorch_path = m._mix(x, m.init_state(2, "cuda"))[0]
    assert m.implementation == "mamba-ssm CUDA"
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(pytorch_path, theirs, atol=1e-3, rtol=1e-3)
