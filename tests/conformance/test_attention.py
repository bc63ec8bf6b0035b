"""The attention conformance suite, parametrised over every registered backend and its variants.

Cases are derived from `ATTENTION.names()` (never a hand list) and from each backend's
``conformance_variants`` class attribute (default ``({},)``). A backend that fails to load or is
unavailable on this machine is skipped with its reason (shown by ``pytest -ra``).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from arflowbench.errors import PluginUnavailableError
from arflowbench.machine import torch_threads
from arflowbench.plugins import ATTENTION, availability_for

DIM, HEADS, CHUNK, CHUNKS, BATCH = 64, 4, 8, 8, 2
TOL = 1e-5


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These tensors are tiny: on a busy 2-core box extra intra-op threads only add waiting."""
    with torch_threads(1):
        yield


def _cases() -> list:
    params = []
    for name in ATTENTION.names():
        try:
            cls = ATTENTION.load(name)
        except PluginUnavailableError as err:
            params.append(pytest.param((name, {}, str(err)), id=f"{name}-unloadable"))
            continue
        for variant in getattr(cls, "conformance_variants", ({},)):
            tag = ",".join(f"{k}={v}" for k, v in sorted(variant.items())) or "default"
            params.append(pytest.param((name, dict(variant), None), id=f"{name}-{tag}"))
    return params


@pytest.fixture(params=_cases())
def backend(request):
    """A (64 dim, 4 heads, chunk 8) float32 backend with seeded weights, or a visible skip."""
    name, variant, load_error = request.param
    if load_error is not None:
        pytest.skip(load_error)
    cls = ATTENTION.load(name)
    avail = availability_for(cls, "cpu")  # these cases run CPU tensors, on any machine
    if not avail.available:
        pytest.skip(f"attention {name!r} unavailable here: {avail.reason}")
    torch.manual_seed(0)
    return cls(DIM, HEADS, CHUNK, **variant).float()


def _inputs(seed: int = 1, batch: int = BATCH, chunks: int = CHUNKS):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, chunks * CHUNK, DIM, generator=g)
    cond = torch.randn(batch, chunks * CHUNK, DIM, generator=g)
    return x, cond


def _need_step(backend) -> None:
    if not backend.supports_step:
        pytest.skip(f"attention {backend.name!r} does not implement step")


def _tree_map(fn, tree: Any) -> Any:
    if isinstance(tree, torch.Tensor):
        return fn(tree)
    if isinstance(tree, (tuple, list)):
        return type(tree)(_tree_map(fn, t) for t in tree)
    if isinstance(tree, dict):
        return {k: _tree_map(fn, v) for k, v in tree.items()}
    return tree


def _tree_equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_tree_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_tree_equal(a[k], b[k]) for k in a)
    return a == b


def _run_steps(backend, x: torch.Tensor, cond: torch.Tensor):
    state = backend.init_state(x.shape[0], device=x.device)
    outs = []
    for c in range(x.shape[1] // CHUNK):
        sl = slice(c * CHUNK, (c + 1) * CHUNK)
        y, state = backend.step(x[:, sl], state, cond[:, sl])
        outs.append(y)
    return torch.cat(outs, dim=1), state


# (a)
@torch.no_grad()
def test_output_shape(backend):
    x, cond = _inputs()
    y = backend(x, cond)
    assert y.shape == x.shape and y.dtype == x.dtype


# (b)
def test_gradients_finite(backend):
    x, cond = _inputs()
    x.requires_grad_(True)
    y = backend(x, cond)
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(7))
    (y * w).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for pname, p in backend.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"no gradient reaches {pname}"
            assert torch.isfinite(p.grad).all(), f"non-finite gradient in {pname}"


# (c)
@torch.no_grad()
def test_forward_matches_reference(backend):
    x, cond = _inputs()
    y = backend(x, cond)
    ref = backend.reference(x, cond)
    err = (y - ref).abs().max().item()
    assert torch.allclose(y, ref, atol=TOL, rtol=TOL), f"max abs error {err:.3g}"


# (d)
@torch.no_grad()
@pytest.mark.parametrize("k", [0, 3, CHUNKS - 1])
def test_chunk_causality_bit_exact(backend, k):
    x, cond = _inputs()
    x2, cond2 = x.clone(), cond.clone()
    g = torch.Generator().manual_seed(11)
    sl = slice(k * CHUNK, (k + 1) * CHUNK)
    x2[:, sl] += torch.randn(x2[:, sl].shape, generator=g)
    cond2[:, sl] += torch.randn(cond2[:, sl].shape, generator=g)
    y, y2 = backend(x, cond), backend(x2, cond2)
    assert torch.equal(y[:, : k * CHUNK], y2[:, : k * CHUNK]), "earlier chunks changed"
    assert not torch.allclose(y[:, sl], y2[:, sl]), "perturbed chunk did not change"


# (e)
@torch.no_grad()
def test_step_matches_forward(backend):
    _need_step(backend)
    x, cond = _inputs()
    y = backend(x, cond)
    ys, _ = _run_steps(backend, x, cond)
    err = (y - ys).abs().max().item()
    assert torch.allclose(y, ys, atol=TOL, rtol=TOL), f"max abs error {err:.3g}"


# (f)
@torch.no_grad()
def test_step_is_pure(backend):
    _need_step(backend)
    x, cond = _inputs(chunks=3)
    _, state = _run_steps(backend, x[:, : 2 * CHUNK], cond[:, : 2 * CHUNK])
    before = _tree_map(lambda t: t.clone(), state)
    chunk, cchunk = x[:, 2 * CHUNK :], cond[:, 2 * CHUNK :]
    y1, new1 = backend.step(chunk, state, cchunk)
    assert _tree_equal(state, before), "step mutated the state it was given"
    y2, new2 = backend.step(chunk, state, cchunk)  # re-running from the same state agrees
    assert torch.equal(y1, y2) and _tree_equal(new1, new2)


# (g)
@torch.no_grad()
def test_batch_independence(backend):
    x, cond = _inputs(batch=3)
    x2, cond2 = x.clone(), cond.clone()
    g = torch.Generator().manual_seed(5)
    x2[1:] = torch.randn(x2[1:].shape, generator=g)
    cond2[1:] = torch.randn(cond2[1:].shape, generator=g)
    y, y2 = backend(x, cond), backend(x2, cond2)
    assert torch.equal(y[0], y2[0])
    assert not torch.allclose(y[1:], y2[1:])


# (h)
def test_bad_lengths_raise(backend):
    x = torch.randn(BATCH, CHUNK + 3, DIM)
    with pytest.raises(ValueError, match=rf"{CHUNK + 3}.*{CHUNK}"):
        backend(x, torch.randn_like(x))
    if backend.supports_step:
        state = backend.init_state(BATCH)
        bad = torch.randn(BATCH, CHUNK - 3, DIM)
        with pytest.raises(ValueError, match=rf"{CHUNK}.*{CHUNK - 3}"):
            backend.step(bad, state, torch.randn_like(bad))
