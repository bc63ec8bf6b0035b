"""`arflowbench prepare latents`: encode a class-per-folder image set into a latent cache.

For every image (ADM center crop to `size`, scaled to [-1, 1]) and for its horizontal flip, the
VAE's posterior moments are stored, as the public ARFlow caching does: the `latents` dataset then
samples ``mean + exp(logvar / 2) * eps`` from the image or its flip at every draw.

Cache layout (final folder ``OUT``)::

    OUT/index.json          format, size, crop, VAE identity, classes, latent shape, shard table
    OUT/files.txt           one relative image path per line, in cache order
    OUT/labels.npy          int64 (N,) class ids
    OUT/shards/shard-00000.npy   float32 (n, 2, 2C, h, w): axis 1 = [image, flip];
                                 channels [0, C) posterior mean, [C, 2C) log-variance

Crash safety and resumption: work happens in ``OUT.partial/``; its ``plan.json`` (written last
during set-up) fixes the file list and shard table, each shard is written to a temporary name and
renamed, and finished shards are kept. Rerunning the same command encodes only missing shards.
When every shard exists, ``plan.json`` becomes ``index.json`` and ``OUT.partial`` is renamed to
``OUT`` (atomic): nothing is ever half-written under the final name.

Several processes: under torchrun (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``), rank r encodes shards
r, r + W, ... on ``cuda:LOCAL_RANK``. No process group is needed: set-up and the final rename run
under a file lock (``.OUT.lock`` beside OUT), and whichever process writes the last shard
finishes the cache. The others return None.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from arflowbench.errors import ConfigError
from arflowbench.latents.images import FolderListing, check_headers, list_images, read_batch
from arflowbench.latents.vae import load_vae, resolve_vae, same_vae, vae_identity
from arflowbench.metrics.base import atomic_write, file_lock
from arflowbench.ui import count_bar

FORMAT, FORMAT_VERSION, CROP = "arflowbench-latents", 1, "adm-center-crop"
INDEX, PLAN, FILES, LABELS, SHARDS = "index.json", "plan.json", "files.txt", "labels.npy", "shards"
LAYOUT = ("float32 (n, 2, 2C, h, w): axis 1 = [image, horizontal flip]; channels [0, C) posterior "
          "mean, [C, 2C) posterior log-variance (clamped to [-30, 20] as diffusers does)")
#: what makes two caches the same cache (the shard size only changes the layout)
IDENTITY_KEYS = ("format", "format_version", "size", "crop", "num_images", "files_sha256",
                 "latent_shape")


@dataclass(frozen=True)
class Rank:
    rank: int = 0
    world: int = 1
    local_rank: int = 0


def rank_from_env() -> Rank:
    """This process's place under torchrun (or a single process)."""
    env = os.environ
    return Rank(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def partial_dir(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def lock_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.lock")


def build_plan(listing: FolderListing, identity: dict[str, Any], size: int,
               shard_size: int) -> dict[str, Any]:
    """The cache's index, minus nothing: ``plan.json`` while unfinished, ``index.json`` after."""
    c, f, n = identity["latent_channels"], identity["downsample"], len(listing.files)
    shards = [{"file": f"{SHARDS}/shard-{k:05d}.npy", "start": s, "count": min(shard_size, n - s)}
              for k, s in enumerate(range(0, n, shard_size))]
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "size": size, "crop": CROP,
            "pixel_range": [-1, 1], "vae": identity, "latent_shape": [c, size // f, size // f],
            "layout": LAYOUT, "classes": list(listing.classes), "num_images": n,
            "files": FILES, "files_sha256": listing.digest(), "labels": LABELS,
            "shard_size": shard_size, "shards": shards}


def same_cache(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a.get(k) == b.get(k) for k in IDENTITY_KEYS) and same_vae(a["vae"], b["vae"])


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = [k for k in (*IDENTITY_KEYS, "shard_size") if old.get(k) != new.get(k)]
    if not same_vae(old["vae"], new["vae"]):
        keys.insert(0, f"VAE ({old['vae'].get('source')}, weights {old['vae']['weights_sha256'][:8]})")
    return ", ".join(k.replace("files_sha256", "image files") for k in keys)


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=1) + "\n").encode()))


def _check_partial(partial: Path, plan: dict[str, Any]) -> bool:
    """True if `partial` holds this cache's set-up; ConfigError if it holds another cache's."""
    plan_file = partial / PLAN
    if not plan_file.is_file():
        return False
    old = json.loads(plan_file.read_text())
    if not same_cache(old, plan) or old["shard_size"] != plan["shard_size"]:
        raise ConfigError(f"{partial} holds an unfinished cache with another "
                          f"{_differences(old, plan)}: rerun with its options to resume it, "
                          "or delete it")
    return True


def _set_up(partial: Path, plan: dict[str, Any], listing: FolderListing) -> None:
    """Create the partial folder once (file list, labels, then plan.json)."""
    plan_file = partial / PLAN
    if _check_partial(partial, plan):
        return
    (partial / SHARDS).mkdir(parents=True, exist_ok=True)
    atomic_write(partial / FILES, lambda f: f.write("".join(p + "\n" for p in listing.files).encode()))
    atomic_write(partial / LABELS, lambda f: np.save(f, np.asarray(listing.labels, dtype=np.int64)))
    _write_json(plan_file, plan)  # last: its presence means the set-up is complete


def pick_device(device: str, rank: Rank) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":  # one GPU per local rank (ranks share GPUs when there are fewer)
        device = f"cuda:{rank.local_rank % max(1, torch.cuda.device_count())}"
    return torch.device(device)


