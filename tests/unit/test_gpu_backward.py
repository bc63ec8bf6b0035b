"""GPU kernels under training: forward *and backward* against the PyTorch path, in float32 and
under bf16 autocast. Runs only where CUDA is present (`make test-gpu` runs every @gpu test)."""

from __future__ import annotations

import pytest
import torch

from arflowbench.attention.ops import recurrence
from arflowbench.plugins import ATTENTION, availability_for

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

DIM, HEADS, CHUNK, CHUNKS, BATCH = 128, 2, 64, 4, 2


def _grads(m, x, cond):
    m.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_(True)
    y = m(x, cond)
    (y * torch.linspace(-1, 1, y.shape[-1], device=y.device)).sum().backward()
    return y.detach(), x.grad, {n: p.grad for n, p in m.named_parameters()}, m.implementation


def _inputs():
    g = torch.Generator(device="cuda").manual_seed(0)
    shape = (BATCH, CHUNKS * CHUNK, DIM)
    return (torch.randn(shape, device="cuda", generator=g),
            torch.randn(shape, device="cuda", generator=g))


def _pytorch_only(monkeypatch):
    monkeypatch.setattr(recurrence, "select_kernel",
                        lambda q, v, **kw: (None, "pytorch chunked (CUDA; test)"))


@pytest.mark.parametrize("name,options", [("hybrid", {}), ("hybrid", {"decay": "none"}),
                                          ("linear", {"decay": "gated"}), ("linear", {})])
def test_fla_forward_and_backward_match_pytorch(name, options, monkeypatch):
    torch.manual_seed(0)
    m = ATTENTION.load(name)(DIM, HEADS, CHUNK, **options).cuda()
    x, cond = _inputs()
    y, gx, gp, impl = _grads(m, x, cond)
    assert "fla" in impl  # either fla ran, or the row says why not ("fla not used: ...")
    with monkeypatch.context() as patch:
        _pytorch_only(patch)
        y_ref, gx_ref, gp_ref, _ = _grads(m, x, cond)
    torch.testing.assert_close(y, y_ref, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(gx, gx_ref, atol=2e-3, rtol=2e-3)
    for pname, grad in gp_ref.items():
        torch.testing.assert_close(gp[pname], grad, atol=5e-3, rtol=5e-3, msg=pname)


@pytest.mark.parametrize("name", ["hybrid", "linear", "mamba", "softmax", "xformers"])
def test_bf16_autocast_training_step_is_finite(name):
    cls = ATTENTION.load(name)
    avail = availability_for(cls, "cuda")
    if not avail.available:
        pytest.skip(avail.reason)
    torch.manual_seed(0)
    m = cls(DIM, HEADS, CHUNK).cuda()
    x, cond = _inputs()
    with torch.autocast("cuda", torch.bfloat16):
        y = m(x.requires_grad_(True), cond)
    y.float().square().mean().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


def test_mamba_cuda_forward_and_backward_match_pytorch_path():
    cls = ATTENTION.load("mamba")
    impl = availability_for(cls, "cuda").implementation
    if not impl.startswith("mamba-ssm CUDA"):
        pytest.skip(impl)
    torch.manual_seed(0)
    m = cls(64, 4, 16).cuda()
    x = torch.randn(2, 64, 64, device="cuda")
    y, gx, gp, impl = _grads(m, x, None)
    assert impl.startswith("mamba-ssm CUDA")
    m.zero_grad(set_to_none=True)
    xr = x.detach().requires_grad_(True)
    yr = m._mix(xr, m.init_state(2, "cuda"))[0]
    (yr * torch.linspace(-1, 1, 64, device="cuda")).sum().backward()
    torch.testing.assert_close(y, yr.detach(), atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(gx, xr.grad, atol=1e-3, rtol=1e-3)


def test_xformers_backward_matches_softmax():
    cls = ATTENTION.load("xformers")
    avail = availability_for(cls, "cuda")
    if not avail.available:
        pytest.skip(avail.reason)
    torch.manual_seed(0)
    xf = cls(DIM, HEADS, CHUNK).cuda()
    sm = ATTENTION.load("softmax")(DIM, HEADS, CHUNK).cuda()
    sm.load_state_dict(xf.state_dict())
    x, _ = _inputs()
    y, gx, gp, _ = _grads(xf, x, None)
    y_ref, gx_ref, gp_ref, _ = _grads(sm, x, None)
    torch.testing.assert_close(y, y_ref, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(gx, gx_ref, atol=2e-3, rtol=2e-3)
