"""Fused norms of the hybrid layer, each a custom autograd function with a hand-written backward.

The layer's elementwise work (RMSNorms of q, k, v over the width, the per-head RMSNorm of the
mixed values, the SiLU output gate) cost as much as its matmuls at CPU widths (D = 256: norms,
copies and their autograd backward were ~40% of the layer's training time). Autograd saw each of
them as several ops (norm, square, div, rsqrt, mul, cat, permute-copy, split) and its backward ran
each one's own formula, plus a split -> cat of the projection's gradient. Here:

- `qkv_norm_gate`: one projection output y = x [W_q; W_k; W_v; W_g]^T (B, L, 4D) -> q, k, v
  RMSNormed over D (k times head_dim^-1/2), written straight into the (B, H, C, N, d) layout the
  chunk ops read (no separate permute copy), and SiLU(g) (B, L, D). Its backward writes the
  gradient of y into one (B, L, 4D) buffer: RMSNorm's one-formula backward
  dx = r (dy' - y_n mean(dy' y_n)) per part, SiLU's backward into the gate's columns.
- `head_norm_gate`: o (B, H, C, N, d) -> RMSNorm over d * SiLU(g), merged to (B, L, D).

Forward values are the same ops in the same order as the autograd code they replace
(bit-identical); gradients equal it to float rounding (tests/unit/test_norm_gate.py checks
both against plain autograd, and gradcheck in float64).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _rms_factor(x: torch.Tensor, width: int, eps: float) -> torch.Tensor:
    """rsqrt(mean(x^2) + eps) over the last dim, keepdim; x.square().mean() through a norm (one
    pass that reads x and writes nothing of its size)."""
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    return torch.rsqrt(norm.square() / width + eps)


class _QKVNormGate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y: torch.Tensor, heads: int, chunk: int, eps: float):
        b, n, four_d = y.shape
        dim = four_d // 4
        s, d = n // chunk, dim // heads
        x = y[..., : 3 * dim].view(b, n, 3, dim)  # (B, L, 3, D) strided view, no copy
        r = _rms_factor(x, dim, eps)  # (B, L, 3, 1)
        # k's head_dim^-1/2 goes into its factor (the same rounding as before: r_k * d^-1/2)
        rs = torch.cat([r[:, :, :1], r[:, :, 1:2] * d**-0.5, r[:, :, 2:]], dim=2)
        x6 = x.view(b, s, chunk, 3, heads, d)
        rs6 = rs.view(b, s, chunk, 3, 1, 1)
        outs = []
        for i in range(3):  # q, k, v: each written into its own (B, H, C, N, d) tensor
            out = y.new_empty(b, heads, s, chunk, d)
            torch.mul(x6[:, :, :, i], rs6[:, :, :, i], out=out.permute(0, 2, 3, 1, 4))
            outs.append(out)
        sg = F.silu(y[..., 3 * dim:])  # (B, L, D)
        ctx.save_for_backward(y, r, rs)
        ctx.shape = (b, n, dim, heads, chunk)
        return (*outs, sg)

    @staticmethod
    def backward(ctx, dq, dk, dv, dsg):
        y, r, rs = ctx.saved_tensors
        b, n, dim, heads, chunk = ctx.shape
        s, d = n // chunk, dim // heads
        dy = torch.empty_like(y)  # (B, L, 4D): the whole projection's gradient, one buffer
        x6 = y[..., : 3 * dim].view(b, s, chunk, 3, heads, d)
        dx6 = dy[..., : 3 * dim].view(b, s, chunk, 3, heads, d)
        rs6 = rs.view(b, s, chunk, 3, 1, 1)
        r6 = r.view(b, s, chunk, 3, 1, 1)
        for i, g in enumerate((dq, dk, dv)):
            if g is None:
                dx6[:, :, :, i].zero_()
                continue
            gt = g.permute(0, 2, 3, 1, 4)  # (B, C, N, H, d) view of (B, H, C, N, d)
            xi, ri, rsi = x6[:, :, :, i], r6[:, :, :, i], rs6[:, :, :, i]
            # out = rs x with rs = scale * r, r = (mean x^2 + eps)^-1/2:
            # dx = rs g - rs r^2 mean(g x) x
            a = (gt * xi).sum(dim=(-2, -1), keepdim=True)  # (B, C, N, 1, 1)
            coef = rsi * ri * ri * a / dim
            torch.addcmul(gt * rsi, xi, coef, value=-1.0, out=dx6[:, :, :, i])
        if dsg is None:
            dy[..., 3 * dim:].zero_()
        else:
            torch.ops.aten.silu_backward.grad_input(dsg, y[..., 3 * dim:],
                                                    grad_input=dy[..., 3 * dim:])
        return dy, None, None, None


def qkv_norm_gate(y: torch.Tensor, heads: int, chunk: int, eps: float):
    """y (B, L, 4D) = [q | k | v | g] projections -> q, k, v (B, H, C, N, d) RMSNormed over D
    (k also scaled by d^-1/2), and SiLU(g) (B, L, D)."""
    return _QKVNormGate.apply(y, heads, chunk, eps)


class _HeadNormGate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, o: torch.Tensor, sg: torch.Tensor, eps: float):
        b, h, s, n, d = o.shape
        r = _rms_factor(o, d, eps)  # (B, H, C, N, 1)
        on = o * r  # per-head RMSNorm
        # gate first: the product takes the gate's (B, C, N, H, d) layout, i.e. heads merged
        z = sg.view(b, s, n, h, d) * on.permute(0, 2, 3, 1, 4)
        ctx.save_for_backward(on, r, sg)
        return z.view(b, s * n, h * d)

    @staticmethod
    def backward(ctx, dz):
        on, r, sg = ctx.saved_tensors
        b, h, s, n, d = on.shape
        dz5 = dz.view(b, s, n, h, d)
        on_t = on.permute(0, 2, 3, 1, 4)  # (B, C, N, H, d) view
        dsg = (dz5 * on_t).view(b, s * n, h * d)
        don = (dz5 * sg.view(b, s, n, h, d)).permute(0, 3, 1, 2, 4)  # (B, H, C, N, d) view
        # y = r x: dx = r (dy - y mean(dy y))
        a = (don * on).sum(-1, keepdim=True)  # (B, H, C, N, 1)
        do = torch.addcmul(don * r, on, r * a / d, value=-1.0)
        return do, dsg, None


def head_norm_gate(o: torch.Tensor, sg: torch.Tensor, eps: float) -> torch.Tensor:
    """o (B, H, C, N, d) -> RMSNorm over d, times SiLU(g) sg (B, L, D), heads merged: (B, L, D)."""
    return _HeadNormGate.apply(o, sg, eps)
