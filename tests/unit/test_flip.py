"""Random horizontal flips of training images (`flip` option of pixel datasets): p = 0.5 per image,
drawn from the training step's generator; off by default, and off means exactly the old batches."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from arflowbench.data.base import ImageSet
from arflowbench.data.fashion_mnist import FashionMNIST
from arflowbench.errors import ConfigError
from arflowbench.formulations.arflow import ARFlow
from arflowbench.formulations.sit import SiT
from arflowbench.plugins import DATASET
from arflowbench.trainer import step_generator


def _mirrored(items: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
    """Per item: 1 mirrored copy, 0 the source as is, -1 ambiguous (a symmetric image).
    items, sources: (M, C, H, W) -> (M,)."""
    same = (items == sources).flatten(1).all(1)
    mirror = (items == sources.flip(-1)).flatten(1).all(1)
    assert bool((same | mirror).all()), "an item is neither its source nor its mirror"
    return torch.where(same & mirror, -1, mirror.long())


@pytest.fixture(scope="module")
def flipped(digits_train) -> ImageSet:
    return replace(digits_train, flip=True)


def test_take_mirrors_about_half_of_a_large_batch(flipped):
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(len(flipped), (4000,), generator=g)
    verdict = _mirrored(flipped.take(idx, g), flipped.images[idx])
    decided = verdict[verdict >= 0].float()
    assert len(decided) > 3500
    assert 0.45 < float(decided.mean()) < 0.55


def test_flip_off_is_exactly_todays_batch_and_leaves_the_generator_alone(digits_train):
    assert not digits_train.flip  # the default
    g = step_generator(3, 7)
    items = digits_train.take(torch.arange(10), g)
    assert torch.equal(items, digits_train.images[:10])
    assert torch.equal(torch.rand(4, generator=g), torch.rand(4, generator=step_generator(3, 7)))
    # and a SiT batch is today's: the indices from the step generator, the images as stored
    x, y = SiT().make_batch(digits_train, 64, step_generator(3, 7))
    idx = torch.randint(len(digits_train), (64,), generator=step_generator(3, 7))
    assert torch.equal(x[:, 0], digits_train.images[idx]) and torch.equal(y, digits_train.labels[idx])


@pytest.mark.parametrize("formulation", [SiT(), ARFlow()], ids=["sit", "arflow"])
def test_same_seed_and_step_give_the_same_flipped_batch(flipped, formulation):
    a = formulation.make_batch(flipped, 40, step_generator(1, 5))
    b = formulation.make_batch(flipped, 40, step_generator(1, 5))
    c = formulation.make_batch(flipped, 40, step_generator(1, 6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_arflow_flips_each_image_of_a_sequence_independently(flipped):
    form = ARFlow()  # S = 5
    g = step_generator(0, 0)
    idx, _ = form.sequence_sampler(flipped).indices(400, step_generator(0, 0))  # (400, 5): same draws
    x, _ = form.make_batch(flipped, 400 * 5, g)  # (400, 5, 1, 8, 8)
    verdict = _mirrored(x.flatten(0, 1), flipped.images[idx.flatten()]).view(idx.shape)
    clear = verdict[(verdict >= 0).all(1)]  # sequences without a symmetric image
    mixed = (clear.min(1).values != clear.max(1).values).float().mean()
    # independent p = 0.5 per image: 1 - 2 * 0.5^5 = 0.9375 of the sequences mix both
    assert len(clear) > 300 and 0.88 < float(mixed) < 0.98


def test_flip_option_per_dataset():
    assert DATASET.validate_options("fashion-mnist", {})["flip"] is False  # default off
    assert DATASET.validate_options("fashion-mnist", {"flip": True})["flip"] is True
    assert DATASET.validate_options("imagefolder", {"root": "x", "flip": True})["flip"] is True
    with pytest.raises(ConfigError, match="digits does not offer flip = true: a mirrored digit"):
        DATASET.validate_options("digits", {"flip": True})
    assert DATASET.validate_options("digits", {}) == {"flip": False}


def test_only_the_train_split_flips(monkeypatch):
    images = torch.arange(2 * 4 * 4, dtype=torch.uint8).view(2, 1, 4, 4)
    monkeypatch.setattr(FashionMNIST, "_load",
                        lambda self, split: ImageSet(images, torch.tensor([0, 1]), 10))
    on = FashionMNIST(FashionMNIST.Config(flip=True))
    assert on.load("train").flip and not on.load("test").flip
    assert torch.equal(on.load("train").images, images)  # metrics read the images unflipped
    assert not FashionMNIST().load("train").flip
    with pytest.raises(ValueError, match="need the training step's generator"):
        on.load("train").take(torch.tensor([0]))
