"""SiT: probability paths, the velocity -> score identity, the samplers (NFE and accuracy on
analytic fields), classifier-free guidance, and a short training run on digits."""

from __future__ import annotations

import math

import pytest
import torch

from arflowbench.config import TrainSpec
from arflowbench.errors import ConfigError
from arflowbench.formulations.base import guided
from arflowbench.formulations.paths import (
    GVPPath,
    LinearPath,
    interpolate,
    score_from_velocity,
)
from arflowbench.formulations.samplers import SAMPLERS
from arflowbench.formulations.sit import SiT, SiTConfig
from arflowbench.trainer import train

pytestmark = pytest.mark.usefixtures("single_thread")


# ---------------------------------------------------------------------------------- paths
@pytest.mark.parametrize("t_shape", [(4,), (4, 3)])
def test_linear_interpolation_and_target(t_shape):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(*t_shape, 1, 8, 8, generator=g)
    x1 = torch.randn(*t_shape, 1, 8, 8, generator=g)
    t = torch.rand(t_shape, generator=g)
    xt, target = interpolate(LinearPath(), x0, x1, t)
    tb = t.reshape(*t_shape, 1, 1, 1)
    torch.testing.assert_close(xt, tb * x1 + (1 - tb) * x0)
    torch.testing.assert_close(target, x1 - x0)


