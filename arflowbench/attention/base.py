"""The attention backend contract.

A backend is an `nn.Module` built as ``Backend(dim, num_heads, chunk_size, **options)`` where
``options`` are validated by the backend's pydantic ``Config``.

- ``forward(x, cond=None) -> y`` with ``x: (B, L, D)`` and ``L`` a multiple of ``chunk_size``.
  Tokens are grouped in chunks of ``chunk_size`` (one chunk = one image). The output for chunk c
  depends only on chunks <= c (chunk-causal). SiT uses one chunk per sequence, so the contract
  also covers bidirectional attention inside one image. ``cond: (B, L, D)`` is an optional
  per-token conditioning signal (ARFlow's decay gate reads it).
- ``init_state(batch_size, device=None)`` and ``step(x_chunk, state, cond=None) -> (y, state)``
  process one chunk at a time with a carried state. ``step`` is *pure*: it never mutates the
  state it is given and returns a new one. Samplers rely on this (a Heun probe evaluation
  discards the state it produced). Feeding chunks one by one through ``step`` gives the same
  outputs as ``forward`` on the whole sequence.
- ``implementation`` names what actually runs for the tensors seen last (e.g. "reference (CPU)",
  "fla chunk kernel"); the run record stores it. Never a silent fallback.
- ``reference(x, cond)`` is the slow, obvious plain-PyTorch implementation used by the
  conformance suite for parity.
- Initialisation: the backbone calls ``reset_parameters_like_dit()`` once the model is built, which
  gives every ``nn.Linear`` of the backend DiT's basic init (xavier-uniform weight, zero bias), as
  the official DiT/SiT/ARFlow models do for their attention. A backend that initialises some of
  its Linear layers itself (Mamba's dt_proj) names them in ``keeps_own_init``; parameters that are
  not Linear layers (Mamba's A_log, D) are never touched.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import torch
from pydantic import ValidationError
from torch import nn

from arflowbench.errors import ConfigError
from arflowbench.plugins import (
    Availability,
    PluginBase,
    availability_for,
    format_validation_error,
)


class AttentionBackend(PluginBase, nn.Module):
    """Base class of every attention backend (see the module docstring for the contract)."""

    #: needs a CUDA device to run at all
    requires_cuda: ClassVar[bool] = False
    #: implements init_state/step
    supports_step: ClassVar[bool] = True
    #: nn.Linear layers (names as in ``named_modules()``) this backend initialises itself; every
    #: other nn.Linear gets DiT's basic init from `reset_parameters_like_dit`
    keeps_own_init: ClassVar[tuple[str, ...]] = ()

    def __init__(self, dim: int, num_heads: int, chunk_size: int, **options: Any):
        nn.Module.__init__(self)
        if dim % num_heads:
            raise ConfigError(f"{self.name}: dim {dim} is not divisible by num_heads {num_heads}")
        if chunk_size < 1:
            raise ConfigError(f"{self.name}: chunk_size must be >= 1, got {chunk_size}")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.chunk_size = chunk_size
        try:
            self.config = self.Config(**options)
        except ValidationError as err:
            raise ConfigError(format_validation_error(err, f"attention {self.name!r} options")) from None
        # what would run for tensors on CPU (on CUDA for CUDA-only backends); forward updates it
        target = "cuda" if self.requires_cuda else "cpu"
        self.implementation = availability_for(type(self), target).implementation

    # -- checks shared by every backend -------------------------------------------------
    def check_sequence(self, x: torch.Tensor) -> int:
        """Validate a (B, L, D) input and return the number of chunks L // chunk_size."""
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"{self.name}: expected (B, L, {self.dim}), got {tuple(x.shape)}")
        if x.shape[1] % self.chunk_size:
            raise ValueError(
                f"{self.name}: sequence length {x.shape[1]} is not a multiple of "
                f"chunk_size {self.chunk_size}"
            )
        return x.shape[1] // self.chunk_size

    def check_chunk(self, x: torch.Tensor) -> None:
        """Validate a (B, chunk_size, D) input to `step`."""
        if x.dim() != 3 or x.shape[1] != self.chunk_size or x.shape[-1] != self.dim:
            raise ValueError(
                f"{self.name}.step: expected a chunk of shape (B, {self.chunk_size}, {self.dim}), "
                f"got {tuple(x.shape)}"
            )

    # -- the contract -------------------------------------------------------------------
    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> Any:
        raise NotImplementedError

    def step(
        self, x: torch.Tensor, state: Any, cond: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError

    def reference(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Slow plain-PyTorch implementation with the same parameters as `forward`."""
        raise NotImplementedError

    @classmethod
    def availability(cls, device: str = "cpu") -> Availability:
        """Can this backend run with its tensors on `device` ("cpu" or "cuda"), and with what?
        Ask through `plugins.availability_for`, which also enforces ``requires_cuda``."""
        return Availability(True, "pytorch")

    # -- initialisation -----------------------------------------------------------------
    def dit_init_linears(self) -> dict[str, nn.Linear]:
        """The nn.Linear layers `reset_parameters_like_dit` initialises, by module name: all of
        the backend's, less `keeps_own_init` (each of which must name one of its Linear layers)."""
        linears = {n: m for n, m in self.named_modules() if isinstance(m, nn.Linear)}
        unknown = sorted(set(self.keeps_own_init) - linears.keys())
        if unknown:
            raise ConfigError(f"{self.name}: keeps_own_init lists {', '.join(unknown)}, not "
                              f"nn.Linear layers of the backend ({', '.join(linears) or 'none'})")
        return {n: m for n, m in linears.items() if n not in self.keeps_own_init}

    @torch.no_grad()
    def reset_parameters_like_dit(self) -> None:
        """DiT's basic init on `dit_init_linears`; the backbone calls it after building."""
        for layer in self.dit_init_linears().values():
            dit_basic_init(layer)


def dit_basic_init(layer: nn.Linear) -> None:
    """DiT's `_basic_init` of one Linear: xavier-uniform weight, zero bias."""
    nn.init.xavier_uniform_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def cuda_available() -> bool:
    """Whether this *machine* has a CUDA device. Availability depends on the run's target device
    (`plugins.availability_for`), never on this alone."""
    return torch.cuda.is_available()


def float32_section(fn):
    """Run `fn` with autocast off (CUDA and CPU), for code that computes in float32 on purpose
    (state recursions, readouts): under bf16 autocast its matmuls would otherwise run in bf16,
    undoing the ``.float()`` of its inputs. Without autocast this is a plain call."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not (torch.is_autocast_enabled("cuda") or torch.is_autocast_enabled("cpu")):
            return fn(*args, **kwargs)
        with torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False):
            return fn(*args, **kwargs)

    return wrapper


def chunk_causal_mask(num_chunks: int, chunk_size: int, device=None) -> torch.Tensor:
    """(L, L) boolean mask, True where query i may attend key j (chunk(j) <= chunk(i))."""
    chunk_id = torch.arange(num_chunks * chunk_size, device=device) // chunk_size
    return chunk_id[None, :] <= chunk_id[:, None]
