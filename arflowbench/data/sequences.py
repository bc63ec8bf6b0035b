"""Batch samplers: single images (SiT) and class-grouped sequences of S images (ARFlow).

Every draw takes an explicit `torch.Generator`, so a batch is a pure function of the seed and the
step: a resumed run sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import torch

from arflowbench.data.base import ImageSet
from arflowbench.errors import ConfigError


def sample_images(data: ImageSet, batch_size: int, g: torch.Generator):
    """Uniformly drawn images and labels: (B, C, H, W) uint8 (or float latents), (B,)."""
    idx = torch.randint(len(data), (batch_size,), generator=g)
    return data.take(idx, g), data.labels[idx]


class ClassGroupedSampler:
    """Draws items of S distinct images; with `same_class`, all S share one class.

    Class drawn uniformly; images drawn without replacement within the class (the public ARFlow
    code's scheme). With ``same_class=False`` (an ablation) the S images are drawn without
    replacement from the whole split and the sequence label is that of the first image.
    """

    def __init__(self, data: ImageSet, images_per_sequence: int, same_class: bool = True):
        self.data = data
        self.S = images_per_sequence
        self.same_class = same_class
        counts = data.class_counts()
        self.by_class = [torch.nonzero(data.labels == c).flatten() for c in range(data.num_classes)]
        self.classes = torch.tensor([c for c, n in enumerate(counts.tolist()) if n > 0])
        smallest = int(counts[self.classes].min())
        if images_per_sequence < 1:
            raise ConfigError(f"images_per_sequence must be >= 1, got {images_per_sequence}")
        if same_class and images_per_sequence > smallest:
            raise ConfigError(
                f"images_per_sequence={images_per_sequence} is larger than the smallest class "
                f"({smallest} images)"
            )
        if images_per_sequence > len(data):
            raise ConfigError(f"images_per_sequence={images_per_sequence} > dataset size {len(data)}")

    def indices(self, batch_size: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S) image indices and (B,) sequence labels."""
        rows, labels = [], []
        for _ in range(batch_size):
            if self.same_class:
                c = int(self.classes[torch.randint(len(self.classes), (1,), generator=g)])
                pool = self.by_class[c]
                idx = pool[torch.randperm(len(pool), generator=g)[: self.S]]
            else:
                idx = torch.randperm(len(self.data), generator=g)[: self.S]
                c = int(self.data.labels[idx[0]])
            rows.append(idx)
            labels.append(c)
        return torch.stack(rows), torch.tensor(labels)

    def sample(self, batch_size: int, g: torch.Generator):
        """(B, S, C, H, W) uint8 images (or float latents) and (B,) labels."""
        idx, labels = self.indices(batch_size, g)
        return self.data.take(idx, g), labels
