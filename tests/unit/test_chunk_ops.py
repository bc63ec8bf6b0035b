"""The chunk-recurrence op (`arflowbench.attention.ops`) and the layers built on it.

Parity: every path of the op -- the PyTorch chunk-parallel form, the fla code path (fla-core's
naive kernels standing in for its Triton kernel on CPU, see tests/unit/conftest.py) and the
recurrent step -- against the naive loop in float64, outputs, final states and gradients, with
and without decay and initial state.

Before/after: `tests/unit/data/attention_before_ops.pt` holds forward outputs, input gradients,
step outputs and final states of `hybrid` and `linear` (every conformance variant, fixed weights
and inputs) recorded from the code *before* both layers moved onto the op; the current code must
reproduce them to float noise (1e-6, relative for fields larger than 1). Regenerate only on
purpose, with ``python tests/unit/test_chunk_ops.py --write-fixture`` (and bump the plugin
versions then).
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from arflowbench.attention.ops import (
    FLA_IMPL,
    chunk_recurrence,
    chunk_states,
    gate_log_decay,
    gate_log_decay_ref,
    naive_chunk_recurrence,
    recurrence,
    recurrent_step,
)
from arflowbench.plugins import ATTENTION

# fp32 paths against float64 loops over a few hundred tokens: ~1e-6 reached, asserted with margin
ATOL = 1e-5
B, H, C, N, DK, DV = 2, 3, 5, 6, 8, 5  # dk != dv on purpose


def _leaves(gated: bool, with_init: bool, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = {"q": torch.randn(B, H, C, N, DK, generator=g), "k": torch.randn(B, H, C, N, DK, generator=g),
         "v": torch.randn(B, H, C, N, DV, generator=g)}
    if gated:
        t["log_decay"] = F.logsigmoid(torch.randn(B, H, C, N, generator=g)) / 16
    if with_init:
        t["initial_state"] = torch.randn(B, H, DK, DV, generator=g)
    return {k: v.requires_grad_(True) for k, v in t.items()}


def _run_step(q, k, v, log_decay=None, initial_state=None):
    """`recurrent_step` chunk by chunk (the sampling path), with kv and base given."""
    state = q.new_zeros(B, H, DK, DV) if initial_state is None else initial_state
    outs = []
    for c in range(C):
        one = slice(c, c + 1)  # the (B, H, 1, N, d) layout of a single chunk
        ld = None if log_decay is None else log_decay[:, :, one]
        qc, kc, vc = q[:, :, one], k[:, :, one], v[:, :, one]
        out, state = recurrent_step(qc, kc, vc, ld, state, kv=kc.transpose(-1, -2) @ vc,
                                    base=torch.zeros_like(vc))
        outs.append(out)
    return torch.cat(outs, dim=2), state, "step"


def _run_pytorch(with_extras: bool):
    def run(q, k, v, log_decay=None, initial_state=None):
        extras = {"kv": k.transpose(-1, -2) @ v, "base": torch.zeros_like(v)} if with_extras else {}
        res = chunk_recurrence(q, k, v, log_decay, initial_state, output_final_state=True, **extras)
        return res.out, res.final_state, res.implementation
    return run


PATHS = ["pytorch", "pytorch+kv+base", "fla:simple_gla.naive_recurrent",
         "fla:simple_gla.naive_chunk", "fla:linear_attn.naive_recurrent", "step"]


@pytest.mark.parametrize("with_init", [False, True], ids=["zero-state", "initial-state"])
@pytest.mark.parametrize("gated", [False, True], ids=["no-decay", "gated"])
@pytest.mark.parametrize("path", PATHS)
def test_every_path_matches_the_naive_loop(path, gated, with_init, request, monkeypatch):
    if path.startswith("fla:"):
        kernel = request.getfixturevalue("fla_naive_kernels")[path[4:]]
        if kernel.gate_free and gated:
            pytest.skip("fla's naive linear attention has no gate")
        monkeypatch.setattr(recurrence, "select_kernel", lambda q, v, **kw: (kernel, FLA_IMPL))
        run, want_impl = _run_pytorch(with_extras=True), FLA_IMPL
    elif path == "step":
        run, want_impl = _run_step, "step"
    else:
        run, want_impl = _run_pytorch(with_extras=path != "pytorch"), "pytorch chunked (CPU)"
    leaves = _leaves(gated, with_init)
    ref_leaves = {k: v.detach().double().requires_grad_(True) for k, v in leaves.items()}
    out, final, impl = run(**leaves)
    want_out, want_final = naive_chunk_recurrence(**ref_leaves)
    assert impl == want_impl
    if path.startswith("fla:"):  # no decay reaches fla as g=None
        assert (kernel.last_g is None) == (not gated)
    assert want_out.abs().max() > 1.0  # a non-trivial comparison
    torch.testing.assert_close(out, want_out.float(), atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(final, want_final.float(), atol=ATOL, rtol=ATOL)
    g = torch.Generator().manual_seed(9)
    w_out, w_final = torch.randn(out.shape, generator=g), torch.randn(final.shape, generator=g)
    ((out * w_out).sum() + (final * w_final).sum()).backward()
    ((want_out * w_out.double()).sum() + (want_final * w_final.double()).sum()).backward()
    for name, leaf in leaves.items():
        torch.testing.assert_close(leaf.grad, ref_leaves[name].grad.float(), atol=ATOL, rtol=ATOL,
                                   msg=lambda m, name=name: f"grad of {name}: {m}")


@torch.no_grad()
def test_pytorch_form_is_chunk_causal_bit_exact():
    leaves = _leaves(gated=True, with_init=True)
    out = chunk_recurrence(**leaves).out
    for name in ("q", "k", "v", "log_decay"):
        perturbed = dict(leaves)
        perturbed[name] = leaves[name].clone()
        perturbed[name][:, :, 3] -= 0.5
        out2 = chunk_recurrence(**perturbed).out
        assert torch.equal(out[:, :, :3], out2[:, :, :3]), name


def test_chunk_states_of_a_vector_state_match_a_loop():
    """The normaliser's recursion (a (B, H, d) state) through the same function."""
    g = torch.Generator().manual_seed(4)
    inc, init = torch.randn(B, H, C, DK, generator=g), torch.randn(B, H, DK, generator=g)
    log_gamma = -torch.rand(B, H, C, generator=g)
    states, final = chunk_states(inc, log_gamma, init, output_final_state=True)
    s = init
    for c in range(C):
        torch.testing.assert_close(states[:, :, c], s)
        s = log_gamma[:, :, c].exp()[..., None] * s + inc[:, :, c]
    torch.testing.assert_close(final, s)


