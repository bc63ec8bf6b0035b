"""One matrix cell, end to end, in its own process: resolve, train (or resume), sample, evaluate,
append one result row. Run as ``python -m arflowbench.cell JOB.json``.

Exit codes: 0 ok; 2 a user error (bad config, missing data, NaN loss), recorded as a failed row;
1 an unexpected crash, recorded as a failed row with the traceback's last line. A process killed
by a signal writes nothing: the runner records that failure.
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from arflowbench.benchmarks.timing import summarize
from arflowbench.config import RunSpec, RuntimeOptions
from arflowbench.data.base import to_uint8
from arflowbench.errors import ArflowbenchError, PluginUnavailableError
from arflowbench.resolve import Resolved, resolve
from arflowbench.results import (
    ARTIFACTS_DIR,
    RUNS_FILE,
    SCHEMA_VERSION,
    STATUS_FAILED,
    STATUS_OK,
    append_row,
    environment_stamp,
    now_iso,
)
from arflowbench.trainer import train
from arflowbench.ui import progress_bar

CHECKPOINT = "checkpoint.pt"
SAMPLES = "samples.png"
LOSS_LOG = "loss.csv"
#: points kept of the loss curve in the row (the full log is an artifact)
CURVE_POINTS = 200


def peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def smoothed(losses: list[float], window: int = 20) -> float:
    tail = losses[-window:]
    return sum(tail) / len(tail)


def downsample(losses: list[float], points: int = CURVE_POINTS) -> list[list[float]]:
    stride = max(1, len(losses) // points)
    idx = list(range(0, len(losses), stride))
    if idx[-1] != len(losses) - 1:
        idx.append(len(losses) - 1)
    return [[i + 1, losses[i]] for i in idx]


def spread(name: str, values: list[float]) -> dict[str, float]:
    """``name`` (median), ``name_p20`` and ``name_p80`` of `values`, through the benchmarks'
    own `summarize`; NaN when nothing was measured in this process (a reloaded training)."""
    if not values:
        return dict.fromkeys((name, f"{name}_p20", f"{name}_p80"), float("nan"))
    t = summarize(values)
    return {name: t.median_ms, f"{name}_p20": t.p20_ms, f"{name}_p80": t.p80_ms}


def save_grid(images: torch.Tensor, per_row: int, path: Path, min_side: int = 32) -> None:
    """uint8 (N, C, H, W) -> PNG grid, one class per row, upscaled so tiny images stay visible."""
    from torchvision.utils import save_image

    scale = max(1, min_side // images.shape[-1])
    imgs = images.float().div(255)
    if scale > 1:
        imgs = torch.nn.functional.interpolate(imgs, scale_factor=scale, mode="nearest")
    save_image(imgs, path, nrow=per_row, padding=2, pad_value=1.0)


@dataclass
class Sampled:
    images: torch.Tensor  # (N, C, H, W) uint8
    nfe: int  # network evaluations per image
    batch_images_per_s: list[float]  # one per batch (the first excluded when there are several)
    seconds: float


def sample_images(res: Resolved, model, labels: torch.Tensor, device: str, seed: int,
                  batch_size: int, progress: bool = False, what: str = "sample") -> Sampled:
    """Generate images for `labels` in batches from one seeded generator."""
    s = res.spec.sample
    g = torch.Generator().manual_seed(seed)
    out, rates, nfe, t_all = [], [], 0, time.perf_counter()
    batches = range(0, len(labels), batch_size)
    with progress_bar(f"{what} {res.run_id}", len(labels), progress) as bar:
        for i in batches:
            t0 = time.perf_counter()
            chunk = labels[i : i + batch_size].to(device)
            r = res.formulation.sample(model, chunk, s.steps, s.sampler, s.cfg_scale, g,
                                       rtol=s.rtol, atol=s.atol)
            out.append(to_uint8(r.images).cpu())
            rates.append(len(chunk) / (time.perf_counter() - t0))
            nfe = r.nfe
            if bar:
                bar(min(i + batch_size, len(labels)), len(labels), float("nan"), rates[-1])
    if len(rates) > 1:
        rates = rates[1:]  # warm-up batch
    return Sampled(torch.cat(out), nfe, rates, time.perf_counter() - t_all)


def training_mfu(res: Resolved, model, data, device: str, step_seconds: float) -> dict[str, float]:
    """Model FLOP utilisation of training: FLOPs of one counted step (forward + backward) over
    the median step time, against the matmul peak measured now in this process."""
    from arflowbench.metrics.throughput import count_flops, matmul_peak_flops, mfu
    from arflowbench.trainer import step_generator

    g = step_generator(res.spec.train.seed, 0)
    x, y = res.formulation.make_batch(data, res.spec.train.batch_size, g)
    x, y = x.to(device), y.to(device)

    def one_step():
        res.formulation.training_loss(model, x, y, g)["loss"].backward()

    flops = count_flops(one_step)
    model.zero_grad(set_to_none=True)
    peak = matmul_peak_flops(device)
    achieved = flops / step_seconds
    return {"train_flops_per_step": float(flops), "train_achieved_flops": achieved,
            "matmul_peak_flops": peak, "mfu": mfu(achieved, peak)}


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run one cell; returns the row (also appended to runs.jsonl)."""
    spec = RunSpec.model_validate(job["spec"])
    runtime = RuntimeOptions.model_validate(job["runtime"])
    device = runtime.resolved_device()
    results_dir = Path(runtime.results_dir)
    row: dict[str, Any] = {
        "schema": SCHEMA_VERSION, "kind": "run", "run_id": job["run_id"], "matrix": runtime.matrix,
        "cell": job.get("cell", {}), "spec": spec.model_dump(mode="json"), "started": now_iso(),
        "env": environment_stamp(device), "metrics": {}, "curves": {}, "artifacts": {},
        "error": None,
    }
    t_start = time.perf_counter()
    try:
        res = resolve(spec, runtime)
        if res.run_id != job["run_id"]:
            raise ArflowbenchError(f"run_id mismatch: runner {job['run_id']}, cell {res.run_id}")
        row["spec"] = res.spec.model_dump(mode="json")
        row["plugins"] = {
            "attention": {"name": spec.attention.name, "version": res.versions["attention"],
                          "implementation": res.attention_implementation},
            "formulation": {"name": spec.formulation.name, "version": res.versions["formulation"]},
            "dataset": {"name": spec.data.name, "version": res.versions["dataset"]},
        }
        if res.unavailable:
            raise PluginUnavailableError(f"attention {spec.attention.name!r} is unavailable "
                                         f"here: {res.unavailable}")
        row["metrics"].update(_train_sample_eval(res, runtime, device, results_dir, row))
        row["status"] = STATUS_OK
    except ArflowbenchError as err:
        row.update(status=STATUS_FAILED, error=f"{type(err).__name__}: {err}")
    except Exception as err:  # noqa: BLE001 - any crash fails this one cell, recorded
        row.update(status=STATUS_FAILED, error=f"{type(err).__name__}: {err}",
                   traceback=traceback.format_exc()[-4000:])
    row["finished"] = now_iso()
    row["duration_s"] = round(time.perf_counter() - t_start, 3)
    append_row(results_dir / RUNS_FILE, row)
    return row


