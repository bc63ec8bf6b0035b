"""The training benchmark: one optimisation step of several (formulation, attention) variants on
the same backbone flavor and batch, timed A/B interleaved, with parameters, FLOPs and MFU.

It answers "how fast does this flavor train here, and how much slower is ARFlow-hybrid than
SiT-softmax?" in minutes, without training a model to the end. Steps are full training steps
(batch draw, forward, backward, AdamW, EMA), timed after warm-up; MFU is the FLOPs of one step
(`torch.utils.flop_counter`) over its median time, against the peak of the step's matmul dtype
(`throughput.peak_flops`: a datasheet value for known GPUs, else measured in this process).
On CUDA (``device="cuda"``) the step runs with TF32 on and, with ``precision="bf16"``, under bf16
autocast, as a training cell would. Rows go to ``results_dir / BENCH_FILE`` as
``bench = "training"``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from arflowbench.benchmarks.timing import restores_threads, time_interleaved
from arflowbench.config import AttentionSpec, ModelSpec, TrainSpec
from arflowbench.errors import ConfigError
from arflowbench.machine import configure_device
from arflowbench.models.backbone import count_parameters
from arflowbench.models.build import build_model
from arflowbench.models.flavors import FLAVORS
from arflowbench.plugins import DATASET, FORMULATION
from arflowbench.results import BENCH_FILE, BenchRecord, append, environment_stamp
from arflowbench.trainer import (
    autocast_context,
    autocast_dtype,
    ema_decay_at,
    step_generator,
    update_ema,
)

#: "formulation-attention" pairs, e.g. "sit-softmax", "arflow-hybrid"
DEFAULT_VARIANTS = ("sit-softmax", "arflow-hybrid")
#: ARFlow-hybrid's images/s over SiT-softmax's that issue 9 asks for at the evidence flavor
HYBRID_SPEED_TARGET = 0.8


def _variant(name: str) -> tuple[str, str]:
    form, _, att = name.partition("-")
    if not att:
        raise ConfigError(f"bench training: variant {name!r} is not 'formulation-attention' "
                          "(e.g. sit-softmax, arflow-hybrid)")
    FORMULATION.load(form)  # unknown names: one error with suggestions
    return form, att


def _step_fn(form_name: str, att: str, flavor: str, ds, data, batch: int, patch: int,
             seed: int, device: str = "cpu", precision: str = "fp32"):
    """A closure running one full training step, (flops of one step, param count), and the
    model (its attention implementation is known once it ran)."""
    from arflowbench.metrics.throughput import count_flops

    form_cls = FORMULATION.get(form_name)
    form = form_cls()
    torch.manual_seed(seed)
    model = build_model(ModelSpec(flavor=flavor, patch_size=patch), AttentionSpec(name=att),
                        image_size=ds.image_size, channels=ds.channels,
                        num_classes=ds.num_classes).to(device)
    model.train()
    ema = copy.deepcopy(model).requires_grad_(False)
    spec = TrainSpec(steps=1, batch_size=batch)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr)
    state = {"step": 0}

    def batch_on_device(g):
        x, y = form.make_batch(data, batch, g)
        return x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    def step() -> None:
        g = step_generator(seed, state["step"])
        x, y = batch_on_device(g)
        with autocast_context(device, precision):
            loss = form.training_loss(model, x, y, g)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        update_ema(ema, model, ema_decay_at(spec.ema_decay, state["step"]))
        state["step"] += 1

    def counted() -> None:
        g = step_generator(seed, 0)
        x, y = batch_on_device(g)
        with autocast_context(device, precision):
            loss = form.training_loss(model, x, y, g)["loss"]
        loss.backward()

    flops = count_flops(counted)
    model.zero_grad(set_to_none=True)
    return step, flops, count_parameters(model), model


@restores_threads
def run_training_bench(flavors: Sequence[str] = ("debug",), variants: Sequence[str] =
                       DEFAULT_VARIANTS, *, dataset: str = "fashion-mnist", patch_size: int = 4,
                       batch: int = 40, repeats: int = 10, warmup: int = 2,
                       threads: int | None = None, results_dir: Path = Path("results"),
                       seed: int = 0, say=print, device: str = "cpu",
                       precision: str = "fp32") -> list[dict[str, Any]]:
    """Time the variants' training steps per flavor on `device`; append and return the rows."""
    from arflowbench.metrics.throughput import matmul_dtype, mfu, peak_flops, uncounted_kernels

    bad = [f for f in flavors if f not in FLAVORS]
    if bad:
        raise ConfigError(f"bench training: unknown flavor {bad[0]!r} "
                          f"(known: {', '.join(FLAVORS)})")
    if repeats < 1 or batch < 1:
        raise ConfigError("bench training: repeats and batch must be >= 1")
    pairs = {v: _variant(v) for v in variants}
    if threads is not None:
        torch.set_num_threads(threads)
    ds = DATASET.get(dataset)()
    ds.check_available()
    data = ds.load("train")
    autocast_dtype(device, precision)  # bf16 on CPU: one error before any work
    configure_device(device)  # TF32 on CUDA, before the stamp records it
    env, rows = environment_stamp(device), []
    dtype = matmul_dtype(device, autocast_dtype(device, precision))
    peak, peak_source = peak_flops(device, dtype)
    for flavor in flavors:
        fns, info = {}, {}
        for v, (form, att) in pairs.items():
            fns[v], flops, params, model = _step_fn(form, att, flavor, ds, data, batch,
                                                    patch_size, seed, device, precision)
            info[v] = (flops, params, model)
        timings = time_interleaved(fns, warmup=warmup, repeats=repeats, device=device)
        for v, t in timings.items():
            flops, params, model = info[v]
            impl = model.attention_implementation
            ips = batch / (t.median_ms / 1e3)
            values = {"flavor": flavor, "variant": v, "measure": "step", "dataset": dataset,
                      "patch_size": patch_size, "batch": batch, "param_count": params,
                      "train_flops_per_step": flops, "matmul_peak_flops": peak,
                      "device": device, "precision": precision, "peak_dtype": dtype,
                      "peak_source": peak_source, "attention_implementation": impl,
                      "flops_uncounted": ", ".join(uncounted_kernels(impl)) or "none",
                      "train_images_per_s": ips,
                      "train_images_per_s_p20": batch / (t.p80_ms / 1e3),
                      "train_images_per_s_p80": batch / (t.p20_ms / 1e3),
                      "mfu": mfu(flops / (t.median_ms / 1e3), peak),
                      "threads": torch.get_num_threads(), "load_avg_1m": os.getloadavg()[0],
                      **t.as_dict()}
            rec = BenchRecord(bench="training", env=env, values=values)
            append(Path(results_dir) / BENCH_FILE, rec)
            rows.append(rec.flat())
            say(f"{flavor:8s} {v:16s} {params / 1e6:6.2f}M params  {ips:7.1f} img/s "
                f"[{values['train_images_per_s_p20']:.1f}-{values['train_images_per_s_p80']:.1f}]"
                f"  MFU {values['mfu']:.2f}")
        if set(DEFAULT_VARIANTS) <= timings.keys():
            rows.append(_ratio_row(timings, flavor, batch, device, env, results_dir, say))
    return rows


