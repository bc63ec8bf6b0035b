"""Latent caching and the `latents` dataset with a random tiny AutoencoderKL (factor 8) on 16 images."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers", reason="pip install 'arflowbench[latents]'")

from arflowbench.data.base import Dataset, to_model_range, to_uint8  # noqa: E402
from arflowbench.data.latents import Latents  # noqa: E402
from arflowbench.data.sequences import sample_images  # noqa: E402
from arflowbench.errors import DataError  # noqa: E402
from arflowbench.latents import prepare  # noqa: E402
from arflowbench.latents.cache import LatentCache  # noqa: E402
from arflowbench.latents.images import adm_center_crop  # noqa: E402
from arflowbench.machine import torch_threads  # noqa: E402
from arflowbench.metrics.evaluate import check_samples  # noqa: E402

SIZE = 32  # pixels; the tiny VAE has 4 blocks (factor 8): latents (4, 4, 4)


def make_vae(folder: Path, seed: int) -> Path:
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    AutoencoderKL(block_out_channels=(8, 8, 16, 16), latent_channels=4, sample_size=32,
                  down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                  layers_per_block=1, norm_num_groups=8).save_pretrained(folder)
    return folder


def make_images(root: Path) -> Path:
    """4 classes x 4 images of assorted sizes and modes (RGB, L, RGBA, P; PNG and JPEG)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(4):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(4):
            w, h = [(40, 48), (64, 36), (33, 33), (80, 70)][i]
            im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            im = [im, im.convert("L"), im.convert("RGBA"), im.convert("P")][(c + i) % 4]
            ext = "jpg" if i == 3 and im.mode in ("RGB", "L") else "png"
            im.save(root / f"class{c}" / f"img{i}.{ext}")
    return root


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Every encoding here at 1 thread, as torchrun's ranks run (OMP_NUM_THREADS=1): the VAE's
    float results depend on the thread count, and the comparisons below are byte-for-byte (without
    this the module passed only after some earlier test had left torch at 1 thread)."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("latents")
    vae = make_vae(base / "vae", seed=0)
    images = make_images(base / "images")
    out = base / "cache"
    assert prepare.prepare_latents(vae, images, SIZE, out, batch_size=3, shard_size=5) == out
    return {"base": base, "vae": vae, "images": images, "cache": out}


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------- prepare
def test_cache_holds_moments_of_each_image_and_its_flip(env):
    from arflowbench.latents.vae import load_vae

    cache = LatentCache(env["cache"])
    assert len(cache) == 16 and cache.classes == ["class0", "class1", "class2", "class3"]
    assert cache.latent_shape == (4, 4, 4) and cache.size == SIZE
    assert cache.labels.tolist() == [c for c in range(4) for _ in range(4)]
    assert [s["count"] for s in cache.index["shards"]] == [5, 5, 5, 1]
    assert len(cache.vae["weights_sha256"]) == 64 and cache.vae["config"]["latent_channels"] == 4
    assert (env["cache"] / "files.txt").read_text().splitlines()[0] == "class0/img0.png"
    assert not prepare.partial_dir(env["cache"]).exists()
    # row 6 recomputed by hand: ADM crop, [-1, 1], encoder posterior of the image and of its flip
    from PIL import Image

    with Image.open(env["images"] / "class1" / "img2.png") as im:
        pixels = np.asarray(adm_center_crop(im.convert("RGB"), SIZE))
    x = torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1  # (1, 3, 32, 32)
    vae = load_vae(env["vae"])
    with torch.no_grad():
        for flip in (0, 1):
            dist = vae.encode(x.flip(3) if flip else x).latent_dist
            got = cache.moments(np.array([6]), np.array([flip]))[0]  # (8, 4, 4)
            torch.testing.assert_close(torch.from_numpy(got[:4]), dist.mean[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(torch.from_numpy(got[4:]), dist.logvar[0], atol=1e-5, rtol=1e-5)


def test_reader_gathers_rows_with_few_shards_open(env, monkeypatch):
    monkeypatch.setattr("arflowbench.latents.cache.MAX_OPEN_SHARDS", 2)
    cache = LatentCache(env["cache"])
    idx, flip = np.arange(16)[::-1], np.arange(16) % 2  # every shard, both orientations
    got = cache.moments(idx, flip)  # (16, 8, 4, 4)
    assert len(cache._shards) <= 2
    full = np.concatenate([np.load(env["cache"] / s["file"]) for s in cache.index["shards"]])
    np.testing.assert_array_equal(got, full[idx, flip])


def test_resume_after_interruption_is_byte_identical(env, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = prepare.encode_moments

    def dies_on_fifth_call(vae, x):
        calls["n"] += 1
        if calls["n"] == 5:  # 2 calls per shard of 5 at batch 3: shards 0 and 1 are done
            raise KeyboardInterrupt
        return real(vae, x)

    out = tmp_path / "cache"
    monkeypatch.setattr(prepare, "encode_moments", dies_on_fifth_call)
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare_latents(env["vae"], env["images"], SIZE, out, batch_size=3, shard_size=5)
    partial = prepare.partial_dir(out)
    assert not out.exists()  # nothing under the final name
    assert sorted(p.name for p in (partial / "shards").iterdir()) == ["shard-00000.npy",
                                                                       "shard-00001.npy"]
    (partial / "shards" / ".shard-00002.npy.killed.tmp").write_bytes(b"torn")  # a SIGKILL leftover
    monkeypatch.setattr(prepare, "encode_moments", real)
    assert prepare.prepare_latents(env["vae"], env["images"], SIZE, out, batch_size=3,
                                   shard_size=5) == out
    assert calls["n"] == 5  # the finished shards were kept, not re-encoded
    assert tree(out) == tree(env["cache"])
    assert not partial.exists()


def test_ranks_split_shards_and_the_last_one_publishes(run_cli, env, tmp_path, monkeypatch, capsys):
    out = tmp_path / "cache"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert prepare.prepare_latents(env["vae"], env["images"], SIZE, out, batch_size=3,
                                   shard_size=5) is None
    shards = prepare.partial_dir(out) / "shards"
    assert sorted(p.name for p in shards.iterdir()) == ["shard-00001.npy", "shard-00003.npy"]
    monkeypatch.setenv("RANK", "0")  # rank 0 through the command line
    code, stdout, err = run_cli("prepare", "latents", "--vae", str(env["vae"]),
                                "--images", str(env["images"]), "--size", "32", "--out", str(out),
                                "--shard-size", "5", "--batch-size", "3", "--no-progress")
    assert code == 0 and stdout.strip() == f"wrote {out}", err
    assert tree(out) == tree(env["cache"])


@pytest.mark.slow
def test_two_concurrent_ranks_give_the_single_process_cache(env, tmp_path):
    """Two real processes, as torchrun starts them (~6 s: each imports torch and diffusers)."""
    import os
    import subprocess

    out = tmp_path / "cache"
    cmd = [sys.executable, "-m", "arflowbench.cli", "prepare", "latents", "--vae", str(env["vae"]),
           "--images", str(env["images"]), "--size", str(SIZE), "--out", str(out),
           "--batch-size", "3", "--shard-size", "5", "--no-progress"]
    procs = [subprocess.Popen(cmd, env={**os.environ, "RANK": str(r), "WORLD_SIZE": "2",
                                        "LOCAL_RANK": str(r), "OMP_NUM_THREADS": "1"},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in range(2)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert sum(o.startswith("wrote ") for o, _ in results) >= 1
    assert tree(out) == tree(env["cache"])


# ---------------------------------------------------------------------------------- dataset
@pytest.fixture(scope="module")
def dataset(env):
    return Latents(Latents.Config(cache=str(env["cache"]), size=SIZE, vae=str(env["vae"])))


def test_dataset_geometry_and_record(dataset, env):
    dataset.check_available()
    assert (dataset.channels, dataset.image_size, dataset.num_classes, dataset.pixel_shape) == \
        (4, 4, 4, (3, SIZE, SIZE))  # the model sees 4 x size/8 x size/8; decoding gives RGB
    info = dataset.record_info()
    assert info["vae"]["weights_sha256"] == LatentCache(env["cache"]).vae["weights_sha256"]
    assert len(info["latent_cache"]["index_sha256"]) == 64
    json.dumps(info)


def test_draws_sample_the_posterior_of_image_or_flip_deterministically(dataset):
    train = dataset.load("train")
    x, y = sample_images(train, 6, torch.Generator().manual_seed(3))  # (6, 4, 4, 4)
    assert x.dtype == torch.float32 and x.shape == (6, 4, 4, 4) and y.shape == (6,)
    x2, y2 = sample_images(train, 6, torch.Generator().manual_seed(3))
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert to_model_range(x) is x  # float latents are already model space
    # the same draw by hand: indices, flips, eps, all from the one generator
    g = torch.Generator().manual_seed(3)
    idx = torch.randint(len(train), (6,), generator=g)
    flip = torch.rand(6, generator=g) < 0.5
    m = torch.from_numpy(train.cache.moments(idx.numpy(), flip.numpy()))
    eps = torch.randn((6, 4, 4, 4), generator=g)
    torch.testing.assert_close(x, (m[:, :4] + torch.exp(0.5 * m[:, 4:]) * eps) * 0.18215)
    flips = torch.rand(4000, generator=torch.Generator().manual_seed(3)) < 0.5
    assert 0.45 < flips.float().mean() < 0.55


def test_class_grouped_sequences_and_a_training_step(dataset, model_factory):
    from arflowbench.formulations.arflow import ARFlow

    train = dataset.load("train")
    form = ARFlow(ARFlow.Config(images_per_sequence=2))
    idx, _ = form.sequence_sampler(train).indices(3, torch.Generator().manual_seed(1))  # (3, 2)
    assert all(len(set(train.labels[row].tolist())) == 1 for row in idx)  # one class per item
    g = torch.Generator().manual_seed(1)
    xb, yb = form.make_batch(train, 4, g)
    assert xb.shape == (2, 2, 4, 4, 4) and xb.dtype == torch.float32  # (B, S, C, h, w) latents
    model = model_factory(image_size=4, channels=4, patch_size=2, num_classes=4)
    loss = form.training_loss(model, xb, yb, g)["loss"]
    assert torch.isfinite(loss)
    with pytest.raises(DataError, match="no pixel images"):
        train.images  # noqa: B018


def test_decode_gives_uint8_images_of_the_pixel_shape(dataset, digits):
    z = torch.randn(3, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    images = dataset.decode(z)
    assert images.dtype == torch.uint8 and images.shape == (3, 3, SIZE, SIZE)
    assert check_samples(images, dataset) is not None  # metrics check the decoded geometry
    with pytest.raises(DataError, match=r"dataset 'latents' has \(3, 32, 32\)"):
        check_samples(images[:, :, :8, :8], dataset)
    assert torch.equal(Dataset.decode(digits, z), to_uint8(z))  # pixel datasets: to_uint8
    assert digits.pixel_shape == (1, 8, 8)
    with pytest.raises(DataError, match="decode expects latents"):
        dataset.decode(torch.zeros(1, 3, 4, 4))


def test_another_vae_or_size_is_refused(env, tmp_path):
    other = make_vae(tmp_path / "other", seed=1)
    with pytest.raises(DataError, match="is not the VAE that made"):
        Latents(Latents.Config(cache=str(env["cache"]), vae=str(other))).check_available()
    with pytest.raises(DataError, match="holds 32 px images, the run asks for 64"):
        Latents(Latents.Config(cache=str(env["cache"]), size=64)).check_available()


# ---------------------------------------------------------------------------------- bad input
def _bad_cases(env, tmp: Path) -> dict[str, tuple[list[str], str]]:
    png = (env["images"] / "class0" / "img0.png").read_bytes()
    flat, broken, unet = tmp / "flat", tmp / "broken", tmp / "unet"
    for folder, name, data in [(flat, "a.png", png), (broken / "a", "ok.png", png),
                               (broken / "b", "zz.png", b"not a png"),
                               (unet, "config.json", b'{"_class_name": "UNet2DModel"}')]:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    other = make_vae(tmp / "other", seed=1)
    args = ["--images", str(env["images"]), "--size", "32"]
    return {
        "missing vae": (["--vae", str(tmp / "novae"), *args], "does not exist"),
        "not an AutoencoderKL": (["--vae", str(unet), *args], "holds a UNet2DModel"),
        "flat folder": (["--vae", str(env["vae"]), "--images", str(flat), "--size", "32"],
                        "one sub-folder per class, found a.png"),
        "unreadable image": (["--vae", str(env["vae"]), "--images", str(broken), "--size", "32"],
                             "zz.png: cannot read as an image"),
        "size not a multiple": (["--vae", str(env["vae"]), "--images", str(env["images"]),
                                 "--size", "36"], "not a multiple of the VAE's downsampling"),
        "cache of another vae": (["--vae", str(other), *args, "--out-existing"], "another VAE"),
    }


def test_bad_input_is_one_error_line_and_exit_2(run_cli, env, tmp_path, monkeypatch, capsys):
    for case, (args, expected) in _bad_cases(env, tmp_path).items():
        out = tmp_path / f"out-{case.replace(' ', '-')}"
        if "--out-existing" in args:
            args, out = args[:-1], env["cache"]
        code, _, err = run_cli("prepare", "latents", *args, "--out", str(out),
                               "--no-progress")
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error:"), (case, err)
        assert expected in lines[0], (case, lines[0])
        if out != env["cache"]:
            assert not out.exists(), case  # nothing under the final name
            assert not prepare.partial_dir(out).exists(), case  # nor a started partial cache
    assert LatentCache(env["cache"]).vae["weights_sha256"]  # the existing cache is untouched


def test_run_with_a_cache_of_another_size_stops_before_work(run_cli, env, tmp_path, monkeypatch, capsys):
    matrix = tmp_path / "m.toml"
    matrix.write_text(f'[base]\ndata = {{ name = "latents", options = {{ cache = "{env["cache"]}", '
                      f'size = 128 }} }}\nmodel.patch_size = 2\n')
    code, _, err = run_cli("validate", "--matrix", str(matrix),
                           "--results-dir", str(tmp_path / "r"))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert "holds 32 px images, the run asks for 128" in lines[0]
