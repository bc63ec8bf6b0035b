"""The evaluation stage: score samples with the run's metric plugins, at the end of training
and at the `eval.at` points during it.

Every evaluation draws class-balanced labels and samples them with the run's sampler from a
generator seeded by ``sample.seed + 1`` (the grid uses ``sample.seed``), so evaluation points
and the final evaluation of one run, and of runs that differ only in their training, are
scored on the same labels and noise seeds.

In a data-parallel cell every rank samples its shard (`sampling.generate`); rank 0 scores the
gathered set once, writes the final set as an ADM-style ``.npz`` next to the row, and alone
writes files; the other ranks return empty results.

Evaluation points are kept in ``artifacts/<run_id>/eval_points.jsonl`` as they finish: a
resumed run reuses them instead of sampling again.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from arflowbench.benchmarks.timing import spread
from arflowbench.distributed import World
from arflowbench.errors import ArflowbenchError
from arflowbench.resolve import Resolved
from arflowbench.results import EvalPoint, append_row, read_rows, run_artifacts
from arflowbench.sampling import Sampled, class_balanced_labels, generate, npz_name, save_npz
from arflowbench.train_stage import Trained
from arflowbench.trainer import load_checkpoint

POINTS_FILE = "eval_points.jsonl"
EVAL_SEED_OFFSET = 1


def score(res: Resolved, sampled: Sampled, cache_dir, device: str) -> dict[str, Any]:
    """Every listed metric on the same samples; one flat dict of their results."""
    out: dict[str, Any] = {}
    for metric in res.metrics:
        out.update(metric.compute(sampled.images, sampled.labels, res.dataset,
                                  cache_dir=cache_dir, device=device))
    return out


def sample_for_eval(res: Resolved, model, num: int, device: str, progress: bool,
                    what: str, world: World | None = None) -> Sampled:
    labels = class_balanced_labels(num, res.dataset.num_classes)
    return generate(res.formulation, model, labels, res.spec.sample, res.dataset, device=device,
                    seed=res.spec.sample.seed + EVAL_SEED_OFFSET,
                    batch_size=res.spec.eval.batch_size, progress=progress, what=what,
                    world=world)


def evaluate_final(res: Resolved, ema, runtime, device: str,
                   world: World | None = None) -> tuple[dict, dict]:
    """The final evaluation: (quality metrics, sampling throughput); rank 0 also keeps the
    samples as ``artifacts/<run_id>/samples_NxHxWxC.npz`` (`final_npz`). Other ranks: ({}, {})."""
    world = world or World()
    out = sample_for_eval(res, ema, res.spec.eval.num_samples, device, runtime.progress,
                          f"eval {res.run_id}", world)
    if not world.is_main:
        return {}, {}
    npz = npz_name(out.images)
    save_npz(out.images, out.labels, run_artifacts(runtime.results_dir, res.run_id) / npz)
    quality = score(res, out, runtime.cache_dir, device)
    speed: dict[str, Any] = {**spread("sample_images_per_s", out.batch_images_per_s),
                             "eval_num_samples": len(out.images), "samples_npz": npz}
    # image-evaluations per second: comparable across samplers with different NFE
    speed["sample_image_nfe_per_s"] = speed["sample_images_per_s"] * out.nfe
    return quality, speed


def final_point(res: Resolved, quality: dict[str, Any]) -> EvalPoint:
    """The final evaluation as the last point of the quality-vs-images-seen curve."""
    t = res.spec.train
    return EvalPoint(images_seen=t.steps * t.batch_size, step=t.steps,
                     num_samples=res.spec.eval.num_samples, metrics=quality)


def evaluate_points(res: Resolved, trained: Trained, runtime, device: str,
                    art_dir: Path, world: World | None = None) -> list[EvalPoint]:
    """Score the EMA snapshot at every `eval.at` point (reusing points already scored)."""
    world = world or World()
    e, batch = res.spec.eval, res.spec.train.batch_size
    num = e.at_num_samples or e.num_samples
    # rank 0's reading: every rank skips the same points
    done = world.broadcast(_finished_points(art_dir / POINTS_FILE, num) if world.is_main else None)
    points = []
    for step in res.spec.eval_steps():
        if step in done:
            points.append(done[step])
            continue
        path = trained.snapshot(step)
        snap = load_checkpoint(path, res.train_id)
        if snap is None:
            raise ArflowbenchError(
                f"eval.at step {step}: training {res.train_id} finished without an EMA snapshot "
                f"there ({path} is missing); delete {trained.dir} to train again with it")
        model = copy.deepcopy(trained.ema)
        model.load_state_dict(snap["ema"])
        out = sample_for_eval(res, model, num, device, runtime.progress,
                              f"eval@{step * batch} {res.run_id}", world)
        if not world.is_main:
            continue
        p = EvalPoint(images_seen=step * batch, step=step, num_samples=num,
                      metrics=score(res, out, runtime.cache_dir, device))
        append_row(art_dir / POINTS_FILE, p.model_dump(mode="json"))
        points.append(p)
    return points


def _finished_points(path: Path, num: int) -> dict[int, EvalPoint]:
    out = {}
    for row in read_rows(path).rows:
        try:
            p = EvalPoint.model_validate(row)
        except ValueError:
            continue
        if p.num_samples == num:
            out[p.step] = p
    return out