def _ratio_row(timings, flavor: str, batch: int, device: str, env, results_dir: Path,
               say) -> dict[str, Any]:
    """ARFlow-hybrid's images/s over SiT-softmax's from one interleaved run, against
    `HYBRID_SPEED_TARGET`; [p20-p80]: the ratio's range from the two timings' percentiles."""
    sit, hyb = (timings[v] for v in DEFAULT_VARIANTS)
    ratio = sit.median_ms / hyb.median_ms  # images/s ratio = inverse time ratio
    values = {"flavor": flavor, "measure": "training_ratio",
              "variant": f"{DEFAULT_VARIANTS[1]}/{DEFAULT_VARIANTS[0]}", "batch": batch,
              "device": device, "threads": torch.get_num_threads(),
              "load_avg_1m": os.getloadavg()[0], "ratio_median": ratio,
              "ratio_p20_p80": [sit.p20_ms / hyb.p80_ms, sit.p80_ms / hyb.p20_ms],
              "target": HYBRID_SPEED_TARGET, "within_target": ratio >= HYBRID_SPEED_TARGET}
    rec = BenchRecord(bench="training", env=env, values=values)
    append(Path(results_dir) / BENCH_FILE, rec)
    say(f"{flavor:8s} images/s {values['variant']}: {ratio:.3f} "
        f"(target >= {HYBRID_SPEED_TARGET})")
    return rec.flat()
