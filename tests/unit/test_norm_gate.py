"""The hybrid layer's fused norms (`attention/ops/norm_gate.py`) against plain autograd: forward
bit-identical to the ops they replace, gradients to float rounding, and gradcheck in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from arflowbench.attention.ops.norm_gate import head_norm_gate, qkv_norm_gate

B, H, C, N, HD = 2, 3, 4, 5, 8  # batch, heads, chunks, chunk size, head dim
D, EPS = H * HD, 1e-6


def _qkv_plain(y):
    """The code before the fusion: norms through autograd, then a permute copy."""
    qkv, gate = y.split([3 * D, D], dim=-1)
    qkv = qkv.reshape(B, C * N, 3, D)
    norm = torch.linalg.vector_norm(qkv, dim=-1, keepdim=True)
    r = torch.rsqrt(norm.square() / D + EPS)
    r = torch.cat([r[:, :, :1], r[:, :, 1:2] * HD**-0.5, r[:, :, 2:]], dim=2)
    out = (qkv.view(B, C, N, 3, H, HD) * r.view(B, C, N, 3, 1, 1)).permute(3, 0, 4, 1, 2, 5)
    return (*out.contiguous().unbind(0), F.silu(gate))


def _head_plain(o, sg):
    norm = torch.linalg.vector_norm(o, dim=-1, keepdim=True)
    on = o * torch.rsqrt(norm.square() / HD + EPS)
    return (sg.view(B, C, N, H, HD) * on.permute(0, 2, 3, 1, 4)).reshape(B, C * N, D)


def _grads(fn, inputs, seed=1):
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    outs = fn(*inputs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    g = torch.Generator().manual_seed(seed)
    sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outs).backward()
    return [o.detach() for o in outs], [t.grad for t in inputs]


def test_qkv_norm_gate_matches_plain_autograd():
    y = torch.randn(B, C * N, 4 * D, generator=torch.Generator().manual_seed(0))
    got_out, got_grad = _grads(lambda t: qkv_norm_gate(t, H, N, EPS), [y])
    want_out, want_grad = _grads(_qkv_plain, [y])
    for a, b in zip(got_out, want_out):
        assert a.shape == b.shape and torch.equal(a, b)  # same ops, same order: bit-identical
    torch.testing.assert_close(got_grad[0], want_grad[0], atol=1e-6, rtol=1e-6)


def test_head_norm_gate_matches_plain_autograd():
    g = torch.Generator().manual_seed(0)
    o, sg = torch.randn(B, H, C, N, HD, generator=g), torch.randn(B, C * N, D, generator=g)
    got_out, got_grad = _grads(lambda a, b: head_norm_gate(a, b, EPS), [o, sg])
    want_out, want_grad = _grads(_head_plain, [o, sg])
    assert torch.equal(got_out[0], want_out[0])
    for a, b in zip(got_grad, want_grad):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("which", ["qkv", "head"])
def test_gradcheck_float64(which):
    g = torch.Generator().manual_seed(2)
    if which == "qkv":
        y = torch.randn(B, C * N, 4 * D, generator=g, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda t: qkv_norm_gate(t, H, N, EPS), (y,))
    else:
        o = torch.randn(B, H, C, N, HD, generator=g, dtype=torch.float64, requires_grad=True)
        sg = torch.randn(B, C * N, D, generator=g, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda a, b: head_norm_gate(a, b, EPS), (o, sg))
