"""The cross-chunk term on fla-core's ``chunk_simple_gla`` kernel (CUDA, Triton).

fla's simple GLA is a *token-level*, *inclusive* recurrence: S_t = exp(g_t) S_{t-1} + k_t v_t^T,
o_t = scale * q_t S_t. Ours is *chunk-level* and *exclusive* (chunk c reads S_c, the state before
it) with no key-side decay. `cross_via_gla` lays each chunk out as two segments of the token
sequence so that the kernel computes exactly our recursion:

- a *read* segment: the chunk's decayed queries, zero keys and values, zero log-gates
  (the state stays S_c, so its outputs are q_dec S_c);
- a *write* segment: zero queries, the chunk's keys and values, log-gate log gamma_c on its first
  token and 0 after (the state becomes gamma_c S_c + K_c^T V_c).

fla is imported only when this path runs; whether it imports is decided once per process and,
when it does not, the reason is part of the implementation string that the layers record.

Triton versions (fla-core 0.6.0, ``fla/ops/common/chunk_o.py``): the backward of a *gated* chunk
kernel (g not None) raises on Hopper GPUs with Triton >= 3.4.0 and < 3.7.1 (fla #640: wrong
results) unless tilelang is installed (fla then routes it to tilelang). `gated_backward_problem`
checks that pair before a training forward picks the kernel, so such a machine trains on the
PyTorch path with the reason recorded instead of failing at the first backward. Triton >= 3.7.1
(or tilelang) works on every GPU; Triton < 3.4.0 works too.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable

import torch

#: fla's kernel signature: (q, k, v, g, scale, initial_state, output_final_state) -> (o, final)
Kernel = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]

FLA_IMPL = "fla chunk_simple_gla (CUDA)"
#: fla's chunk kernels take head dims up to 256
FLA_MAX_HEAD_DIM = 256
#: [first, last) Triton versions whose gated chunk backward fla refuses on Hopper (fla #640)
HOPPER_BAD_TRITON = ("3.4.0", "3.7.1")


def gated_backward_problem(gpu_name: str, capability: tuple[int, int], triton_version: str,
                           tilelang: bool) -> str:
    """"" when fla's gated chunk backward runs on this GPU and Triton, else why not (fla's own
    test: a Hopper GPU, by name "NVIDIA H..." or capability 9.x, with a Triton in
    `HOPPER_BAD_TRITON` and no tilelang)."""
    from packaging.version import Version

    hopper = "NVIDIA H" in gpu_name or capability[0] == 9
    lo, hi = (Version(v) for v in HOPPER_BAD_TRITON)
    if hopper and lo <= Version(triton_version) < hi and not tilelang:
        return (f"fla's gated chunk backward refuses Triton {triton_version} on Hopper "
                f"(needs Triton >= {hi} or tilelang installed)")
    return ""


@functools.cache
def device_gated_backward_problem(index: int) -> str:
    """`gated_backward_problem` for CUDA device `index` and the installed Triton (once)."""
    import triton

    return gated_backward_problem(torch.cuda.get_device_name(index),
                                  torch.cuda.get_device_capability(index), triton.__version__,
                                  importlib.util.find_spec("tilelang") is not None)


def fla_installed() -> bool:
    """fla-core and triton are installed (a cheap check: nothing is imported)."""
    return all(importlib.util.find_spec(m) is not None for m in ("fla", "triton"))


@functools.cache
def load_kernel() -> tuple[Kernel | None, str]:
    """(fla's chunk_simple_gla, "") or (None, why it cannot be used). Imported once, lazily."""
    if not fla_installed():
        return None, "fla-core/triton not installed"
    try:
        from fla.ops.simple_gla import chunk_simple_gla
    except Exception as err:  # noqa: BLE001 - a broken install is reported by name, not raised
        return None, f"fla import failed: {type(err).__name__}: {err}"[:200]
    return chunk_simple_gla, ""


def cross_via_gla(
    q_dec: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_gamma: torch.Tensor | None,
    initial_state: torch.Tensor | None,
    kernel: Kernel,
    output_final_state: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The cross-chunk term q_dec S_c through ``kernel`` on the read/write layout.

    q_dec: (B, H, C, N, dk) queries already multiplied by the in-chunk decay; k: (B, H, C, N, dk);
    v: (B, H, C, N, dv); log_gamma: (B, H, C) chunk log-decays, or None: no decay, and fla gets
    g=None; initial_state: (B, H, dk, dv) or None (zeros).
    ``kernel`` follows fla's (q, k, v, g, scale, initial_state, output_final_state) API with
    [B, T, H, d] inputs: ``chunk_simple_gla`` on CUDA, one of fla's naive references in tests.
    Returns (cross (B, H, C, N, dv), final state (B, H, dk, dv) or None).
    """
    b, h, c, n, _ = q_dec.shape

    def seq(read: torch.Tensor, write: torch.Tensor) -> torch.Tensor:  # -> (B, 2CN, H, d)
        t = torch.stack([read, write], dim=3)  # (B, H, C, 2, N, d)
        return t.reshape(b, h, 2 * c * n, -1).transpose(1, 2).contiguous()

    g = None
    if log_gamma is not None:
        layout = q_dec.new_zeros(b, h, c, 2, n)  # (B, H, C, read/write, N)
        layout[:, :, :, 1, 0] = log_gamma  # decay once, on the first token of each write
        g = layout.reshape(b, h, 2 * c * n).transpose(1, 2).contiguous()  # (B, 2CN, H)
    o, final = kernel(
        q=seq(q_dec, torch.zeros_like(q_dec)), k=seq(torch.zeros_like(k), k),
        v=seq(torch.zeros_like(v), v), g=g, scale=1.0,
        initial_state=initial_state, output_final_state=output_final_state,
    )
    o = o.transpose(1, 2).reshape(b, h, c, 2, n, -1)[:, :, :, 0]  # the read segments
    return o, final
