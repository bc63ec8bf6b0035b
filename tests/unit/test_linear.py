"""The `linear` backend: options, normaliser, state and implementation name.

The conformance suite checks forward == reference == step for every variant. The cross-chunk
recursion itself is the shared op `arflowbench.attention.ops`, tested in test_chunk_ops.py against
a naive loop on every path (the fla path with fla-core's naive kernels standing in on CPU), the
layer's fla code path included.
"""

from __future__ import annotations

import pytest
import torch

from arflowbench.attention.linear import LinearAttention
from arflowbench.attention.ops import FLA_IMPL
from arflowbench.errors import ConfigError
from arflowbench.plugins import ATTENTION


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
    assert m.implementation == "pytorch chunked (CPU)"
    assert LinearAttention.availability("cpu").implementation == "pytorch chunked (CPU)"
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
    assert m.implementation == FLA_IMPL
    # fla's kernels may use TF32 tensor-core matmuls: a looser tolerance than on CPU
    torch.testing.assert_close(y, ref, atol=2e-3, rtol=2e-3)
