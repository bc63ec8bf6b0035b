"""Softmax attention through xformers' ``memory_efficient_attention`` (CUDA only).

Same parameters and math as the ``softmax`` backend (fused qkv Linear(D, 3D) with bias, proj
Linear(D, D)), so a state_dict moves between the two and the softmax reference applies as is.
Only the kernel differs: the chunk-causal mask is passed to xformers as an additive attention
bias (0 where allowed, -inf elsewhere); ``step`` attends one chunk to the KV cache without a mask.

xformers' memory_efficient_attention has no CPU operator (``requires_cuda``), so for a run whose
target device is the CPU this backend is unavailable, even on a GPU machine: a matrix cell
selecting it is skipped or fails before training with the reason, never falls back silently.
Constructing it needs a machine where xformers runs on CUDA (the module may be built on the CPU
and moved; a forward on CPU tensors raises `PluginUnavailableError`). Whether xformers runs is
tried once per process (`gpu_libs`): an install built against another torch is unavailable with
the import or call error as the reason.

Head dims: xformers' cutlass operator accepts K up to 65536 but needs the last dimension aligned
(4 elements in float32, 8 in float16/bfloat16 on sm80+), and its flash operators take K <= 256.
We accept what every operator takes: head_dim a multiple of 8 and at most 256.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from arflowbench.attention import gpu_libs
from arflowbench.attention.base import chunk_causal_mask, cuda_available
from arflowbench.attention.softmax import KVCache, SoftmaxAttention
from arflowbench.errors import ConfigError, PluginUnavailableError
from arflowbench.plugins import Availability

IMPL = "xformers memory_efficient_attention (CUDA)"
NO_CPU = "xformers memory_efficient_attention has no CPU operator (CUDA only)"
NOT_INSTALLED = "xformers not installed (pip install 'arflowbench[gpu]')"
NO_DEVICE = "xformers needs a CUDA device; torch sees none on this machine"
MAX_HEAD_DIM = 256
HEAD_DIM_MULTIPLE = 8


class XFormersAttention(SoftmaxAttention):
    """Chunk-causal softmax attention on xformers' memory-efficient kernel (CUDA only).

    No options. ``cond`` is ignored. The step state is the softmax backend's KV cache.
    """

    name = "xformers"
    version = 1
    requires_cuda: ClassVar[bool] = True
    conformance_variants: ClassVar[tuple[dict, ...]] = ({},)

    def __init__(self, dim: int, num_heads: int, chunk_size: int, **options: Any):
        # Head dims are a config error on every machine, so they are checked first.
        head_dim = dim // num_heads if num_heads > 0 and dim % num_heads == 0 else None
        if head_dim is not None and (head_dim % HEAD_DIM_MULTIPLE or head_dim > MAX_HEAD_DIM):
            raise ConfigError(
                f"{self.name}: head_dim {head_dim} (dim {dim} / num_heads {num_heads}) is not "
                f"supported; xformers needs a multiple of {HEAD_DIM_MULTIPLE} and at most "
                f"{MAX_HEAD_DIM}"
            )
        avail = self.availability("cuda")  # built on the CPU, run on CUDA: the machine decides
        if not avail.available:
            raise PluginUnavailableError(f"attention {self.name!r} is unavailable here: "
                                         f"{avail.reason}")
        super().__init__(dim, num_heads, chunk_size, **options)

    @classmethod
    def availability(cls, device: str = "cpu") -> Availability:
        """Unavailable for CPU targets; for CUDA ones, when this machine has a CUDA device and
        xformers imports and runs there (tried once)."""
        if device != "cuda":
            return Availability(False, "", NO_CPU)
        if not cuda_available():
            return Availability(False, "", NO_DEVICE)
        if not gpu_libs.installed("xformers"):
            return Availability(False, "", NOT_INSTALLED)
        problem = gpu_libs.problem("xformers")
        return Availability(False, "", problem) if problem else Availability(True, IMPL)

    @staticmethod
    def _check_cuda(x: torch.Tensor) -> None:
        if not x.is_cuda:
            raise PluginUnavailableError(f"xformers: input on {x.device}; {NO_CPU}")

    def _bias(self, num_chunks: int, batch: int, like: torch.Tensor) -> torch.Tensor:
        """(B, H, L, L) additive chunk-causal bias, 0 where allowed and -inf elsewhere.

        xformers wants the bias rows aligned to 16 bytes: allocate a padded last dimension
        and slice it (the documented way), then broadcast over batch and heads.
        """
        n = num_chunks * self.chunk_size
        padded = -(-n // HEAD_DIM_MULTIPLE) * HEAD_DIM_MULTIPLE
        allowed = chunk_causal_mask(num_chunks, self.chunk_size, device=like.device)  # (L, L)
        bias = torch.full((n, padded), float("-inf"), dtype=like.dtype, device=like.device)
        bias[:, :n].masked_fill_(allowed, 0.0)
        return bias[:, :n].expand(batch, self.num_heads, n, n)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        num_chunks = self.check_sequence(x)
        self._check_cuda(x)
        import xformers.ops as xops

        b, n, _ = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim)  # (B, L, 3, H, d)
        q, k, v = qkv.unbind(2)  # each (B, L, H, d): xformers' BMHK layout
        bias = None if num_chunks == 1 else self._bias(num_chunks, b, q)
        o = xops.memory_efficient_attention(q, k, v, attn_bias=bias)  # (B, L, H, d)
        self.implementation = IMPL
        return self.proj(o.reshape(b, n, self.dim))

    def step(
        self, x: torch.Tensor, state: KVCache, cond: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, KVCache]:
        """Attend one chunk to itself and the cache (no mask needed); return the grown cache."""
        self.check_chunk(x)
        self._check_cuda(x)
        import xformers.ops as xops

        q, k, v = self._qkv(x)  # (B, H, N, d)
        k_cache, v_cache = state
        k_all = torch.cat([k_cache.to(k.dtype), k], dim=2)  # new tensors: the state is untouched
        v_all = torch.cat([v_cache.to(v.dtype), v], dim=2)
        o = xops.memory_efficient_attention(
            q.transpose(1, 2), k_all.transpose(1, 2), v_all.transpose(1, 2)
        )  # (B, N, H, d)
        self.implementation = IMPL
        b, n = x.shape[:2]
        return self.proj(o.reshape(b, n, self.dim)), (k_all, v_all)
