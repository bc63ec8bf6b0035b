"""ARFlow formulation: class-grouped batches, training, autoregressive sampling with a state.

The key test is `test_recurrent_sampling_equals_parallel_forward`: the velocities the sampler got
from `model.step` (one chunk at a time, carried state) must equal `model.forward` run in parallel on
the sequence of noisy images the sampler produced. That is what links training (parallel form) to
sampling (recurrent form).
"""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from arflowbench.benchmarks.timing import tensor_bytes
from arflowbench.config import AttentionSpec, ModelSpec
from arflowbench.data.base import ImageSet
from arflowbench.data.digits import Digits
from arflowbench.errors import ConfigError
from arflowbench.formulations.arflow import ARFlow, ARFlowField
from arflowbench.formulations.samplers import SAMPLERS
from arflowbench.machine import torch_threads
from arflowbench.models.backbone import DiT
from arflowbench.models.build import build_model

PATCH = 2
TOKENS = (8 // PATCH) ** 2  # N tokens per 8x8 digit = one chunk


@pytest.fixture(autouse=True)
def one_thread():
    # These models are tiny: one thread avoids thread start-up and contention costs that dominate
    # on a shared 2-core machine.
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def digits() -> ImageSet:
    return Digits().load("train")


def make_model(attention: str = "hybrid", seed: int = 0, perturb: bool = True) -> DiT:
    """A debug DiT for 8x8 digits. adaLN-Zero makes a fresh model output exactly zero, which
    would make every sampling comparison trivial: `perturb` moves all weights off their init."""
    torch.manual_seed(seed)
    m = build_model(ModelSpec(flavor="debug", patch_size=PATCH), AttentionSpec(name=attention),
                    image_size=8, channels=1, num_classes=10)
    if perturb:
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.05 * torch.randn_like(p))
    return m.eval()


class StepRecorder:
    """Wraps `model.step`, recording each call's inputs, the state object given and the output."""

    def __init__(self, model: DiT):
        self.calls: list[dict] = []
        self._step = model.step
        model.step = self  # instance attribute: the field's `model.step(...)` lands here

    def __call__(self, x, t, y, state):
        v, new_state = self._step(x, t, y, state)
        self.calls.append(dict(x=x.clone(), t=t.clone(), y=y.clone(), v=v.clone(), state_in=state,
                               state_out=new_state))
        return v, new_state