def _train_sample_eval(res: Resolved, runtime: RuntimeOptions, device: str, results_dir: Path,
                       row: dict) -> dict[str, Any]:
    spec = res.spec
    art = results_dir / ARTIFACTS_DIR / res.run_id
    art.mkdir(parents=True, exist_ok=True)
    data = res.dataset.load("train")
    torch.manual_seed(spec.train.seed)  # model init
    model = res.build_model("cpu")
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with progress_bar(f"train {res.run_id}", spec.train.steps, runtime.progress) as bar:
        ema, tr = train(model, res.formulation, data, spec.train, run_id=res.run_id,
                        checkpoint_path=art / CHECKPOINT, device=device,
                        checkpoint_every=runtime.checkpoint_every, progress=bar)
    (art / LOSS_LOG).write_text("step,loss\n" + "".join(
        f"{i + 1},{v!r}\n" for i, v in enumerate(tr.losses)))
    row["curves"]["loss"] = downsample(tr.losses)
    # what actually ran, known once the tensors were on the device
    row["plugins"]["attention"]["implementation"] = model.attention_implementation
    ips = [spec.train.batch_size / t for t in tr.step_times]
    metrics: dict[str, Any] = {
        "param_count": res.param_count,
        "train_loss_final": tr.losses[-1],
        "train_loss_smoothed": smoothed(tr.losses),
        **spread("train_images_per_s", ips),
        "resumed_from_step": tr.resumed_from,
    }
    if tr.step_times:  # none when a finished training was only reloaded (e.g. eval re-run)
        metrics.update(training_mfu(res, model, data, device, statistics.median(tr.step_times)))
    # sample grid: grid_per_class images of every class, one row per class
    s = spec.sample
    n_cls = res.dataset.num_classes
    labels = torch.arange(n_cls).repeat_interleave(s.grid_per_class)
    grid = sample_images(res, ema, labels, device, s.seed, batch_size=len(labels))
    save_grid(grid.images, s.grid_per_class, art / SAMPLES)
    row["artifacts"] = {"samples": f"{ARTIFACTS_DIR}/{res.run_id}/{SAMPLES}",
                        "loss_log": f"{ARTIFACTS_DIR}/{res.run_id}/{LOSS_LOG}"}
    metrics.update(nfe=grid.nfe, sampler=s.sampler, cfg_scale=s.cfg_scale,
                   sample_images_per_s=len(labels) / grid.seconds)
    if spec.eval.num_samples:
        metrics.update(_evaluate(res, ema, runtime, device))
    metrics["peak_memory_mb"] = peak_memory_mb(device)
    return metrics


def _evaluate(res: Resolved, model, runtime: RuntimeOptions, device: str) -> dict[str, Any]:
    """Class-balanced samples with a fixed seed, scored by torch-fidelity (FID, KID, PR) and
    the dataset classifier (accuracy against the requested labels)."""
    from arflowbench.metrics.evaluate import evaluate_samples

    e, s = res.spec.eval, res.spec.sample
    labels = torch.arange(e.num_samples) % res.dataset.num_classes
    out = sample_images(res, model, labels, device, s.seed + 1, e.batch_size,
                        progress=runtime.progress, what="eval")
    metrics = evaluate_samples(out.images, labels, res.dataset, extractor=e.feature_extractor,
                               reference_split=e.reference_split,
                               kid_subset_size=e.kid_subset_size, cache_dir=runtime.cache_dir,
                               batch_size=e.batch_size, device=device)
    metrics.update(spread("sample_images_per_s", out.batch_images_per_s))
    # image-evaluations per second: comparable across samplers with different NFE
    metrics["sample_image_nfe_per_s"] = metrics["sample_images_per_s"] * out.nfe
    return metrics


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    job = json.loads(Path(argv[0]).read_text())
    threads = job["runtime"].get("threads")
    if threads:
        torch.set_num_threads(threads)
    row = run_job(job)
    if row["status"] == STATUS_OK:
        return 0
    print(f"error: {row['error']}", file=sys.stderr)
    return 1 if "traceback" in row else 2


if __name__ == "__main__":
    sys.exit(main())
