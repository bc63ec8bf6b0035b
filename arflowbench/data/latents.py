"""The ``latents`` dataset: VAE latents from a cache made by ``arflowbench prepare latents``.

The model works in latent space: ``channels`` is the VAE's latent channels (4 for SD-VAE) and
``image_size`` the latent side (size / 8), so an ImageNet-128 cache gives 16x16x4 latents
(64 tokens at patch 2). Every draw picks, per image, the moments of the image or of its
horizontal flip (p = 0.5) and samples the posterior, ``z = (mean + exp(logvar / 2) * eps) * s``
with the scaling factor ``s`` (0.18215 for SD-VAE), all from the generator the sampler passes
in: a training batch stays a pure function of (seed, step), as with pixel datasets.

Generated latents go back to images through `Latents.decode` (``vae.decode(z / s)``, batched,
on the latents' device) with the same VAE that made the cache: its identity (config and weights
digest) is checked against the cache index before any work.

The run hash takes the cache by content (its index digest and the VAE's weights digest, see
`hash_options`), never by path: a moved cache keeps its run ids; the paths are in the row.
Before the cache exists (a matrix checked on a laptop, run on a GPU box), the geometry comes
from the options (``size``, ``num_classes``) and the VAE's config (SD-VAE's 4 channels and
factor 8 when it is not at hand), so `validate --estimate` works; a run refuses with the
`arflowbench prepare latents` command to run first (`DataMissingError`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, Field

from arflowbench.data.base import FLIP_P, Dataset, to_uint8
from arflowbench.errors import DataError, DataMissingError
from arflowbench.latents.cache import LatentCache
from arflowbench.latents.prepare import INDEX, partial_dir
from arflowbench.plugins import Availability


@dataclass(frozen=True, eq=False)
class LatentSet:
    """A training split of float latents; stands in for `ImageSet` (see data/base.py):
    samplers call `take`, and `labels`, `num_classes`, `len`, `class_counts` work as there."""

    cache: LatentCache
    labels: torch.Tensor  # int64 (N,)
    num_classes: int
    scaling_factor: float

    def __len__(self) -> int:
        return len(self.labels)

    def class_counts(self) -> torch.Tensor:
        return torch.bincount(self.labels, minlength=self.num_classes)

    def take(self, idx: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        """float32 (*idx.shape, C, h, w) posterior samples of images `idx`, scaled."""
        flat = idx.reshape(-1)  # (M,)
        flip = torch.rand(flat.shape, generator=g) < FLIP_P  # (M,): image or its flip
        moments = torch.from_numpy(self.cache.moments(flat.numpy(), flip.numpy()))  # (M, 2C, h, w)
        mean, logvar = moments.chunk(2, dim=1)  # (M, C, h, w) each
        eps = torch.randn(mean.shape, generator=g)
        z = (mean + torch.exp(0.5 * logvar) * eps) * self.scaling_factor
        return z.reshape(*idx.shape, *z.shape[1:])

    @property
    def images(self):
        raise DataError("the latents dataset holds no pixel images: decode samples with "
                        "dataset.decode and score them against an ADM reference batch "
                        "(arflowbench eval --reference)")


class Latents(Dataset):
    """Posterior samples of cached VAE moments (image or flip, p = 0.5), times the scaling factor."""

    name = "latents"
    version = 1
    splits: ClassVar[tuple[str, ...]] = ("train",)
    has_pixel_images: ClassVar[bool] = False
    #: SD-VAE's geometry, assumed before the cache exists when the VAE folder is not at hand
    DEFAULT_VAE: ClassVar[tuple[int, int]] = (4, 8)  # latent channels, downsampling factor

    class Config(BaseModel):
        model_config = {"extra": "forbid", "frozen": True}
        cache: str = Field(description="folder made by `arflowbench prepare latents`")
        size: int | None = Field(None, ge=8, description="pixel size the run expects (128, 256)")
        vae: str | None = Field(None, description="VAE folder for decoding; default: the one in "
                                "the cache index. Checked against the cache's VAE digest")
        scaling_factor: float = Field(0.18215, gt=0, description="0.18215 for SD-VAE")
        decode_batch_size: int = Field(32, ge=1)
        num_classes: int | None = Field(None, ge=1, description="classes the run expects (1000 "
                                        "for ImageNet); checked against the cache, and gives "
                                        "the geometry before the cache exists")

    def __init__(self, config=None, data_root=None):
        super().__init__(config, data_root)
        self._cache_obj: LatentCache | None = None
        self._vae = None

    @classmethod
    def availability(cls) -> Availability:
        import importlib.util

        if importlib.util.find_spec("diffusers") is None:
            return Availability(False, "", "diffusers is not installed: "
                                "pip install 'arflowbench[latents]'")
        return Availability(True, "diffusers AutoencoderKL")

    # ------------------------------------------------------------------ the cache
    @property
    def cache_path(self) -> Path:
        path = Path(self.config.cache).expanduser()
        if not path.is_absolute() and self.data_root is not None:
            path = self.data_root / path
        return path

    @property
    def cache(self) -> LatentCache:
        if self._cache_obj is None:
            cache = LatentCache(self.cache_path)
            if self.config.size is not None and cache.size != self.config.size:
                raise DataError(f"latent cache {self.cache_path} holds {cache.size} px images, the "
                                f"run asks for {self.config.size}")
            self._cache_obj = cache
        return self._cache_obj

    @property
    def prepared(self) -> bool:
        """The cache is finished (its index exists)."""
        return (self.cache_path / INDEX).is_file()

    def missing(self) -> DataMissingError:
        """The error (with the command to run first) of a cache not prepared yet."""
        if partial_dir(self.cache_path.absolute()).is_dir():
            hint = "its preparation is unfinished: rerun the same `arflowbench prepare latents` to resume it"
        else:
            vae = self.config.vae or "stabilityai/sd-vae-ft-ema"
            hint = (f"run `arflowbench prepare latents --vae {vae} --images <class-per-folder "
                    f"images, e.g. ImageNet train/> --size {self.config.size or '<pixels>'} "
                    f"--out {self.cache_path}` first")
        return DataMissingError(f"latent cache {self.cache_path} is not prepared", hint)

    def _geometry(self) -> tuple[int, int, int, int]:
        """(latent channels, latent side, classes, pixel size), from the cache when it exists,
        else from the options and the VAE config (see the module docstring)."""
        if self.prepared:
            c, h, _ = self.cache.latent_shape
            return c, h, len(self.cache.classes), self.cache.size
        size, classes = self.config.size, self.config.num_classes
        if size is None or classes is None:
            raise self.missing()
        channels, factor = self._vae_geometry()
        if size % factor:
            raise DataError(f"latents size {size} is not a multiple of the VAE's factor {factor}")
        return channels, size // factor, classes, size

    def _vae_geometry(self) -> tuple[int, int]:
        from arflowbench.latents.vae import downsample_factor

        cfg_file = Path(self.config.vae or "").expanduser() / "config.json"
        if self.config.vae and cfg_file.is_file():
            import json

            cfg = json.loads(cfg_file.read_text())
            return int(cfg["latent_channels"]), downsample_factor(cfg)
        return self.DEFAULT_VAE

    @property
    def channels(self) -> int:
        return self._geometry()[0]

    @property
    def image_size(self) -> int:
        return self._geometry()[1]

    @property
    def num_classes(self) -> int:
        return self._geometry()[2]

    @property
    def pixel_shape(self) -> tuple[int, int, int]:
        return (3, self._geometry()[3], self._geometry()[3])

    def check_available(self) -> None:
        """The cache exists and has the asked size and classes, and its VAE loads and matches
        (before any training: sampling needs the decoder hours later)."""
        if not self.prepared:
            raise self.missing()
        classes = len(self.cache.classes)
        if self.config.num_classes is not None and classes != self.config.num_classes:
            raise DataError(f"latent cache {self.cache_path} holds {classes} classes, the run "
                            f"asks for {self.config.num_classes}")
        self.vae()

    def hash_options(self) -> dict[str, Any]:
        """The cache by content (index and VAE weights digests), not by path; the decoding VAE
        path is left out (it is checked to be the cache's VAE, so no number depends on it)."""
        opts = self.config.model_dump(mode="json")
        opts.pop("vae")
        cache = opts.pop("cache")
        opts["cache"] = ({"index_sha256": self.cache.index_sha256,
                          "vae_weights_sha256": self.cache.vae["weights_sha256"]}
                         if self.prepared else {"path": cache})  # not prepared: validate only
        return opts

    def _load(self, split: str) -> LatentSet:
        cache = self.cache
        labels = torch.from_numpy(cache.labels.copy())
        return LatentSet(cache, labels, self.num_classes, self.config.scaling_factor)

    # ------------------------------------------------------------------ the VAE
    def vae(self, device: str | torch.device = "cpu"):
        """The cache's AutoencoderKL (loaded once, identity checked), on `device`."""
        from arflowbench.latents.vae import load_vae, same_vae, vae_identity

        if self._vae is None:
            cache = self.cache
            source = self.config.vae or cache.vae["source"]
            vae = load_vae(source, "cpu")
            identity = vae_identity(vae, source)
            if not same_vae(identity, cache.vae):
                raise DataError(
                    f"VAE {source} (weights {identity['weights_sha256'][:8]}) is not the VAE that "
                    f"made {self.cache_path} ({cache.vae['source']}, weights "
                    f"{cache.vae['weights_sha256'][:8]})")
            self._vae = vae
        if next(self._vae.parameters()).device != torch.device(device):
            self._vae = self._vae.to(device)
        return self._vae

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents (N, C, h, w) in model space -> uint8 (N, 3, size, size), on x's device."""
        c, h, w = self.cache.latent_shape
        if x.dim() != 4 or tuple(x.shape[1:]) != (c, h, w):
            raise DataError(f"decode expects latents (N, {c}, {h}, {w}), got {tuple(x.shape)}")
        vae = self.vae(x.device)
        out = []
        with torch.autocast(x.device.type, enabled=False):  # float32 decoding, as in encoding
            for chunk in x.split(self.config.decode_batch_size):
                pixels = vae.decode(chunk.float() / self.config.scaling_factor).sample  # (n, 3, H, W)
                out.append(to_uint8(pixels))
        return torch.cat(out) if out else torch.empty((0, *self.pixel_shape), dtype=torch.uint8,
                                                      device=x.device)

    def record_info(self) -> dict[str, Any]:
        """The VAE and cache a run used (for its record; the digests name them exactly)."""
        cache = self.cache
        vae = cache.vae
        return {
            "vae": {"source": self.config.vae or vae["source"], "weights_sha256": vae["weights_sha256"],
                    "scaling_factor": self.config.scaling_factor,
                    "config_scaling_factor": vae.get("scaling_factor")},
            "latent_cache": {"path": str(self.cache_path), "index_sha256": cache.index_sha256,
                             "size": cache.size, "num_images": len(cache),
                             "latent_shape": list(cache.latent_shape)},
        }
