"""The metrics sanity benchmark: do our FID numbers behave, and what do features cost?

For each feature extractor (``inception``, ``classifier``) on one dataset:

1. ``check="train-vs-test"``: `num` seeded train images against `num` seeded test images (the
   reference). Real against real: the floor that a generator's FID is read against.
2. ``check="noise"``: the reference images themselves plus Gaussian noise of each std (in units
   of the 0..255 range), against the clean reference: FID must grow with the noise; a
   ``check="noise-monotonic"`` row records whether it did.
3. ``check="throughput"``: images per second of feature extraction alone (after a warm-up).

Every row is appended at once to ``results_dir / BENCH_FILE`` (a crash keeps what was measured).
Run: ``python -m arflowbench.benchmarks.metrics --dataset fashion-mnist --num 500``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from arflowbench.benchmarks.timing import time_callable
from arflowbench.metrics.evaluate import evaluate_samples, reference_images
from arflowbench.metrics.extractors import EXTRACTORS
from arflowbench.metrics.features import prepare_extractor
from arflowbench.plugins import DATASET
from arflowbench.results import BENCH_FILE, BenchRecord, append, environment_stamp

DEFAULT_NOISE = (0.05, 0.1, 0.2)
TRAIN_SEED = 1


def add_gaussian_noise(images: torch.Tensor, std: float, seed: int = 0) -> torch.Tensor:
    """uint8 (N, C, H, W) plus N(0, (std * 255)^2) per pixel, rounded and clipped to uint8."""
    gen = torch.Generator().manual_seed(seed)
    noisy = images.float() + std * 255.0 * torch.randn(images.shape, generator=gen)
    return noisy.round().clamp(0, 255).to(torch.uint8)


def _subset(images: torch.Tensor, labels: torch.Tensor, num: int, seed: int):
    idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:num]
    idx = idx.sort().values
    return images[idx], labels[idx]


def features_per_second(extractor: str, dataset: Any, cache_dir: str | Path | None = None,
                        batch: int = 16, repeats: int = 3, device: str = "cpu") -> float:
    """Feature-extraction throughput (images/s) of one extractor on the dataset's test images."""
    import torch_fidelity.utils as tfu

    spec = prepare_extractor(extractor, dataset, cache_dir, device)
    model = tfu.create_feature_extractor(
        spec.tf_name, [tfu.FEATURE_EXTRACTORS_REGISTRY[spec.tf_name]
                       .get_default_feature_layer_for_metric("fid")],
        cuda=torch.device(device).type == "cuda",
        feature_extractor_weights_path=str(spec.weights_path), verbose=False)
    images = dataset.load("test").images[:batch].to(device)
    with torch.no_grad():
        timing = time_callable(lambda: model(images), warmup=1, repeats=repeats, device=device)
    return batch / (timing.median_ms / 1e3)


def run_metrics_sanity(
    dataset: str = "fashion-mnist",
    extractors: Sequence[str] = tuple(EXTRACTORS),
    noise_levels: Sequence[float] = DEFAULT_NOISE,
    results_dir: str | Path = "results",
    num: int = 500,
    cache_dir: str | Path | None = None,
    batch_size: int = 50,
    device: str = "cpu",
    say: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Run the checks above; append and return the bench rows."""
    ds = DATASET.get(dataset)()
    out_file = Path(results_dir) / BENCH_FILE
    env = environment_stamp(device)
    reference = reference_images(ds, "test", num)
    train = ds.load("train")
    train_images, train_labels = _subset(train.images, train.labels, num, TRAIN_SEED)
    rows: list[dict[str, Any]] = []

    def emit(status: str = "ok", **fields: Any) -> None:
        rec = BenchRecord(bench="metrics-sanity", status=status, env=env,
                          values={"dataset": dataset, **fields})
        append(out_file, rec)
        rows.append(rec.flat())

    def score(extractor, common, images, labels, check, **extra) -> float:
        t = time.perf_counter()
        r = evaluate_samples(images, labels, ds, extractor, "test", cache_dir=cache_dir,
                             batch_size=batch_size, device=device, reference_num=num)
        seconds = time.perf_counter() - t
        say(f"{extractor} {check} {extra}: FID {r['fid']:.3f} ({seconds:.0f} s)")
        keep = {k: r.get(k) for k in ("fid", "kid_mean", "kid_std", "precision", "recall",
                                  "class_accuracy", "eval_num_samples", "reference_num",
                                  "kid_subset_size")}
        emit(check=check, **common, **extra, **keep, seconds=round(seconds, 2))
        return r["fid"]

    for extractor in extractors:
        t0 = time.perf_counter()
        spec = prepare_extractor(extractor, ds, cache_dir, device)  # convert / train once
        common = {"extractor": extractor, "extractor_version": spec.version, **spec.info}
        say(f"{extractor}: ready in {time.perf_counter() - t0:.1f} s {spec.info}")
        score(extractor, common, train_images, train_labels, "train-vs-test")
        fids = [score(extractor, common, add_gaussian_noise(reference, std), None, "noise",
                      noise_std=std)
                for std in noise_levels]
        monotonic = all(a < b for a, b in zip(fids, fids[1:]))
        emit(check="noise-monotonic", **common, noise_levels=list(noise_levels), fids=fids,
             monotonic=monotonic, status="ok" if monotonic else "failed")
        ips = features_per_second(extractor, ds, cache_dir, device=device)
        say(f"{extractor}: {ips:.2f} images/s")
        emit(check="throughput", **common, images_per_s=ips, torch_threads=torch.get_num_threads())
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--extractors", default=",".join(EXTRACTORS))
    p.add_argument("--noise", default=",".join(map(str, DEFAULT_NOISE)))
    p.add_argument("--num", type=int, default=500)
    p.add_argument("--results-dir", default="results")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    run_metrics_sanity(a.dataset, a.extractors.split(","), [float(x) for x in a.noise.split(",")],
                       a.results_dir, a.num, a.cache_dir, device=a.device)


if __name__ == "__main__":
    main()
