"""What a formulation may ask of a model: the `GenerativeModel` protocol.

Formulations (training losses, samplers) see the network only through these six members, never
through its layers (no ``model.blocks[0].attn``), so any network that offers them can be trained
and sampled by every formulation, and the formulation conformance suite can check that a
formulation stays within them.

Shapes: B batch rows, S images per sequence, C channels, H = W = image_size.

- ``model(x, t, y) -> v``: the parallel form. x (B, S, C, H, W), t (B, S) one time per image,
  y (B,) one label per sequence (``null_class`` = no label) -> velocity (B, S, C, H, W).
  Chunk-causal over S: output image s depends only on images <= s. SiT is S = 1.
- ``supports_step``: True when the recurrent form below works (every attention layer of the
  network has a recurrent ``step``). Formulations that sample through ``step`` check it first.
- ``init_state(batch_size, device)``: the empty recurrent state (no image seen yet) for
  ``batch_size`` rows. Opaque to formulations: they only hand it back to ``step``.
- ``step(x, t, y, state) -> (v, state)``: one image per row against the images already in
  ``state``. x (B, C, H, W), t (B,), y (B,) -> v (B, C, H, W) and a new state that also holds x.
  Pure: the state given is not modified (a sampler may discard the new one). Feeding the images of
  a sequence one by one through ``step`` gives what ``model(x, t, y)`` gives for the sequence.
- ``null_class``: the label id meaning "no class" (label dropout, classifier-free guidance).
- ``channels``, ``image_size``: C and H (= W) of the images the model takes and returns.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class GenerativeModel(Protocol):
    """The model interface formulations use (see the module docstring for shapes)."""

    channels: int
    image_size: int

    @property
    def null_class(self) -> int: ...

    @property
    def supports_step(self) -> bool: ...

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x (B, S, C, H, W), t (B, S), y (B,) -> velocity (B, S, C, H, W)."""
        ...

    def init_state(self, batch_size: int, device: Any = None) -> Any:
        """The empty recurrent state for `batch_size` rows."""
        ...

    def step(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
             state: Any) -> tuple[torch.Tensor, Any]:
        """x (B, C, H, W), t (B,), y (B,) -> (v (B, C, H, W), new state). Pure."""
        ...


#: the member names of `GenerativeModel`, for wrappers that expose exactly the interface
INTERFACE: tuple[str, ...] = ("__call__", "supports_step", "init_state", "step", "null_class",
                              "channels", "image_size")
