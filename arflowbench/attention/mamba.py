"""A Mamba (selective state space) token mixer as an attention backend.

The mixer runs through the token sequence in raster order, image after image, so it is
chunk-causal by construction. Note that inside an image it is CAUSAL, not bidirectional: token i
of an image sees only the tokens before it in raster order (and every earlier image), unlike the
softmax, linear and hybrid backends, where all tokens of an image see each other.

Parameters carry the names and shapes of mamba-ssm's ``Mamba`` (and of ``mambapy``'s
``MambaBlock``), so weights map one to one: in_proj (D -> 2E, no bias), conv1d (depthwise, causal,
kernel d_conv, with bias), x_proj (E -> dt_rank + 2 d_state, no bias), dt_proj (dt_rank -> E),
A_log (E, d_state), D (E,), out_proj (E -> D, no bias); E = expand * D.

Per token: x, z = in_proj(u); x = silu(conv1d(x)); delta, B, C = split(x_proj(x));
delta = softplus(dt_proj(delta)); h_t = exp(delta A) h_{t-1} + delta B_t x_t;
y_t = C_t h_t + D x_t; out = out_proj(y * silu(z)), with A = -exp(A_log).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, ValidationError, model_validator
from torch import nn

from arflowbench.attention import gpu_libs
from arflowbench.attention.base import AttentionBackend, float32_section
from arflowbench.errors import ConfigError
from arflowbench.plugins import Availability, PluginBase, format_validation_error

CUDA_IMPL = "mamba-ssm CUDA"
#: conv widths causal-conv1d's kernel accepts (its C++ checks 2 <= width <= 4)
CAUSAL_CONV1D_WIDTHS = range(2, 5)

State = dict[str, torch.Tensor]


def cuda_path_problem(d_conv: int) -> str:
    """"" when mamba-ssm's CUDA path can run a mixer of conv width `d_conv` here, else why not.

    mamba-ssm's ``Mamba`` uses causal-conv1d whenever that imports, and its kernel takes conv
    widths 2-4 only: other widths then go to our PyTorch path (with causal-conv1d absent,
    mamba-ssm's own fallback is ``nn.Conv1d``, which takes any width)."""
    why = gpu_libs.problem("mamba-ssm")
    if why:
        return why
    if d_conv not in CAUSAL_CONV1D_WIDTHS and not gpu_libs.problem("causal-conv1d"):
        return (f"d_conv {d_conv} outside causal-conv1d's widths "
                f"{CAUSAL_CONV1D_WIDTHS.start}-{CAUSAL_CONV1D_WIDTHS.stop - 1}")
    return ""


def cuda_implementation(d_conv: int) -> str:
    """What runs a forward on CUDA tensors: mamba-ssm (naming causal-conv1d when it does the
    convolution), else the PyTorch scan with the reason."""
    why = cuda_path_problem(d_conv)
    if why:
        return f"pytorch selective scan (CUDA; mamba-ssm not used: {why})"
    conv = "" if gpu_libs.problem("causal-conv1d") else " + causal-conv1d"
    return CUDA_IMPL + conv


def sequential_scan(
    dA: torch.Tensor, u: torch.Tensor, h0: torch.Tensor
) -> torch.Tensor:
    """h_t = dA_t * h_{t-1} + u_t one token at a time. dA, u: (B, L, E, S); h0: (B, E, S)."""
    h, hs = h0, []
    for t in range(dA.shape[1]):
        h = dA[:, t] * h + u[:, t]
        hs.append(h)
    return torch.stack(hs, dim=1)  # (B, L, E, S)


def chunked_scan(
    dA: torch.Tensor, u: torch.Tensor, h0: torch.Tensor, block: int | None = None
) -> torch.Tensor:
    """The same recurrence as `sequential_scan` as a two-level (blocked) scan, O(L) work.

    dA (decays in (0, 1]), u: (B, L, E, S); h0: (B, E, S). The sequence is cut into blocks of
    ``block`` tokens (default ~sqrt(L)); (1) every block is scanned from zero, all blocks at once,
    one position per Python step, together with the running decay product since the block start
    (a product of values <= 1: no overflow, unlike exp(-cumsum) tricks); (2) the block-boundary
    states are carried across blocks; (3) each token adds its block's carried state times its
    decay product. About 2 sqrt(L) Python steps instead of L.
    """
    b, n, e, s = u.shape
    block = block or max(1, math.isqrt(n))
    nb = -(-n // block)
    pad = nb * block - n
    if pad:  # padding at the end (decay 1, input 0) never touches earlier outputs
        dA = F.pad(dA, (0, 0, 0, 0, 0, pad), value=1.0)
        u = F.pad(u, (0, 0, 0, 0, 0, pad))
    dA = dA.view(b, nb, block, e, s)
    u = u.view(b, nb, block, e, s)
    local, prod = [u[:, :, 0]], [dA[:, :, 0]]
    for t in range(1, block):  # (1) within-block scans from zero, all blocks at once
        local.append(torch.addcmul(u[:, :, t], dA[:, :, t], local[-1]))
        prod.append(dA[:, :, t] * prod[-1])
    carry = [h0]
    for j in range(nb - 1):  # (2) state entering each block
        carry.append(torch.addcmul(local[-1][:, j], prod[-1][:, j], carry[-1]))
    carry = torch.stack(carry, dim=1)  # (B, nb, E, S)
    h = torch.stack(local, dim=2).addcmul_(torch.stack(prod, dim=2), carry[:, :, None])  # (3)
    return h.view(b, nb * block, e, s)[:, :n]


class MambaMixer(AttentionBackend):
    """Mamba selective-SSM token mixer (raster order; inside an image it is CAUSAL, not
    bidirectional; across images chunk-causal).

    ``num_heads`` only has to divide ``dim`` (Mamba has no heads); ``cond`` is ignored.
    Options (as mamba-ssm's ``Mamba``): d_state (16), d_conv (4), expand (2), dt_rank
    ("auto" = ceil(dim / 16)), dt_min (0.001), dt_max (0.1).
    State for ``step``: {"conv": (B, E, d_conv - 1) last conv inputs, "ssm": (B, E, d_state)}.
    """

    name = "mamba"
    version = 1
    conformance_variants: ClassVar[tuple[dict, ...]] = ({}, {"d_state": 4, "d_conv": 2})
    #: dt_proj's init sets the initial step sizes (below); the backbone's DiT init leaves it alone
    keeps_own_init: ClassVar[tuple[str, ...]] = ("dt_proj",)

    class Config(PluginBase.Config):
        d_state: int = Field(16, ge=1, le=256)
        d_conv: int = Field(4, ge=1, le=16)
        expand: int = Field(2, ge=1, le=8)
        dt_rank: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
        dt_min: float = Field(0.001, gt=0)
        dt_max: float = Field(0.1, gt=0)

        @model_validator(mode="after")
        def _dt_range(self):
            if self.dt_min > self.dt_max:
                raise ValueError(f"mamba: dt_min {self.dt_min} is above dt_max {self.dt_max}")
            return self

    def __init__(self, dim: int, num_heads: int, chunk_size: int, **options: Any):
        try:
            super().__init__(dim, num_heads, chunk_size, **options)
        except ValidationError as err:
            raise ConfigError(
                format_validation_error(err, f"attention {self.name!r} options")
            ) from None
        cfg = self.config
        e = self.d_inner = cfg.expand * dim
        self.dt_rank = math.ceil(dim / 16) if cfg.dt_rank == "auto" else cfg.dt_rank
        self.in_proj = nn.Linear(dim, 2 * e, bias=False)
        self.conv1d = nn.Conv1d(e, e, cfg.d_conv, groups=e, padding=cfg.d_conv - 1, bias=True)
        self.x_proj = nn.Linear(e, self.dt_rank + 2 * cfg.d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, e, bias=True)
        self.out_proj = nn.Linear(e, dim, bias=False)
        # Mamba's initialisation: dt ~ log-uniform in [dt_min, dt_max] through the bias
        # (inverse softplus), S4D-real A = -(1..d_state), skip D = 1.
        std = self.dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(e) * (math.log(cfg.dt_max) - math.log(cfg.dt_min))
                       + math.log(cfg.dt_min)).clamp(min=1e-4)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        a = torch.arange(1, cfg.d_state + 1, dtype=torch.float32).repeat(e, 1)
        self.A_log = nn.Parameter(torch.log(a))  # (E, d_state)
        self.D = nn.Parameter(torch.ones(e))

    @classmethod
    def availability(cls, device: str = "cpu") -> Availability:
        """Always available: mamba-ssm on CUDA targets when it imports (default conv width),
        the PyTorch scan otherwise (the reason is in the implementation string)."""
        if device == "cuda":
            return Availability(True, cuda_implementation(cls.Config().d_conv))
        return Availability(True, "pytorch selective scan (CPU)")

    # -- the PyTorch path ----------------------------------------------------------------------
    def _mix(self, x: torch.Tensor, state: State, sequential: bool = False):
        """Output (B, L, D) and the state after the last token, starting from ``state``."""
        e, k, n_state = self.d_inner, self.config.d_conv, self.config.d_state
        xi, z = self.in_proj(x).chunk(2, dim=-1)  # (B, L, E) each
        # causal depthwise conv: the last d_conv - 1 inputs seen so far are the left context
        conv_in = torch.cat([state["conv"].to(xi.dtype), xi.transpose(1, 2)], dim=2)
        xc = F.conv1d(conv_in, self.conv1d.weight, self.conv1d.bias, groups=e)  # (B, E, L)
        xc = F.silu(xc).transpose(1, 2)  # (B, L, E)
        dt, b_in, c_in = self.x_proj(xc).split([self.dt_rank, n_state, n_state], dim=-1)
        delta = F.softplus(self.dt_proj(dt)).float()  # (B, L, E)
        y, h_last = self._scan(xc, delta, b_in, c_in, state["ssm"], sequential)
        out = self.out_proj((y * F.silu(z.float())).to(x.dtype))
        # clone: a view would keep the whole (B, E, L) input alive
        new_state = {"conv": conv_in[:, :, conv_in.shape[2] - (k - 1):].clone(), "ssm": h_last}
        return out, new_state

    @float32_section  # the scan and its readout stay float32 under bf16 autocast
    def _scan(self, xc: torch.Tensor, delta: torch.Tensor, b_in: torch.Tensor,
              c_in: torch.Tensor, ssm: torch.Tensor, sequential: bool):
        """Selective scan from state `ssm` (B, E, S) over conv outputs `xc` (B, L, E) with step
        sizes `delta` (B, L, E) and inputs B, C (B, L, S): the readout y (B, L, E) float32 and
        the last state (B, E, S), a new tensor."""
        a = -torch.exp(self.A_log.float())  # (E, S)
        dA = torch.exp(delta[..., None] * a)  # (B, L, E, S)
        u = (delta * xc.float())[..., None] * b_in.float()[:, :, None, :]  # (B, L, E, S)
        h0 = ssm.float()
        hs = (sequential_scan if sequential else chunked_scan)(dA, u, h0)
        y = (hs @ c_in.float()[..., None]).squeeze(-1) + self.D.float() * xc.float()  # (B, L, E)
        # clone: a view would keep the whole (B, L, E, S) scan alive
        return y, hs[:, -1].clone()

    # -- the contract --------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        self.check_sequence(x)
        if x.is_cuda and not cuda_path_problem(self.config.d_conv):
            self.implementation = cuda_implementation(self.config.d_conv)
            return torch.func.functional_call(self._mamba_ssm(), dict(self.named_parameters()),
                                              (x,))
        self.implementation = (cuda_implementation(self.config.d_conv) if x.is_cuda
                               else "pytorch selective scan (CPU)")
        return self._mix(x, self.init_state(x.shape[0], x.device))[0]

    def _mamba_ssm(self) -> nn.Module:
        """A mamba_ssm.Mamba of the same shapes, run with *our* parameters (functional_call).

        Built on the meta device (no memory: `functional_call` supplies every parameter) and
        kept out of the module tree (no second copy in state_dict or parameters()).
        """
        module = self.__dict__.get("_ssm_module")
        if module is None:
            from mamba_ssm import Mamba

            cfg = self.config
            module = Mamba(d_model=self.dim, d_state=cfg.d_state, d_conv=cfg.d_conv,
                           expand=cfg.expand, dt_rank=self.dt_rank, conv_bias=True, bias=False,
                           device="meta")
            ours = {n: tuple(p.shape) for n, p in self.named_parameters()}
            theirs = {n: tuple(t.shape) for n, t in [*module.named_parameters(),
                                                     *module.named_buffers()]}
            if theirs != ours:  # e.g. a mamba-ssm that caps d_inner: never run half our weights
                diff = sorted(set(theirs.items()) ^ set(ours.items()))
                raise RuntimeError(f"mamba-ssm's Mamba does not match this mixer: {diff}")
            self.__dict__["_ssm_module"] = module
        return module

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """Zero state: conv inputs (B, E, d_conv - 1) and SSM state (B, E, d_state), float32."""
        device = self.A_log.device if device is None else device
        e = self.d_inner
        return {"conv": torch.zeros(batch_size, e, self.config.d_conv - 1, device=device),
                "ssm": torch.zeros(batch_size, e, self.config.d_state, device=device)}

    def step(
        self, x: torch.Tensor, state: State, cond: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, State]:
        """Process one chunk's tokens (scan over them) from the carried state; pure."""
        self.check_chunk(x)
        self.implementation = f"pytorch selective scan ({'CUDA' if x.is_cuda else 'CPU'})"
        return self._mix(x, state)

    def reference(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Float64, token by token: explicit conv taps and the plain recurrence."""
        self.check_sequence(x)
        f64 = torch.float64
        p = {name: t.to(f64) for name, t in self.named_parameters()}
        xi, z = (x.to(f64) @ p["in_proj.weight"].T).chunk(2, dim=-1)  # (B, L, E)
        k, n_state = self.config.d_conv, self.config.d_state
        w = p["conv1d.weight"][:, 0]  # (E, k): tap j multiplies the input k - 1 - j tokens back
        xc = torch.zeros_like(xi) + p["conv1d.bias"]
        for t in range(xi.shape[1]):
            for j in range(k):
                if t - (k - 1 - j) >= 0:
                    xc[:, t] = xc[:, t] + w[:, j] * xi[:, t - (k - 1 - j)]
        xc = F.silu(xc)
        dt, b_in, c_in = (xc @ p["x_proj.weight"].T).split([self.dt_rank, n_state, n_state], -1)
        delta = F.softplus(dt @ p["dt_proj.weight"].T + p["dt_proj.bias"])  # (B, L, E)
        a = -torch.exp(p["A_log"])
        h = torch.zeros(x.shape[0], self.d_inner, n_state, dtype=f64, device=x.device)
        ys = []
        for t in range(x.shape[1]):
            h = torch.exp(delta[:, t, :, None] * a) * h \
                + (delta[:, t] * xc[:, t])[..., None] * b_in[:, t, None, :]
            ys.append((h * c_in[:, t, None, :]).sum(-1) + p["D"] * xc[:, t])
        y = torch.stack(ys, dim=1) * F.silu(z)
        return (y @ p["out_proj.weight"].T).to(x.dtype)
