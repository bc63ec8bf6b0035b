"""DiT-style transformer whose attention comes from the registry.

The model always works on sequences of images: ``x: (B, S, C, H, W)`` with one timestep per
image ``t: (B, S)`` and one label per sequence ``y: (B,)``. SiT is the case S = 1. Each image is
N = (H / p)^2 tokens and one attention chunk; the token sequence is the S images concatenated.

Per-image conditioning ``c = t_embed(t) + y_embed(y)`` of shape (B, S, D) drives adaLN-Zero in
every block; the same c repeated over the image's tokens, (B, S*N, D), is passed to the
attention as ``cond`` (ARFlow's decay gate reads it). The same positional embedding is used for
every image: order enters only through t and the chunk-causal attention.

`step` runs one image (one chunk) through every block's attention `step` with a carried state:
the recurrent form used by ARFlow's autoregressive sampler.

`DiT` implements `GenerativeModel` (models/interface.py), the only view formulations have of it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from arflowbench.attention.base import AttentionBackend, dit_basic_init
from arflowbench.models.embeddings import LabelEmbedder, TimestepEmbedder, sincos_2d
from arflowbench.models.flavors import Flavor
from arflowbench.plugins import ATTENTION

#: bump when the backbone's numerics change (feeds the run hash)
#: 2: attention Linear layers get DiT's basic init too (the backend's `reset_parameters_like_dit`)
BACKBONE_VERSION = 2


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x: (B, S, N, D); shift/scale: (B, S, 1, D)."""
    return x * (1 + scale) + shift


class Block(nn.Module):
    """adaLN-Zero transformer block with an injected attention backend."""

    def __init__(self, width: int, mlp_ratio: float, attention: nn.Module):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = attention
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"),
                                 nn.Linear(hidden, width))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def forward(self, h: torch.Tensor, c: torch.Tensor, cond: torch.Tensor, state: Any = None):
        """h: (B, S, N, D) tokens, c: (B, S, D) per-image conditioning, cond: (B, S*N, D).

        With `state` None the attention runs its parallel `forward`; otherwise S must be 1 and
        it runs `step`. Returns (h, new_state)."""
        B, S, N, D = h.shape
        mods = self.adaLN_modulation(c)[:, :, None].chunk(6, dim=-1)  # 6 x (B, S, 1, D)
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = mods
        a_in = modulate(self.norm1(h), shift_a, scale_a).reshape(B, S * N, D)
        if state is None:
            a_out, new_state = self.attn(a_in, cond), None
        else:
            a_out, new_state = self.attn.step(a_in, state, cond)
        h = h + gate_a * a_out.reshape(B, S, N, D)
        h = h + gate_m * self.mlp(modulate(self.norm2(h), shift_m, scale_m))
        return h, new_state


