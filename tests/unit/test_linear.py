"""The `linear` backend: its cross-chunk recursion against fla-core's own plain-PyTorch references.

The conformance suite checks forward == reference == step for every variant. Here the cross-chunk
part (decayed queries times the chunk-exclusive state S_c) is compared with fla-core's naive
implementations (fla/ops/simple_gla/naive.py and fla/ops/linear_attn/naive.py): these run the
token-level recurrence S_t = exp(g_t) S_{t-1} + k_t v_t^T on the read/write layout that the CUDA
path hands to fla's ``chunk_simple_gla`` kernel (`cross_via_gla`), so the kernel's inputs are
checked on CPU as well.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from arflowbench.attention.linear import LinearAttention, cross_via_gla, scan_chunk_states
from arflowbench.errors import ConfigError
from arflowbench.plugins import ATTENTION


def _load_naive(op: str):
    """fla-core's ops/<op>/naive.py loaded by path: it needs only torch and einops, while
    importing the fla package pulls in every layer (seconds of start-up)."""
    spec = importlib.util.find_spec("fla")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("fla-core not installed", allow_module_level=True)
    path = Path(next(iter(spec.submodule_search_locations))) / "ops" / op / "naive.py"
    mod_spec = importlib.util.spec_from_file_location(f"_fla_naive_{op}", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


simple_gla_naive = _load_naive("simple_gla")
linear_attn_naive = _load_naive("linear_attn")

# fp32 recurrences over a few hundred tokens: reached ~1e-6, asserted with margin.
ATOL = 1e-5


def _linear_attn_kernel(q, k, v, g, scale, initial_state, output_final_state):
    """fla's naive linear attention (no gates) behind the simple-GLA call signature."""
    assert torch.count_nonzero(g) == 0, "decay-free layout must carry zero log-gates"
    return linear_attn_naive.naive_recurrent_linear_attn(
        q, k, v, scale=scale, initial_state=initial_state, output_final_state=output_final_state)


def _inputs(gated: bool, seed: int = 0, b=2, h=3, c=5, n=6, d=8):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, c, n, d, generator=g) for _ in range(3))
    init = torch.randn(b, h, d, d, generator=g)
    log_decay = F.logsigmoid(torch.randn(b, h, c, n, generator=g)) / 16 if gated else None
    return q, k, v, log_decay, init


def _ours(q, k, v, log_decay, init):
    """The CPU path of LinearAttention: scan over chunks, then decayed queries times states."""
    log_gamma = None if log_decay is None else log_decay.mean(-1)
    q_dec = q if log_decay is None else q * log_decay.cumsum(-1).exp()[..., None]
    states, final = scan_chunk_states(k.transpose(-1, -2) @ v, log_gamma, init)
    return q_dec @ states, final, q_dec, log_gamma


KERNELS = {
    "simple_gla.naive_recurrent": simple_gla_naive.naive_recurrent_simple_gla,
    "simple_gla.naive_chunk": simple_gla_naive.naive_chunk_simple_gla,
}


