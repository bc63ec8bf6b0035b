"""The diffusers `AutoencoderKL` behind a latent cache: finding it, loading it, and naming it.

A VAE is named by a local folder (``save_pretrained`` layout: ``config.json`` plus weights; a
pipeline folder with a ``vae/`` sub-folder works too) or, on a machine that can reach the
Hugging Face hub, by a hub id such as ``stabilityai/sd-vae-ft-ema``. Everything is checked before
the weights load, so a wrong path fails at once with one line.

The VAE's *identity* is its config (without diffusers' bookkeeping keys) plus a sha256 of its
weights taken over the state dict (names, dtypes, shapes, bytes): the same weights give the same
digest whether they sit in a ``.safetensors`` or a ``.bin`` file, in a folder or in the hub cache.
A latent cache records it, and the `latents` dataset refuses a VAE whose identity differs.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from arflowbench.errors import ConfigError, PluginUnavailableError

VAE_CLASS = "AutoencoderKL"
INSTALL = "pip install 'arflowbench[latents]'  (diffusers, safetensors)"
#: config keys that say where or by which diffusers a model was saved, not what it computes
_BOOKKEEPING = ("_name_or_path", "_diffusers_version", "_use_default_values", "_commit_hash")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def require_diffusers():
    """diffusers' `AutoencoderKL` class, or a one-line error saying what to install."""
    try:
        from diffusers import AutoencoderKL
    except ImportError as exc:
        raise PluginUnavailableError(f"latents need diffusers ({exc}): {INSTALL}") from None
    return AutoencoderKL


def resolve_vae(vae: str | Path) -> str:
    """The folder (as a string) or hub id to load; raises ConfigError on a folder that is missing
    or does not hold an AutoencoderKL. Hub ids are only checked when loaded."""
    text = str(vae)
    path = Path(text).expanduser()
    if not path.exists():
        if _HUB_ID.match(text) and not text.startswith((".", "~")):
            return text  # a hub id: loaded (or refused) by `load_vae`
        raise ConfigError(f"VAE folder {path} does not exist (a local AutoencoderKL folder saved with "
                          "save_pretrained, or a hub id like stabilityai/sd-vae-ft-ema)")
    if not path.is_dir():
        raise ConfigError(f"VAE {path} is a file: pass the folder holding config.json and the weights")
    if not (path / "config.json").is_file() and (path / "vae" / "config.json").is_file():
        path = path / "vae"  # a whole pipeline folder: its VAE
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ConfigError(f"VAE folder {path} has no config.json: not a diffusers model folder")
    try:
        cls = json.loads(cfg_file.read_text()).get("_class_name")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise ConfigError(f"{cfg_file}: not a readable diffusers config ({exc})") from None
    if cls != VAE_CLASS:
        raise ConfigError(f"VAE folder {path} holds a {cls or 'model of unknown class'}, "
                          f"not an {VAE_CLASS}")
    return str(path)


@contextmanager
def _quiet_hub():
    """Silence huggingface_hub's retry chatter and warnings: a failure ends as one error line."""
    from huggingface_hub.utils import logging as hub_logging

    before = hub_logging.get_verbosity()
    hub_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hub_logging.set_verbosity(before)


def _from_pretrained(cls, source: str):
    # without accelerate, diffusers' default (low_cpu_mem_usage) only prints a warning
    kw = {"torch_dtype": torch.float32,
          "low_cpu_mem_usage": importlib.util.find_spec("accelerate") is not None}
    if Path(source).exists():
        return cls.from_pretrained(source, **kw)
    with _quiet_hub():
        try:  # a hub id already in the local hub cache loads without the network
            return cls.from_pretrained(source, local_files_only=True, **kw)
        except (OSError, ValueError):
            return cls.from_pretrained(source, **kw)


def load_vae(vae: str | Path, device: str | torch.device = "cpu"):
    """The AutoencoderKL named by `vae` (see `resolve_vae`), in float32, eval mode, on `device`."""
    source = resolve_vae(vae)
    AutoencoderKL = require_diffusers()
    try:
        model = _from_pretrained(AutoencoderKL, source)
    except (OSError, ValueError, RuntimeError) as exc:
        where = "folder" if Path(source).exists() else "hub id (is this machine online?)"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot load an {VAE_CLASS} from {where} {source}: {first}") from None
    if type(model).__name__ != VAE_CLASS:
        raise ConfigError(f"{source} loaded as {type(model).__name__}, not an {VAE_CLASS}")
    return model.to(device).eval().requires_grad_(False)


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 over the state dict (sorted names, dtype, shape, bytes): independent of file format."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def downsample_factor(config: dict[str, Any]) -> int:
    """Pixels per latent side: one factor of 2 per encoder block after the first (8 for SD-VAE)."""
    return 2 ** (len(config["block_out_channels"]) - 1)


def vae_identity(model, source: str | Path) -> dict[str, Any]:
    """What a latent cache and a run record say about the VAE (JSON-ready)."""
    config = {k: v for k, v in dict(model.config).items() if k not in _BOOKKEEPING}
    config = _json_safe(config)
    return {
        "class": VAE_CLASS,
        "source": str(source),
        "weights_sha256": weights_digest(model),
        "latent_channels": int(config["latent_channels"]),
        "downsample": downsample_factor(config),
        "scaling_factor": config.get("scaling_factor"),
        "config": config,
    }


def same_vae(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two identities name the same VAE: equal weights and config (the source path may differ)."""
    return a.get("weights_sha256") == b.get("weights_sha256") and a.get("config") == b.get("config")