def test_implementation_is_named_and_never_silently_replaced():
    q = torch.zeros(1, 1, 1, 2, 4)
    assert recurrence.select_kernel(q, q) == (None, "pytorch chunked (CPU)")
    assert recurrence.expected_implementation(cuda=False) == "pytorch chunked (CPU)"
    wide = types.SimpleNamespace(is_cuda=True, shape=(1, 1, 1, 2, 512))  # fla not even imported
    assert recurrence.select_kernel(wide, wide) == (
        None, "pytorch chunked (CUDA; fla not used: head dim > 256)")


def test_gate_matches_its_float64_twin_and_expanded_cond():
    torch.manual_seed(0)
    proj = nn.Linear(16, 2, bias=False)
    x, cond = torch.randn(2, 12, 16), torch.randn(2, 3, 1, 16)
    cond = cond.expand(2, 3, 4, 16).reshape(2, 12, 16)  # one vector per image of 4 tokens
    g = gate_log_decay(proj, x, cond, chunk_size=4)  # (B, H, C, N)
    assert g.shape == (2, 2, 3, 4) and (g < 0).all()
    want = gate_log_decay_ref(proj, x, cond).view(2, 2, 3, 4)
    torch.testing.assert_close(g, want.float(), atol=1e-6, rtol=1e-6)
    one = cond[:, :1].expand(2, 12, 16)  # stride 0 over the tokens: projected once
    torch.testing.assert_close(gate_log_decay(proj, x, one, 4),
                               gate_log_decay(proj, x, one.contiguous(), 4), atol=1e-7, rtol=0)


# -- before / after -------------------------------------------------------------------------------
FIXTURE = Path(__file__).parent / "data" / "attention_before_ops.pt"
FIX_D, FIX_H, FIX_N, FIX_C, FIX_B = 32, 2, 4, 5, 2  # width, heads, chunk, chunks, batch
BEFORE_AFTER_TOL = 1e-6