@pytest.mark.parametrize("kernel", list(KERNELS))
@pytest.mark.parametrize("gated", [False, True], ids=["no-decay", "gated"])
def test_cross_chunk_matches_fla_naive(kernel, gated):
    q, k, v, log_decay, init = _inputs(gated)
    cross, final, q_dec, log_gamma = _ours(q, k, v, log_decay, init)
    fla_cross, fla_final = cross_via_gla(q_dec, k, v, log_gamma, init, KERNELS[kernel])
    assert cross.abs().max() > 1.0  # a non-trivial comparison
    torch.testing.assert_close(fla_cross, cross, atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(fla_final, final, atol=ATOL, rtol=ATOL)


def test_cross_chunk_matches_fla_linear_attn_naive():
    q, k, v, _, init = _inputs(gated=False, seed=3)
    cross, final, q_dec, _ = _ours(q, k, v, None, init)
    fla_cross, fla_final = cross_via_gla(q_dec, k, v, None, init, _linear_attn_kernel)
    torch.testing.assert_close(fla_cross, cross, atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(fla_final, final, atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("options", [{}, {"decay": "gated"},
                                     {"feature_map": "identity", "normalize": False,
                                      "decay": "gated"}])
def test_module_fla_path_on_cpu(monkeypatch, options):
    """The module's fla code path, with fla's naive recurrence standing in for the CUDA kernel."""
    import arflowbench.attention.linear as linear

    monkeypatch.setattr(linear, "_fla_kernel", lambda: simple_gla_naive.naive_recurrent_simple_gla)
    torch.manual_seed(0)
    m = LinearAttention(32, 4, 6, **options)
    x, cond = torch.randn(2, 30, 32), torch.randn(2, 30, 32)
    results = []
    for use_fla in (True, False):
        m.zero_grad()
        y, state = m._mix(x, cond, m.init_state(2), use_fla=use_fla)
        (y * torch.linspace(-1, 1, 32)).sum().backward()
        results.append((y, state["kv"], {n: p.grad for n, p in m.named_parameters()}))
    (y_fla, s_fla, g_fla), (y_cpu, s_cpu, g_cpu) = results
    torch.testing.assert_close(y_fla, y_cpu, atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(s_fla, s_cpu, atol=ATOL, rtol=ATOL)
    for name in g_cpu:  # gradients flow through the read/write layout alike
        torch.testing.assert_close(g_fla[name], g_cpu[name], atol=1e-4, rtol=1e-4)


def test_normalized_elu_output_is_bounded_by_values():
    """With positive features and the normaliser, each head's mixed value is a convex
    combination of value vectors: no coordinate leaves the range of the values."""
    torch.manual_seed(0)
    m = LinearAttention(16, 2, 4, normalize=True, feature_map="elu1")
    m.o_proj.weight.data = torch.eye(16)  # look at the mixed values directly
    x = torch.randn(1, 16, 16)
    v = x @ m.v_proj.weight.T
    with torch.no_grad():
        y = m(x)
    assert (y <= v.max(dim=1).values + 1e-5).all() and (y >= v.min(dim=1).values - 1e-5).all()


def test_normalize_with_identity_rejected_at_validation():
    with pytest.raises(ConfigError, match=r"linear.*normalize.*'identity', 'elu1'"):
        LinearAttention(32, 4, 8, feature_map="identity", normalize=True)
    with pytest.raises(ConfigError, match="normalize"):
        ATTENTION.validate_options("linear", {"feature_map": "identity"})
    with pytest.raises(ConfigError, match="decay"):
        LinearAttention(32, 4, 8, decay="exponential")
    assert ATTENTION.validate_options("linear", {"feature_map": "identity",
                                                 "normalize": False})["decay"] == "none"


def test_state_is_constant_size_and_implementation_named():
    m = LinearAttention(32, 4, 8, decay="gated")
    state = m.init_state(2)
    sizes = {k: v.shape for k, v in state.items()}
    for _ in range(3):
        _, state = m.step(torch.randn(2, 8, 32), state, torch.randn(2, 8, 32))
    assert {k: v.shape for k, v in state.items()} == sizes
    assert sizes == {"kv": (2, 4, 8, 8), "z": (2, 4, 8)}
    m(torch.randn(1, 16, 32))
    expected = "pytorch chunked (CPU)"
    assert m.implementation == expected and LinearAttention.availability().implementation in {
        expected, "pytorch chunked (CUDA)", "fla chunk_simple_gla (CUDA)"}
    assert "decay_proj" not in dict(LinearAttention(32, 4, 8).named_modules())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (fla Triton kernels)")
@pytest.mark.parametrize("options", [{}, {"decay": "gated"}])
def test_fla_kernel_matches_reference_on_gpu(options):
    torch.manual_seed(0)
    m = LinearAttention(128, 2, 64, **options).cuda()
    x, cond = torch.randn(2, 256, 128, device="cuda"), torch.randn(2, 256, 128, device="cuda")
    with torch.no_grad():
        y = m(x, cond)
        ref = m.reference(x, cond)
    assert m.implementation == "fla chunk_simple_gla (CUDA)"
    # fla's kernels may use TF32 tensor-core matmuls: a looser tolerance than on CPU
    torch.testing.assert_close(y, ref, atol=2e-3, rtol=2e-3)