@torch.no_grad()
def encode_moments(vae, x: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> float32 (B, 2, 2C, h, w) moments of x and of its flip."""
    both = torch.cat([x, x.flip(3)])  # (2B, 3, H, W): one encoder call for image and flip
    dist = vae.encode(both).latent_dist
    moments = torch.cat([dist.mean, dist.logvar], dim=1).float()  # (2B, 2C, h, w)
    return torch.stack(moments.chunk(2), dim=1).cpu().numpy()  # (B, 2, 2C, h, w)


def _encode_shard(vae, listing: FolderListing, shard: dict[str, Any], plan: dict[str, Any],
                  batch_size: int, device: torch.device, pool: ThreadPoolExecutor,
                  advance: Callable[[int], None]) -> np.ndarray:
    c, h, w = plan["latent_shape"]
    out = np.empty((shard["count"], 2, 2 * c, h, w), dtype=np.float32)
    paths = [listing.root / listing.files[i]
             for i in range(shard["start"], shard["start"] + shard["count"])]
    batches = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
    with ThreadPoolExecutor(1) as prefetch:  # decode the next batch while this one encodes
        pending = prefetch.submit(read_batch, batches[0], plan["size"], pool)
        for b, batch in enumerate(batches):
            pixels = pending.result()  # uint8 (B, H, W, 3)
            if b + 1 < len(batches):
                pending = prefetch.submit(read_batch, batches[b + 1], plan["size"], pool)
            x = torch.from_numpy(pixels).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
            out[b * batch_size : b * batch_size + len(batch)] = encode_moments(vae, x)
            advance(len(batch))
    return out


def _finished(out: Path, plan: dict[str, Any], echo: Callable[[str], None]) -> bool:
    """True if `out` is this very cache already; ConfigError if it is something else."""
    if (out / INDEX).is_file():
        old = json.loads((out / INDEX).read_text())
        if not same_cache(old, plan):
            raise ConfigError(f"{out} is a latent cache with another {_differences(old, plan)}: "
                              "choose another --out")
        echo(f"{out}: already prepared ({old['num_images']} images)")
        return True
    if out.exists():
        raise ConfigError(f"{out} exists and is not a latent cache: choose another --out")
    return False


def _finish(out: Path, partial: Path, plan: dict[str, Any]) -> Path | None:
    """Under the lock: if every shard exists, publish the cache under its final name."""
    with file_lock(lock_path(out)):
        if (out / INDEX).is_file():
            return out  # another rank finished it
        if not all((partial / s["file"]).is_file() for s in plan["shards"]):
            return None  # other ranks are still encoding
        os.replace(partial / PLAN, partial / INDEX)
        os.rename(partial, out)
        fd = os.open(out.parent, os.O_RDONLY)
        try:
            os.fsync(fd)  # make the rename durable
        finally:
            os.close(fd)
    return out


def prepare_latents(vae: str | Path, images: str | Path, size: int, out: str | Path, *,
                    batch_size: int = 32, shard_size: int = 5000, device: str = "auto",
                    workers: int = 4, progress: bool = False,
                    echo: Callable[[str], None] = lambda s: None) -> Path | None:
    """Encode `images` into the cache `out` (see the module docstring). Returns `out` when this
    process finished the cache (or found it finished), None when other ranks still work.
    Every input is checked before the first image is encoded."""
    out = Path(out).expanduser().absolute()
    if batch_size < 1 or shard_size < 1 or workers < 1:
        raise ConfigError(f"batch size, shard size and workers must be >= 1, got {batch_size}, "
                          f"{shard_size}, {workers}")
    if size < 1:
        raise ConfigError(f"--size must be positive, got {size}")
    listing = list_images(images)
    source = resolve_vae(vae)
    model = load_vae(source, "cpu")
    identity = vae_identity(model, source)
    if size % identity["downsample"]:
        raise ConfigError(f"--size {size} is not a multiple of the VAE's downsampling factor "
                          f"{identity['downsample']}")
    plan = build_plan(listing, identity, size, shard_size)
    rank, partial = rank_from_env(), partial_dir(out)
    with file_lock(lock_path(out)):  # read-only checks first: bad input leaves nothing behind
        if _finished(out, plan, echo):
            return out
        _check_partial(partial, plan)
    shards = plan["shards"]
    mine = [k for k in range(len(shards)) if k % rank.world == rank.rank]
    todo = [k for k in mine if not (partial / shards[k]["file"]).is_file()]
    for k in todo:  # temporaries of a killed run (only this rank's shards: others may be writing)
        name = Path(shards[k]["file"]).name
        for tmp in (partial / SHARDS).glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)
    todo_paths = [listing.root / listing.files[i]
                  for k in todo for i in range(shards[k]["start"], shards[k]["start"] + shards[k]["count"])]
    check_headers(todo_paths, workers)
    with file_lock(lock_path(out)):
        if _finished(out, plan, echo):  # another rank published it meanwhile
            return out
        _set_up(partial, plan, listing)
    dev = pick_device(device, rank)
    model = model.to(dev)
    echo(f"rank {rank.rank}/{rank.world}: {len(todo)} of {len(mine)} shards to encode "
         f"({len(todo_paths)} images) on {dev}")
    with ThreadPoolExecutor(workers) as pool, \
            count_bar(f"encode rank {rank.rank}", len(todo_paths), progress) as advance:
        for k in todo:
            arr = _encode_shard(model, listing, shards[k], plan, batch_size, dev, pool, advance)
            atomic_write(partial / shards[k]["file"], lambda f, a=arr: np.save(f, a))
    return _finish(out, partial, plan)