def _record(name: str, options: dict) -> dict[str, torch.Tensor]:
    """Outputs, input/decay gradients and step results of one backend variant, all float32."""
    m = ATTENTION.load(name)(FIX_D, FIX_H, FIX_N, **options)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # weights from our own generator: independent of nn.Linear's init
        for _, p in sorted(m.named_parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * p.shape[-1] ** -0.5)
    x = torch.randn(FIX_B, FIX_C * FIX_N, FIX_D, generator=g, requires_grad=True)
    cond = torch.randn(FIX_B, FIX_C * FIX_N, FIX_D, generator=g, requires_grad=True)
    y = m(x, cond)
    (y * torch.randn(y.shape, generator=g)).sum().backward()
    rec = {"y": y.detach(), "dx": x.grad,
           "dcond": torch.zeros_like(cond) if cond.grad is None else cond.grad}
    if getattr(m, "decay_proj", None) is not None:
        rec["ddecay"] = m.decay_proj.weight.grad
    with torch.no_grad():
        state, ys = m.init_state(FIX_B), []
        for c in range(FIX_C):
            sl = slice(c * FIX_N, (c + 1) * FIX_N)
            out, state = m.step(x[:, sl], state, cond[:, sl])
            ys.append(out)
    rec["y_step"] = torch.cat(ys, dim=1)
    states = state if isinstance(state, dict) else {"": state}
    rec.update({f"state{'.' + k if k else ''}": v for k, v in states.items()})
    return {k: v.detach().clone() for k, v in rec.items()}


def _variants() -> dict[str, tuple[str, dict]]:
    out = {}
    for name in ("hybrid", "linear"):
        for variant in ATTENTION.load(name).conformance_variants:
            tag = ",".join(f"{k}={v}" for k, v in sorted(variant.items())) or "default"
            out[f"{name}-{tag}"] = (name, dict(variant))
    return out


def _fixture_keys() -> list[str]:
    return sorted(torch.load(FIXTURE)) if FIXTURE.exists() else []


@pytest.mark.parametrize("key", _fixture_keys())
def test_outputs_match_the_code_before_the_ops_refactor(key):
    want = torch.load(FIXTURE)[key]
    name, options = want.pop("__variant__")
    got = _record(name, options)
    assert got.keys() == want.keys()
    for field, ref in want.items():
        # 1e-6, relative to the field's scale above 1: one float32 ulp of an output near 28
        # (linear, identity features, no normaliser) is already 1.9e-6
        err = (got[field] - ref).abs().max().item()
        tol = BEFORE_AFTER_TOL * max(1.0, ref.abs().max().item())
        assert err <= tol, f"{key} {field}: max abs diff {err:.3g} > {tol:.3g}"


def test_fixture_covers_every_conformance_variant():
    assert set(_variants()) <= set(_fixture_keys())


@pytest.mark.parametrize("key", sorted(_variants()))
def test_layer_fla_code_path_on_cpu(key, fla_naive_kernels, monkeypatch):
    """Each layer's forward with the op sent down its fla path (fla's naive recurrence standing in
    for the CUDA kernel): the PyTorch path's outputs and gradients, and the name says fla."""
    name, options = _variants()[key]
    kernel = fla_naive_kernels["simple_gla.naive_recurrent"]
    torch.manual_seed(0)
    m = ATTENTION.load(name)(32, 4, 6, **options)
    x, cond = torch.randn(2, 30, 32), torch.randn(2, 30, 32)
    runs = {}
    for path in ("fla", "pytorch"):
        with monkeypatch.context() as patch:
            if path == "fla":
                patch.setattr(recurrence, "select_kernel", lambda q, v, **kw: (kernel, FLA_IMPL))
            m.zero_grad()
            y = m(x, cond)
            (y * torch.linspace(-1, 1, 32)).sum().backward()
            runs[path] = (y, {n: p.grad for n, p in m.named_parameters()}, m.implementation)
    (y_fla, g_fla, impl_fla), (y_pt, g_pt, impl_pt) = runs["fla"], runs["pytorch"]
    assert (kernel.last_g is None) == (getattr(m, "decay_proj", None) is None)
    assert FLA_IMPL in impl_fla and impl_pt == type(m).availability().implementation
    torch.testing.assert_close(y_fla, y_pt, atol=ATOL, rtol=ATOL)
    for pname in g_pt:  # gradients flow through the read/write layout alike
        torch.testing.assert_close(g_fla[pname], g_pt[pname], atol=1e-4, rtol=1e-4)


if __name__ == "__main__" and sys.argv[1:] == ["--write-fixture"]:
    torch.set_num_threads(1)
    fixture = {}
    for key, (name, options) in _variants().items():
        fixture[key] = {"__variant__": (name, options), **_record(name, options)}
    FIXTURE.parent.mkdir(exist_ok=True)
    torch.save(fixture, FIXTURE)
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size} bytes): {sorted(fixture)}")