class DiT(nn.Module):
    """Patchify -> blocks -> final adaLN layer -> unpatchify, for sequences of S images."""

    def __init__(self, *, image_size: int, channels: int, patch_size: int, num_classes: int,
                 flavor: Flavor, attention: str, attention_options: dict | None = None):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"patch size {patch_size} does not divide image size {image_size}")
        self.image_size, self.channels, self.patch_size = image_size, channels, patch_size
        self.grid = image_size // patch_size
        self.num_tokens = self.grid**2  # N: tokens per image = chunk size
        D = flavor.width
        self.x_embed = nn.Conv2d(channels, D, kernel_size=patch_size, stride=patch_size)
        self.register_buffer("pos_embed", sincos_2d(D, self.grid)[None], persistent=False)
        self.t_embed = TimestepEmbedder(D)
        self.y_embed = LabelEmbedder(num_classes, D)
        # built on the CPU (or meta) and moved later: a CUDA-only backend needs a machine that
        # can run it on CUDA; which device a run targets is checked by `resolve`
        cuda_only = getattr(ATTENTION.load(attention), "requires_cuda", False)
        backend = ATTENTION.get(attention, "cuda" if cuda_only else "cpu")
        opts = attention_options or {}
        self.blocks = nn.ModuleList(
            Block(D, flavor.mlp_ratio, backend(D, flavor.heads, self.num_tokens, **opts))
            for _ in range(flavor.depth)
        )
        self.final_norm = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(D, 2 * D))
        self.final_linear = nn.Linear(D, patch_size * patch_size * channels)
        self._init_weights()

    @property
    def null_class(self) -> int:
        return self.y_embed.null_id

    @property
    def supports_step(self) -> bool:
        """True when every block's attention backend implements init_state/step."""
        return all(b.attn.supports_step for b in self.blocks)

    @property
    def attention_implementation(self) -> str:
        return self.blocks[0].attn.implementation

    def _init_weights(self) -> None:
        # DiT's scheme: every Linear xavier-uniform with zero bias, the attention's included (as in
        # the official DiT/SiT/ARFlow); the backend applies it to its own Linear layers, less
        # those it initialises itself (`keeps_own_init`, e.g. Mamba's dt_proj), in module order.
        attn_modules = {id(m) for b in self.blocks for m in b.attn.modules()}
        for m in self.modules():
            if isinstance(m, AttentionBackend):
                m.reset_parameters_like_dit()
            elif isinstance(m, nn.Linear) and id(m) not in attn_modules:
                dit_basic_init(m)
        w = self.x_embed.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embed.bias)
        nn.init.normal_(self.y_embed.table.weight, std=0.02)
        for lin in (self.t_embed.mlp[0], self.t_embed.mlp[2]):
            nn.init.normal_(lin.weight, std=0.02)
        # adaLN-Zero: every block starts as the identity, the output starts at zero
        for b in self.blocks:
            nn.init.zeros_(b.adaLN_modulation[-1].weight)
            nn.init.zeros_(b.adaLN_modulation[-1].bias)
        for lin in (self.final_modulation[-1], self.final_linear):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    # ------------------------------------------------------------------ patches
    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S, C, H, W) -> (B, S, N, D) embedded tokens with positions."""
        B, S = x.shape[:2]
        tok = self.x_embed(x.flatten(0, 1))  # (B*S, D, g, g)
        # contiguous before the add: the sum would keep the transposed (channels-first) memory
        # layout, and so would every residual add after it, each LayerNorm (forward and backward)
        # then copying its input to contiguous, and mixed-layout elementwise ops running slowly
        tok = tok.flatten(2).transpose(1, 2).contiguous() + self.pos_embed  # (B*S, N, D)
        return tok.reshape(B, S, self.num_tokens, -1)

    def unpatchify(self, tok: torch.Tensor) -> torch.Tensor:
        """(B, S, N, p*p*C) -> (B, S, C, H, W)."""
        B, S = tok.shape[:2]
        p, g, C = self.patch_size, self.grid, self.channels
        tok = tok.reshape(B, S, g, g, p, p, C)
        return torch.einsum("bsyxpqc->bscypxq", tok).reshape(B, S, C, g * p, g * p)

    def conditioning(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """t: (B, S), y: (B,) -> c: (B, S, D)."""
        return self.t_embed(t) + self.y_embed(y)[:, None]

    def _head(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.final_modulation(c)[:, :, None].chunk(2, dim=-1)
        return self.unpatchify(self.final_linear(modulate(self.final_norm(h), shift, scale)))

    # ------------------------------------------------------------------ parallel form
    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x: (B, S, C, H, W), t: (B, S), y: (B,) -> predicted velocity (B, S, C, H, W)."""
        h = self.patchify(x)  # (B, S, N, D)
        c = self.conditioning(t, y)  # (B, S, D)
        cond = c.repeat_interleave(self.num_tokens, dim=1)  # (B, S*N, D)
        for blk in self.blocks:
            h, _ = blk(h, c, cond)
        return self._head(h, c)

    # ------------------------------------------------------------------ recurrent form
    def init_state(self, batch_size: int, device=None) -> list[Any]:
        """One empty attention state per block, for `batch_size` rows."""
        return [b.attn.init_state(batch_size, device=device) for b in self.blocks]

    def step(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, state: list[Any]):
        """One image per sequence: x (B, C, H, W), t (B,), y (B,) -> (v (B, C, H, W), state).
        Pure: the given state is not modified."""
        h = self.patchify(x[:, None])  # (B, 1, N, D)
        c = self.conditioning(t[:, None], y)  # (B, 1, D)
        cond = c.expand(-1, self.num_tokens, -1)  # (B, N, D)
        new_state = []
        for blk, s in zip(self.blocks, state):
            h, s = blk(h, c, cond, state=s)
            new_state.append(s)
        return self._head(h, c)[:, 0], new_state


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
