"""Latent space end to end on CPU, as the paper's ImageNet runs but tiny.

A random AutoencoderKL (4 blocks: factor 8, 32 px -> 4x4x4 latents) and 40 images of 32x32 in 4
class folders: `prepare latents` (killed by SIGKILL after its first shard, then resumed, gives
the bytes of an uninterrupted run), then a 2-cell matrix (ARFlow-hybrid and SiT-softmax, 20
steps, Euler 4 steps) through the real runner (cells as subprocesses): train on the latents,
sample, decode with the VAE, score with the `fidelity` metric against an image .npz reference
(Inception features). Rows are ok, carry the VAE identity, and their ids follow the cache's
content, not its path.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers", reason="pip install 'arflowbench[latents]'")

from arflowbench.latents import prepare  # noqa: E402

SIZE, CLASSES, PER_CLASS, SHARD = 32, 4, 10, 10
#: a child that runs `prepare latents` and SIGKILLs itself once its first shard is written
KILLED_PREPARE = """
import os, signal, sys
from arflowbench.latents import prepare
real = prepare.atomic_write
def write_then_die(path, write):
    real(path, write)
    if path.name.startswith("shard-"):
        os.kill(os.getpid(), signal.SIGKILL)
prepare.atomic_write = write_then_die
prepare.prepare_latents(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4],
                        batch_size=10, shard_size=int(sys.argv[5]))
"""


def make_inputs(base: Path) -> tuple[Path, Path, Path]:
    """(VAE folder, class-per-folder images, reference .npz of 4 images per class)."""
    from diffusers import AutoencoderKL
    from PIL import Image

    torch.manual_seed(0)
    AutoencoderKL(block_out_channels=(8, 8, 16, 16), latent_channels=4, sample_size=SIZE,
                  down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1,
                  norm_num_groups=8).save_pretrained(base / "vae")
    rng = np.random.default_rng(0)
    reference = []
    for c in range(CLASSES):
        (base / "images" / f"c{c}").mkdir(parents=True)
        for i in range(PER_CLASS):  # a class colour plus noise
            pixels = np.clip(rng.normal(60 * c + 40, 30, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(base / "images" / f"c{c}" / f"{i:02d}.png")
            if i < 4:
                reference.append(pixels)
    np.savez(base / "reference.npz", np.stack(reference))  # arr_0 (16, 32, 32, 3), ADM layout
    return base / "vae", base / "images", base / "reference.npz"


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def write_matrix(path: Path, cache: Path, reference: Path) -> Path:
    metrics = f'[{{ name = "fidelity", options = {{ reference = "{reference}" }} }}]'
    path.write_text(f"""
name = "latents-e2e"
[base]
data = {{ name = "latents", options = {{ cache = "{cache}", size = {SIZE}, num_classes = {CLASSES} }} }}
model = {{ flavor = "debug", patch_size = 1 }}
train = {{ steps = 20, batch_size = 10 }}
sample = {{ sampler = "euler", steps = 4, grid_per_class = 2 }}
eval = {{ num_samples = 8, batch_size = 8, metrics = {metrics} }}
[axes]
formulation = [{{ name = "sit" }}, {{ name = "arflow" }}]
"attention.name" = ["softmax", "hybrid"]
[[exclude]]
"formulation.name" = "sit"
"attention.name" = "hybrid"
[[exclude]]
"formulation.name" = "arflow"
"attention.name" = "softmax"
""")
    return path


@pytest.mark.slow
def test_prepare_kill_resume_then_train_sample_decode_evaluate(tmp_path, monkeypatch, capsys):
    from arflowbench.cli import main
    from arflowbench.config import Matrix, RuntimeOptions
    from arflowbench.latents.cache import LatentCache
    from arflowbench.resolve import resolve
    from arflowbench.results import load

    vae, images, reference = make_inputs(tmp_path)
    args = [vae, images, SIZE]
    # 1. prepare, SIGKILLed after its first shard; resumed; equal to an uninterrupted run
    cache = tmp_path / "cache"
    child = subprocess.run([sys.executable, "-c", KILLED_PREPARE, *map(str, args), str(cache),
                            str(SHARD)],
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == -9, child.stderr
    shards = prepare.partial_dir(cache) / "shards"
    assert [p.name for p in shards.glob("*.npy")] == ["shard-00000.npy"] and not cache.exists()
    assert prepare.prepare_latents(*args, cache, batch_size=10, shard_size=SHARD) == cache
    whole = tmp_path / "whole"
    assert prepare.prepare_latents(*args, whole, batch_size=10, shard_size=SHARD) == whole
    assert tree(cache) == tree(whole) and not prepare.partial_dir(cache).exists()

    # 2. the real runner: two cells, each its own process
    matrix = write_matrix(tmp_path / "m.toml", cache, reference)
    results = tmp_path / "results"
    monkeypatch.setattr(sys, "argv", ["arflowbench", "run", "--matrix", str(matrix), "--results-dir",
                                      str(results), "--device", "cpu", "--threads", "1",
                                      "--no-progress"])
    try:
        main()
    except SystemExit as exit_:
        assert exit_.code in (0, None), capsys.readouterr().err
    rows = load(results / "runs.jsonl").runs
    assert [r.status for r in rows] == ["ok", "ok"], [r.error for r in rows]
    index = LatentCache(cache)
    ref_digest = hashlib.sha256(reference.read_bytes()).hexdigest()
    for r in rows:
        m = r.metrics
        assert np.isfinite(m["fid"]) and m["feature_extractor"] == "inception"
        assert m["reference_sha256"] == ref_digest and m["reference_kind"] == "images"
        assert m["eval_num_samples"] == 8 and m["nfe"] == 4
        info = r.data_info
        assert info["vae"]["weights_sha256"] == index.vae["weights_sha256"]
        assert info["latent_cache"]["path"] == str(cache)
        assert info["latent_cache"]["latent_shape"] == [4, SIZE // 8, SIZE // 8]
        from PIL import Image

        with Image.open(r.artifact("samples", results)) as grid:  # decoded RGB, 2 per class
            assert grid.mode == "RGB" and grid.size == (2 * SIZE + 3 * 2, CLASSES * SIZE + 5 * 2)
    assert {r.setting("formulation.name") for r in rows} == {"sit", "arflow"}

    # 3. the ids follow the content: a moved cache and reference keep them
    moved = tmp_path / "moved"
    shutil.copytree(cache, moved / "cache")
    shutil.copy(reference, moved / "ref.npz")
    again = Matrix.from_file(write_matrix(tmp_path / "m2.toml", moved / "cache", moved / "ref.npz"))
    ids = {resolve(c.spec, RuntimeOptions()).run_id for c in again.cells()}
    assert ids == {r.run_id for r in rows}
