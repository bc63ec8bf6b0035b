"""The one place a model is built from a spec: `build_model`.

Runs (`resolve.Resolved.build_model`), benchmarks and tests all build through it, so the flavor
lookup, the backbone arguments and the device placement are written once.
"""

from __future__ import annotations

import torch

from arflowbench.config import AttentionSpec, ModelSpec
from arflowbench.errors import ConfigError
from arflowbench.models.backbone import DiT
from arflowbench.models.flavors import FLAVORS


def build_model(model: ModelSpec, attention: AttentionSpec, *, image_size: int, channels: int,
                num_classes: int, device: str | torch.device = "cpu") -> DiT:
    """A freshly initialised `DiT` of `model.flavor` with `attention`'s backend and options.

    The image geometry and the class count come from the dataset. Parameters are created directly
    on `device` ("meta" builds the shapes only: no memory, no init cost). Initialisation draws
    from torch's global generator: seed it (`torch.manual_seed`) for reproducible weights.
    Raises ConfigError for an unknown flavor or invalid attention options, ValueError when the
    patch size does not divide the image.
    """
    if model.flavor not in FLAVORS:
        raise ConfigError(f"unknown model flavor {model.flavor!r} (known: {', '.join(FLAVORS)})")
    with torch.device(device):
        return DiT(image_size=image_size, channels=channels, patch_size=model.patch_size,
                   num_classes=num_classes, flavor=FLAVORS[model.flavor],
                   attention=attention.name, attention_options=dict(attention.options))
