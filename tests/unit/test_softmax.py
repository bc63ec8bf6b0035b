"""Softmax attention: KV-cache growth, SiT's single-chunk case, parameters and options."""

from __future__ import annotations

import pytest
import torch

from arflowbench.attention.softmax import SoftmaxAttention
from arflowbench.errors import ConfigError
from arflowbench.plugins import ATTENTION

D, H, N = 32, 2, 4


def _make(seed: int = 0) -> SoftmaxAttention:
    torch.manual_seed(seed)
    return SoftmaxAttention(D, H, N)


def _x(chunks: int, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, chunks * N, D, generator=torch.Generator().manual_seed(seed))


def _cache_bytes(state) -> int:
    return sum(t.numel() * t.element_size() for t in state)


@torch.no_grad()
def test_kv_cache_grows_by_one_chunk_per_step():
    m = _make()
    x = _x(chunks=1)
    state = m.init_state(2)
    assert _cache_bytes(state) == 0
    sizes = []
    for _ in range(50):
        _, state = m.step(x, state)
        sizes.append(_cache_bytes(state))
    per_chunk = 2 * 2 * H * N * (D // H) * 4  # k and v, batch 2, float32
    assert sizes == [per_chunk * (t + 1) for t in range(50)]
    assert state[0].shape == (2, H, 50 * N, D // H)


@torch.no_grad()
def test_single_chunk_is_bidirectional_and_matches_plain_attention():
    m = _make()
    x = _x(chunks=1)
    y = m(x)
    # plain multi-head attention with no mask at all (SiT)
    q, k, v = m.qkv(x).view(2, N, 3, H, D // H).permute(2, 0, 3, 1, 4)
    att = (q @ k.transpose(-1, -2) / (D // H) ** 0.5).softmax(-1) @ v
    want = m.proj(att.transpose(1, 2).reshape(2, N, D))
    torch.testing.assert_close(y, want, atol=1e-5, rtol=1e-5)
    x2 = x.clone()
    x2[:, -1] += 1.0  # the last token changes the first one's output: no causal mask inside
    assert not torch.allclose(m(x2)[:, 0], y[:, 0])


@torch.no_grad()
def test_cond_is_ignored():
    m = _make()
    x = _x(chunks=3)
    assert torch.equal(m(x), m(x, torch.randn_like(x)))


def test_parameters_and_options():
    shapes = {n: tuple(p.shape) for n, p in _make().named_parameters()}
    assert shapes == {
        "qkv.weight": (3 * D, D),
        "qkv.bias": (3 * D,),
        "proj.weight": (D, D),
        "proj.bias": (D,),
    }
    assert ATTENTION.validate_options("softmax", {}) == {}
    with pytest.raises(ConfigError, match="unknown key"):
        ATTENTION.validate_options("softmax", {"causal": True})