def test_gvp_endpoints():
    path = GVPPath()
    t = torch.tensor([0.0, 1.0])
    (a, da), (s, ds) = path.alpha(t), path.sigma(t)
    half_pi = math.pi / 2
    torch.testing.assert_close(a, torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(s, torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(da, torch.tensor([half_pi, 0.0]))
    torch.testing.assert_close(ds, torch.tensor([0.0, -half_pi]))
    # variance preserving: alpha^2 + sigma^2 = 1 everywhere
    tt = torch.linspace(0, 1, 11)
    torch.testing.assert_close(path.alpha(tt)[0] ** 2 + path.sigma(tt)[0] ** 2, torch.ones(11))
    x0, x1 = torch.randn(2, 3), torch.randn(2, 3)
    xt, _ = interpolate(path, x0, x1, torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(xt, torch.stack([x0[0], x1[1]]))


def test_score_from_velocity_linear_formula():
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(5, 1, 4, 4, generator=g), torch.randn(5, 1, 4, 4, generator=g)
    t = torch.tensor([0.0, 0.1, 0.5, 0.9, 0.99])
    tb = t[:, None, None, None]
    torch.testing.assert_close(score_from_velocity(LinearPath(), v, x, t), (tb * v - x) / (1 - tb))


def _gaussian_velocity(path, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Exact velocity E[dx_t/dt | x_t] when the data is N(0, I): x_t ~ N(0, a^2 + s^2), so
    v = (a da + s ds) / (a^2 + s^2) x."""
    (a, da), (s, ds) = path.alpha(t), path.sigma(t)
    return (a * da + s * ds) / (a**2 + s**2) * x


@pytest.mark.parametrize("path", [LinearPath(), GVPPath()], ids=["linear", "gvp"])
def test_score_from_velocity_on_gaussian_data(path):
    """For N(0, I) data the true score is -x / (a^2 + s^2): the identity must recover it."""
    t = torch.tensor([0.05, 0.3, 0.5, 0.8, 0.95])
    x = torch.randn(5)
    (a, _), (s, _) = path.alpha(t), path.sigma(t)
    got = score_from_velocity(path, _gaussian_velocity(path, x, t), x, t)
    torch.testing.assert_close(got, -x / (a**2 + s**2))


# ---------------------------------------------------------------------------------- samplers
class StubField:
    """A velocity field with a closed form; records how it was called."""

    def __init__(self, fn):
        self.fn, self.nfe, self.advances = fn, 0, 0

    def __call__(self, x: torch.Tensor, t: float, advance: bool) -> torch.Tensor:
        self.nfe += 1
        self.advances += int(advance)
        return self.fn(x, t)


def _decay(x, t):
    return -x  # dx/dt = -x: x(1) = x(0) / e


@pytest.mark.parametrize("sampler, nfe, advances", [
    ("euler", lambda n: n, lambda n: n),
    ("heun", lambda n: 2 * n, lambda n: n),
    ("sde", lambda n: n, lambda n: n),
])
@pytest.mark.parametrize("steps", [1, 7])
def test_sampler_nfe(sampler, nfe, advances, steps):
    field = StubField(_decay)
    out = SAMPLERS[sampler](field, torch.ones(3, 2), steps, torch.Generator().manual_seed(0),
                            LinearPath())
    assert out.shape == (3, 2) and torch.isfinite(out).all()
    assert field.nfe == nfe(steps) and field.advances == advances(steps)


def test_euler_and_heun_match_their_closed_forms():
    """On dx/dt = -x one Euler step multiplies by (1 - h), one Heun step by (1 - h + h^2/2)."""
    x0 = torch.randn(4, dtype=torch.float64)
    n = 10
    h = 1 / n
    euler = SAMPLERS["euler"](StubField(_decay), x0, n, None, LinearPath())
    heun = SAMPLERS["heun"](StubField(_decay), x0, n, None, LinearPath())
    torch.testing.assert_close(euler, x0 * (1 - h) ** n)
    torch.testing.assert_close(heun, x0 * (1 - h + h * h / 2) ** n)


def test_dopri5_agrees_with_heun_and_exact_solution():
    x0 = torch.randn(6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    field = StubField(_decay)
    adaptive = SAMPLERS["dopri5"](field, x0, 0, None, LinearPath(), rtol=1e-9, atol=1e-12)
    assert field.nfe > 0 and field.advances == 0  # stages never commit a stateful field
    heun = SAMPLERS["heun"](StubField(_decay), x0, 400, None, LinearPath())
    exact = x0 * math.exp(-1)
    torch.testing.assert_close(adaptive, exact, atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(heun, adaptive, atol=1e-5, rtol=1e-5)
    loose = StubField(_decay)
    SAMPLERS["dopri5"](loose, x0, 0, None, LinearPath(), rtol=1e-3, atol=1e-6)
    assert 0 < loose.nfe < field.nfe  # the tolerances reach torchdiffeq


@pytest.mark.parametrize("path", [LinearPath(), GVPPath()], ids=["linear", "gvp"])
def test_samplers_transport_gaussian_noise_to_gaussian_data(path):
    """With the exact velocity of N(0, 1) data, every sampler must end at N(0, 1): the ODE maps
    each noise draw to itself, the SDE only in distribution (tests its drift and diffusion)."""
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(20000, generator=g)

    def field():
        return StubField(lambda x, t: _gaussian_velocity(path, x, torch.tensor(t)))

    for name in ("heun", "dopri5"):
        out = SAMPLERS[name](field(), noise, 50, g, path, rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(out, noise, atol=1e-3, rtol=1e-3)
    out = SAMPLERS["sde"](field(), noise, 100, g, path)
    assert not torch.allclose(out, noise, atol=0.1)  # the SDE really injects noise
    assert abs(float(out.mean())) < 0.03 and abs(float(out.std()) - 1) < 0.03


# ---------------------------------------------------------------------------------- guidance
def test_guided_combination():
    v_c, v_u = torch.randn(3, 4), torch.randn(3, 4)
    both = torch.cat([v_c, v_u])
    assert torch.equal(guided(both, 0.0), v_u)
    torch.testing.assert_close(guided(both, 1.0), v_c)
    torch.testing.assert_close(guided(both, 4.0), v_u + 4 * (v_c - v_u))


@torch.no_grad()
def test_cfg_scale_one_is_exactly_unguided(debug_model):
    labels = torch.tensor([0, 4, 9])
    res = SiT().sample(debug_model, labels, 4, "euler", 1.0, torch.Generator().manual_seed(5))
    assert res.images.shape == (3, 1, 8, 8) and res.nfe == 4
    # the plain conditional Euler loop, written out
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    ts = torch.linspace(0, 1, 5).tolist()
    for t0, t1 in zip(ts[:-1], ts[1:]):
        x = x + (t1 - t0) * debug_model(x[:, None], torch.full((3, 1), t0), labels)[:, 0]
    assert torch.equal(res.images, x)


@torch.no_grad()
def test_guided_sampling_combines_conditional_and_null(debug_model):
    labels = torch.tensor([1, 2])
    res = SiT().sample(debug_model, labels, 1, "euler", 3.0, torch.Generator().manual_seed(2))
    assert res.nfe == 1  # conditional and null halves run in one batch and count once
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    t = torch.zeros(2, 1)
    v_c = debug_model(x[:, None], t, labels)[:, 0]
    v_u = debug_model(x[:, None], t, torch.full_like(labels, debug_model.null_class))[:, 0]
    assert not torch.allclose(v_c, v_u)
    torch.testing.assert_close(res.images, x + v_u + 3.0 * (v_c - v_u), atol=1e-5, rtol=1e-5)


def test_sampling_checks():
    sit = SiT()
    sit.check_sampling("heun", 2.0)
    with pytest.raises(ConfigError, match=r"unknown sampler 'ddim' \(allowed: euler, heun, sde, dopri5\)"):
        sit.check_sampling("ddim", 1.0)
    no_dropout = SiT(SiTConfig(class_dropout=0.0))
    no_dropout.check_sampling("euler", 1.0)
    with pytest.raises(ConfigError, match="cfg_scale 1.5 needs a model trained with class_dropout > 0"):
        no_dropout.check_sampling("euler", 1.5)
    with pytest.raises(ConfigError, match="cfg_scale"):
        no_dropout.sample(None, torch.tensor([0]), 2, "euler", 1.5, torch.Generator())


def test_label_dropout_rate():
    y = torch.zeros(4000, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(SiT(SiTConfig(class_dropout=0.0)).drop_labels(y, 10, g), y)
    dropped = SiT(SiTConfig(class_dropout=0.25)).drop_labels(y, 10, g)
    assert set(dropped.tolist()) == {0, 10}
    assert abs(float((dropped == 10).float().mean()) - 0.25) < 0.03


# ---------------------------------------------------------------------------------- training
def test_make_batch_and_loss_shapes(digits_train, model_factory):
    sit = SiT(SiTConfig(path="gvp"))
    x, y = sit.make_batch(digits_train, 16, torch.Generator().manual_seed(0))
    assert x.shape == (16, 1, 1, 8, 8) and x.dtype == torch.uint8 and y.shape == (16,)
    out = sit.training_loss(model_factory(), x, y, torch.Generator().manual_seed(0))
    assert out["loss"].dim() == 0 and out["loss"].requires_grad


def test_sixty_training_steps_lower_the_loss(digits_train, model_factory, tmp_path):
    model = model_factory(seed=0).train()
    spec = TrainSpec(steps=60, batch_size=64, lr=1e-3, seed=0)
    ckpt = tmp_path / "ckpt.pt"
    ema, result = train(model, SiT(), digits_train, spec, train_id="test-sit", checkpoint_path=ckpt,
                        checkpoint_every=1000)
    assert len(result.losses) == 60 and ckpt.exists()
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    assert all(math.isfinite(v) for v in result.losses)
    # the EMA model is a separate, trained copy (no longer the zero-output initial model)
    sample = SiT().sample(ema, torch.tensor([3, 3]), 4, "euler", 1.0, torch.Generator().manual_seed(0))
    assert torch.isfinite(sample.images).all()