def noise(shape, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------ batches
def test_batches_are_same_class_sequences(digits):
    f = ARFlow(ARFlow.Config(images_per_sequence=5))
    x, y = f.make_batch(digits, 40, torch.Generator().manual_seed(1))
    assert x.shape == (8, 5, 1, 8, 8) and x.dtype == torch.uint8 and y.shape == (8,)
    # The same draw through the sampler's indices: every image has the sequence's class.
    idx, labels = f.sequence_sampler(digits).indices(8, torch.Generator().manual_seed(1))
    assert torch.equal(digits.images[idx], x) and torch.equal(labels, y)
    assert (digits.labels[idx] == y[:, None]).all()
    assert all(len(set(row.tolist())) == 5 for row in idx)  # without replacement
    assert f.sequence_sampler(digits) is f.sequence_sampler(digits)  # cached per ImageSet


def test_random_class_grouping_mixes_classes(digits):
    f = ARFlow(ARFlow.Config(grouping="random-class"))
    idx, labels = f.sequence_sampler(digits).indices(32, torch.Generator().manual_seed(0))
    cls = digits.labels[idx]  # (B, S)
    assert (cls != cls[:, :1]).any()  # 32 items of 5 random images: some mix classes
    assert torch.equal(labels, cls[:, 0])  # the sequence label is the first image's


class SpyModel:
    """Stands in for the DiT in training_loss: records what it is called with."""

    null_class = 10

    def __call__(self, x, t, y):
        self.x, self.t, self.y = x, t, y
        return torch.zeros_like(x)


@pytest.mark.parametrize("ordering", ["sorted", "random"])
def test_training_times_per_image_and_sorted(digits, ordering):
    f = ARFlow(ARFlow.Config(ordering=ordering, class_dropout=0.0))
    g = torch.Generator().manual_seed(0)
    x, y = f.make_batch(digits, 80, g)
    spy = SpyModel()
    out = f.training_loss(spy, x, y, g)
    assert spy.t.shape == (16, 5) and torch.equal(spy.y, y)  # no dropout: labels untouched
    is_sorted = (spy.t.diff(dim=1) >= 0).all(dim=1)  # (B,)
    if ordering == "sorted":
        assert is_sorted.all()
    else:  # 16 random 5-tuples are all sorted with probability 120**-16
        assert not is_sorted.all()
    assert out["loss"].dim() == 0
    assert [k for k in out if k.startswith("loss_pos")] == [f"loss_pos{i}" for i in range(5)]


def test_label_dropout_one_label_per_sequence(digits):
    f = ARFlow(ARFlow.Config(class_dropout=0.5))
    g = torch.Generator().manual_seed(0)
    x, y = f.make_batch(digits, 200, g)
    spy = SpyModel()
    f.training_loss(spy, x, y, g)
    dropped = spy.y == SpyModel.null_class
    assert spy.y.shape == (40,) and dropped.any() and not dropped.all()
    assert torch.equal(spy.y[~dropped], y[~dropped])


def test_training_lowers_the_loss(digits):
    f = ARFlow()
    model = make_model("hybrid", perturb=False).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(40):
        x, y = f.make_batch(digits, 20, g)  # 4 sequences of 5 images
        loss = f.training_loss(model, x, y, g)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, (first, last)


def test_data_and_config_errors(digits):
    tiny = ImageSet(torch.zeros(13, 1, 8, 8, dtype=torch.uint8),
                    torch.tensor([0] * 3 + [1] * 10), num_classes=2)
    f = ARFlow(ARFlow.Config(images_per_sequence=4))
    with pytest.raises(ConfigError, match=r"S=4 .*smallest class \(3 images\)"):
        f.check_data(tiny)
    ARFlow(ARFlow.Config(images_per_sequence=3)).check_data(tiny)
    ARFlow(ARFlow.Config(images_per_sequence=4, grouping="random-class")).check_data(tiny)
    with pytest.raises(ConfigError, match="multiple of images_per_sequence 5"):
        ARFlow().make_batch(digits, 42, torch.Generator())
    with pytest.raises(ValidationError):
        ARFlow.Config(images_per_sequence=0)
    with pytest.raises(ValidationError):
        ARFlow.Config(order="sorted")  # strict: a typo is an error


# ------------------------------------------------------------------------------ sampling
def test_sampler_names_and_sampling_checks():
    assert ARFlow.samplers == ("euler", "heun", "sde")
    assert set(ARFlow.samplers) <= set(SAMPLERS)
    model = make_model()
    labels = torch.arange(2)
    with pytest.raises(ConfigError, match="dopri5"):
        ARFlow().sample(model, labels, 4, "dopri5", 1.0, torch.Generator())
    with pytest.raises(ConfigError, match="class_dropout"):
        ARFlow(ARFlow.Config(class_dropout=0.0)).sample(model, labels, 4, "euler", 1.5,
                                                        torch.Generator())
    # no guidance needs no null class
    out = ARFlow(ARFlow.Config(class_dropout=0.0)).sample(model, labels, 2, "euler", 1.0,
                                                          torch.Generator())
    assert out.nfe == 2


@pytest.mark.parametrize("sampler,factor", [("euler", 1), ("sde", 1), ("heun", 2)])
@pytest.mark.parametrize("cfg", [1.0, 1.5])
def test_sample_shape_and_nfe(sampler, factor, cfg):
    out = ARFlow().sample(make_model(), torch.tensor([0, 3, 7]), 6, sampler, cfg,
                          torch.Generator().manual_seed(0))
    assert out.images.shape == (3, 1, 8, 8) and torch.isfinite(out.images).all()
    assert out.nfe == factor * 6


def _euler(field, x, steps):
    return SAMPLERS["euler"](field, x, steps, None, ARFlow().path)


def test_guidance_scale_one_is_no_guidance():
    model, labels, x = make_model(), torch.tensor([1, 4]), noise((2, 1, 8, 8), 0)
    plain = ARFlowField(model, labels, 1.0)
    assert not plain.guide
    rec = StepRecorder(model)
    out_plain = _euler(plain, x, 5)
    assert all(c["x"].shape[0] == 2 for c in rec.calls)  # scale 1: no doubled batch
    # sample() at scale 1 is exactly the plain field on the same noise
    out = ARFlow().sample(model, labels, 5, "euler", 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(out.images, _euler(ARFlowField(model, labels, 1.0), noise((2, 1, 8, 8), 0), 5))
    # forcing both halves at scale 1 gives v_u + (v_c - v_u) = v_c: the conditional half
    # must have seen only its own (conditional) history
    forced = _euler(ARFlowField(model, labels, 1.0, guide=True), x, 5)
    torch.testing.assert_close(forced, out_plain, atol=1e-5, rtol=0)


def test_guided_states_stay_separate():
    """Guided sampling == a manual loop with two independent states (conditional, null)."""
    model, labels, steps, s = make_model(), torch.tensor([2, 5]), 6, 1.5
    x = noise((2, 1, 8, 8), 1)
    out = _euler(ARFlowField(model, labels, s), x.clone(), steps)
    null = torch.full_like(labels, model.null_class)
    st_c, st_u = model.init_state(2), model.init_state(2)
    ts = torch.linspace(0, 1, steps + 1).tolist()
    with torch.no_grad():
        for t0, t1 in zip(ts[:-1], ts[1:]):
            tt = torch.full((2,), t0)
            v_c, st_c = model.step(x, tt, labels, st_c)
            v_u, st_u = model.step(x, tt, null, st_u)
            x = x + (t1 - t0) * (v_u + s * (v_c - v_u))
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_guided_batch_independence(sampler):
    """Row 0 sampled alone == row 0 sampled among others, same initial noise. ODE samplers only:
    the SDE draws fresh noise for the whole batch from one generator at every step, so its
    noise for row 0 depends on the batch size by construction. The initial noise is passed
    explicitly for the same reason."""
    model, x = make_model(), noise((3, 1, 8, 8), 2)
    labels = torch.tensor([3, 8, 0])
    run = SAMPLERS[sampler]
    with torch.no_grad():
        batch = run(ARFlowField(model, labels, 1.5), x, 5, None, ARFlow().path)
        alone = run(ARFlowField(model, labels[:1], 1.5), x[:1], 5, None, ARFlow().path)
    torch.testing.assert_close(alone[0], batch[0], atol=1e-5, rtol=0)


def _parallel_check(model, rec, calls):
    """Stack the recorded chunks as one sequence and run the parallel forward on it."""
    X = torch.stack([c["x"] for c in calls], dim=1)  # (B', n, C, H, W)
    T = torch.stack([c["t"] for c in calls], dim=1)  # (B', n)
    with torch.no_grad():
        v_par = model(X, T, calls[0]["y"])  # (B', n, C, H, W)
    v_rec = torch.stack([c["v"] for c in calls], dim=1)
    return (v_par - v_rec).abs().max().item()


@pytest.mark.parametrize("attention", ["hybrid", "softmax"])
@pytest.mark.parametrize("sampler,cfg", [("euler", 1.0), ("sde", 1.0), ("euler", 1.5)])
def test_recurrent_sampling_equals_parallel_forward(attention, sampler, cfg):
    model = make_model(attention)
    rec = StepRecorder(model)
    steps = 8
    out = ARFlow().sample(model, torch.tensor([1, 6]), steps, sampler, cfg,
                          torch.Generator().manual_seed(3))
    assert len(rec.calls) == out.nfe == steps  # every evaluation is an accepted step here
    err = _parallel_check(model, rec, rec.calls)
    assert err < 1e-4, err
    assert rec.calls[-1]["v"].abs().max() > 1e-2  # the comparison is not between zeros


def test_heun_state_semantics_match_parallel_forward():
    """Heun: predictors commit, correctors do not. Predictor i sees x_{t_0..t_{i-1}}; corrector i
    sees x_{t_0..t_i} plus its predicted image at t_{i+1}; both checked against the parallel form."""
    model = make_model("hybrid")
    rec = StepRecorder(model)
    steps = 6
    out = ARFlow().sample(model, torch.tensor([0, 9]), steps, "heun", 1.5,
                          torch.Generator().manual_seed(4))
    assert out.nfe == len(rec.calls) == 2 * steps
    pred, corr = rec.calls[0::2], rec.calls[1::2]
    # the chain of states: each predictor gets what the previous predictor returned, and its
    # corrector gets that same committed state
    for i in range(steps):
        assert corr[i]["state_in"] is pred[i]["state_out"]
        if i + 1 < steps:
            assert pred[i + 1]["state_in"] is pred[i]["state_out"]
    assert _parallel_check(model, rec, pred) < 1e-4
    for i in range(steps):
        assert _parallel_check(model, rec, pred[: i + 1] + [corr[i]]) < 1e-4


def test_state_advances_once_per_accepted_step():
    model = make_model("softmax")
    field = ARFlowField(model, torch.tensor([1, 2]), 1.0)
    SAMPLERS["heun"](field, noise((2, 1, 8, 8), 0), 7, None, ARFlow().path)
    assert (field.nfe, field.advances) == (14, 7)
    k_cache, _ = field.state[0]  # softmax KV cache: (B, H, T, d), T grows one chunk per commit
    assert k_cache.shape[2] == 7 * TOKENS


def test_hybrid_state_memory_is_constant():
    sizes = {}
    for attention in ("hybrid", "softmax"):
        model = make_model(attention)
        for steps in (5, 50):
            field = ARFlowField(model, torch.tensor([1, 2]), 1.5)
            with torch.no_grad():
                _euler(field, noise((2, 1, 8, 8), 0), steps)
            sizes[attention, steps] = tensor_bytes(field.state)
    assert sizes["hybrid", 5] == sizes["hybrid", 50] > 0
    assert sizes["softmax", 50] == 10 * sizes["softmax", 5]  # a KV cache grows with the steps


def test_sampling_needs_a_model_with_a_recurrent_step():
    model = make_model("hybrid")
    ARFlow().check_model(model)
    model.blocks[0].attn.supports_step = False  # one backend without a step is enough
    with pytest.raises(ConfigError, match="arflow: the model has no recurrent step"):
        ARFlow().sample(model, torch.tensor([1]), 2, "euler", 1.0, torch.Generator().manual_seed(0))
