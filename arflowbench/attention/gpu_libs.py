"""Optional GPU libraries: can each one run here, and if not, why (tried once per process).

A ``find_spec`` check is not enough: a compiled extension built against another torch is found,
then fails at import (mamba-ssm's ``selective_scan_cuda``, causal-conv1d's ``causal_conv1d_cuda``:
"undefined symbol") or, for xformers, imports with a warning and fails at the first call ("No
operator found"). So `problem` imports the library's compiled module for real and, for xformers
on a machine with a CUDA device, runs one tiny ``memory_efficient_attention``. The answer is
cached: availability is asked per cell and per `ls` row, the import happens once.

Only CUDA targets ask (`availability_for(cls, "cuda")`): a CPU run never imports these.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util

#: library -> (modules that must import, the install hint)
LIBS: dict[str, tuple[tuple[str, ...], str]] = {
    "xformers": (("xformers", "xformers.ops"), "pip install 'arflowbench[gpu]'"),
    "mamba-ssm": (("mamba_ssm", "selective_scan_cuda"), "pip install mamba-ssm"),
    "causal-conv1d": (("causal_conv1d", "causal_conv1d_cuda"), "pip install causal-conv1d"),
}


def installed(lib: str) -> bool:
    """The library's top-level package is installed (cheap: nothing is imported)."""
    return importlib.util.find_spec(LIBS[lib][0][0]) is not None


@functools.cache
def problem(lib: str) -> str:
    """"" when `lib` imports (and, for xformers with a CUDA device, runs), else why not."""
    modules, hint = LIBS[lib]
    if not installed(lib):
        return f"{lib} not installed ({hint})"
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as err:  # noqa: BLE001 - ImportError, OSError (undefined symbol), ...
            return _short(f"{lib} is installed but {name} failed to import: "
                          f"{type(err).__name__}: {err} (built against another torch? "
                          f"reinstall it for this torch)")
    if lib == "xformers":
        return _probe_xformers()
    return ""


def _probe_xformers() -> str:
    """One tiny memory_efficient_attention call on CUDA: xformers imports even when its
    operators do not load, and fails only when called."""
    import torch

    if not torch.cuda.is_available():
        return ""  # nothing to call; the target check reports the missing device
    try:
        import xformers.ops as xops

        q = torch.zeros(1, 8, 1, 8, device="cuda", dtype=torch.float16)  # (B, M, H, K)
        xops.memory_efficient_attention(q, q, q)
        torch.cuda.synchronize()
    except Exception as err:  # noqa: BLE001 - "No operator found", CUDA errors, ...
        return _short(f"xformers imports but memory_efficient_attention fails here: "
                      f"{type(err).__name__}: {err}")
    return ""


def _short(text: str, limit: int = 300) -> str:
    """One line of at most `limit` characters (for `ls` and run records)."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."
