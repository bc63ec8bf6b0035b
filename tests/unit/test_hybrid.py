"""Hybrid (ARFlow) attention: checks written from the method spec, independent of reference()."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from arflowbench.attention.hybrid import HybridAttention
from arflowbench.errors import ConfigError
from arflowbench.plugins import ATTENTION

D, H, N = 32, 2, 4  # width, heads, tokens per chunk
HD = D // H


def _make(seed: int = 0, **options) -> HybridAttention:
    torch.manual_seed(seed)
    return HybridAttention(D, H, N, **options)


def _inputs(chunks: int, batch: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, chunks * N, D, generator=g)
    return x, torch.randn(batch, chunks * N, D, generator=g)


def _state_bytes(state) -> int:
    tensors = [state] if isinstance(state, torch.Tensor) else list(state)
    return sum(t.numel() * t.element_size() for t in tensors)


def hand_loop(m: HybridAttention, x, cond, state=None):
    """The spec, one chunk at a time in float64: returns (y, state after the last chunk)."""
    w = {name: lin.weight.double() for name, lin in m.named_children()}
    xd = x.double()

    def rms(t):
        return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + 1e-6)

    q = rms(xd @ w["q_proj"].T)
    k = rms(xd @ w["k_proj"].T) * HD**-0.5
    v = rms(xd @ w["v_proj"].T)
    gate = xd @ w["g_proj"].T
    gated = m.config.decay == "gated"
    if gated:
        g = F.logsigmoid((xd + cond.double()) @ w["decay_proj"].T) / 16  # (B, L, H)
    b = x.shape[0]
    s = torch.zeros(b, H, HD, HD, dtype=torch.float64) if state is None else state.double()
    outs = []
    for c in range(x.shape[1] // N):
        sl = slice(c * N, (c + 1) * N)
        qc, kc, vc = (t[:, sl].reshape(b, N, H, HD).transpose(1, 2) for t in (q, k, v))
        scores = qc @ kc.transpose(-1, -2)  # (B, H, N, N)
        attn = scores.softmax(-1) if m.config.inner == "softmax" else scores
        inner = attn @ vc
        qdec = qc * g[:, sl].cumsum(1).exp().transpose(1, 2)[..., None] if gated else qc
        o = rms(inner + qdec @ s).transpose(1, 2).reshape(b, N, D)
        outs.append(o * F.silu(gate[:, sl]))
        gamma = g[:, sl].mean(1).exp()[..., None, None] if gated else 1.0  # (B, H, 1, 1)
        s = gamma * s + kc.transpose(-1, -2) @ vc
    return torch.cat(outs, 1) @ w["out_proj"].T, s


@pytest.mark.parametrize("options", [{}, {"decay": "none"}, {"inner": "linear"}])
@torch.no_grad()
def test_parallel_form_matches_hand_loop(options):
    m = _make(**options)
    x, cond = _inputs(chunks=6)
    want, want_state = hand_loop(m, x, cond)
    torch.testing.assert_close(m(x, cond), want.float(), atol=1e-5, rtol=1e-5)
    # the recurrent form ends on the same state as the spec's recursion
    state = m.init_state(2)
    for c in range(6):
        sl = slice(c * N, (c + 1) * N)
        _, state = m.step(x[:, sl], state, cond[:, sl])
    torch.testing.assert_close(state, want_state.float(), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_carried_state_enters_first_chunk_as_is():
    m = _make()
    x, cond = _inputs(chunks=1)
    s0 = torch.randn(2, H, HD, HD, generator=torch.Generator().manual_seed(3))
    y, s1 = m.step(x, s0, cond)
    want, want_state = hand_loop(m, x, cond, state=s0)
    torch.testing.assert_close(y, want.float(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s1, want_state.float(), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_decay_none_state_is_plain_sum_of_kv():
    m = _make(decay="none")
    x, cond = _inputs(chunks=5)
    k = F.rms_norm(m.k_proj(x), (D,), eps=1e-6) * HD**-0.5
    v = F.rms_norm(m.v_proj(x), (D,), eps=1e-6)
    k, v = (t.view(2, -1, H, HD).transpose(1, 2) for t in (k, v))  # (B, H, L, d)
    plain_sum = k.transpose(-1, -2) @ v  # sum over every token of k_t^T v_t
    state = m.init_state(2)
    for c in range(5):
        _, state = m.step(x[:, c * N : (c + 1) * N], state, cond[:, c * N : (c + 1) * N])
    torch.testing.assert_close(state, plain_sum, atol=1e-5, rtol=1e-5)


def test_state_memory_is_flat():
    m = _make()
    x, cond = _inputs(chunks=1)
    state = m.init_state(2)
    with torch.no_grad():
        _, state = m.step(x, state, cond)
        after_one = _state_bytes(state)
        for _ in range(49):
            _, state = m.step(x, state, cond)
    assert state.shape == (2, H, HD, HD) and state.dtype == torch.float32
    assert _state_bytes(state) == after_one


def test_gradients_reach_decay_proj():
    m = _make()
    x, cond = _inputs(chunks=3)  # the first chunk alone sees a zero state: no decay gradient
    m(x, cond).square().mean().backward()
    grad = m.decay_proj.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_parameter_names_and_shapes():
    shapes = {n: tuple(p.shape) for n, p in _make().named_parameters()}
    assert shapes == {
        "q_proj.weight": (D, D),
        "k_proj.weight": (D, D),
        "v_proj.weight": (D, D),
        "g_proj.weight": (D, D),
        "decay_proj.weight": (H, D),
        "out_proj.weight": (D, D),
    }
    assert "decay_proj.weight" not in dict(_make(decay="none").named_parameters())


def test_options_are_validated():
    assert ATTENTION.validate_options("hybrid", {}) == {"decay": "gated", "inner": "softmax"}
    with pytest.raises(ConfigError, match="decay"):
        ATTENTION.validate_options("hybrid", {"decay": "exponential"})
    with pytest.raises(ConfigError, match="unknown key"):
        ATTENTION.validate_options("hybrid", {"inner_attention": "softmax"})


def test_cond_none_uses_x_and_bad_cond_raises():
    m = _make()
    x, _ = _inputs(chunks=2)
    with torch.no_grad():
        torch.testing.assert_close(m(x), m(x, torch.zeros_like(x)))
    with pytest.raises(ValueError, match="cond shape"):
        m(x, x[:, :N])


@torch.no_grad()
def test_low_precision_input_returns_its_dtype():
    m = _make()
    x, cond = _inputs(chunks=2)
    y32 = m(x, cond)
    m16 = m.to(torch.bfloat16)
    y16 = m16(x.bfloat16(), cond.bfloat16())
    assert y16.dtype == torch.bfloat16
    torch.testing.assert_close(y16.float(), y32, atol=0.1, rtol=0.1)


def test_implementation_names_what_ran():
    from arflowbench.attention.hybrid import describe
    from arflowbench.attention.ops import FLA_IMPL

    m = _make()
    with torch.no_grad():
        m(_inputs(chunks=2)[0])
    cpu = "pytorch (chunk-parallel forward, recurrent step)"  # unchanged since version 1
    assert m.implementation == cpu == describe("pytorch chunked (CPU)")
    assert describe(FLA_IMPL).startswith(FLA_IMPL)
    fallback = describe("pytorch chunked (CUDA; fla not used: fla-core/triton not installed)")
    assert fallback.startswith(cpu) and "fla not used: fla-core/triton not installed" in fallback


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (fla Triton kernels)")
@pytest.mark.parametrize("options", [{}, {"decay": "none"}, {"inner": "linear"}])
def test_fla_cross_term_matches_reference_on_gpu(options):
    from arflowbench.attention.hybrid import describe
    from arflowbench.attention.ops import FLA_IMPL

    torch.manual_seed(0)
    m = HybridAttention(128, 2, 64, **options).cuda()
    x, cond = torch.randn(2, 256, 128, device="cuda"), torch.randn(2, 256, 128, device="cuda")
    with torch.no_grad():
        y = m(x, cond)
        ref = m.reference(x, cond)
        state, steps = m.init_state(2), []
        for c in range(4):
            out, state = m.step(x[:, c * 64 : (c + 1) * 64], state, cond[:, c * 64 : (c + 1) * 64])
            steps.append(out)
    assert m.implementation == describe(FLA_IMPL)
    # fla's kernels may use TF32 tensor-core matmuls: a looser tolerance than on CPU
    torch.testing.assert_close(y, ref, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(torch.cat(steps, 1), y, atol=2e-3, rtol=2e-3)
