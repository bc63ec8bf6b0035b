"""The sampling benchmark: ARFlow's autoregressive sampler against SiT's, and the state it carries.

Two measurements, each timed A/B interleaved (`timing.time_interleaved`) so ratios come from one
run on the same machine load:

1. ``measure="sampling"``: one whole sampling call (default: SDE, 250 steps, guidance 1.5, the
   paper's setting) of ARFlow with hybrid attention against SiT with softmax attention, same
   backbone (flavor, patch, image geometry) and batch; then a ``measure="sampling_ratio"`` row with
   median(ARFlow) / median(SiT) against the target `RATIO_TARGET`.
2. ``measure="step"``: one `DiT.step` at position k (the state already holds k - 1 images), for
   ARFlow-hybrid, ARFlow-softmax (KV cache) and, as the position-free reference, one SiT forward;
   with the bytes of the state after that step (holding k images) and the step's FLOPs
   (`count_flops`: matmuls and attention, elementwise work not counted).

The ratio row also carries ``flops_ratio``: one ARFlow-hybrid step's FLOPs over one SiT step's
(both position-free). It is the time ratio the pair would have if both ran at the same FLOP/s, so
the part of the time ratio above it is the hybrid's lower efficiency (its norms, gates and small
state matmuls), and a target below it asks the hybrid to run faster per FLOP than SiT.

Models are freshly initialised: the cost of a step does not depend on the weights. Every row is
appended at once to ``results_dir / BENCH_FILE``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from arflowbench.benchmarks.timing import restores_threads, tensor_bytes, time_interleaved
from arflowbench.config import AttentionSpec, ModelSpec
from arflowbench.formulations.arflow import ARFlow
from arflowbench.formulations.sit import SiT
from arflowbench.metrics.throughput import count_flops
from arflowbench.models.backbone import DiT
from arflowbench.models.build import build_model
from arflowbench.results import BENCH_FILE, BenchRecord, append, environment_stamp

#: ARFlow-hybrid sampling time over SiT's that we aim for (same backbone, batch and NFE; issue 9)
RATIO_TARGET = 1.15
#: the (formulation, attention) pairs compared
VARIANTS = {
    "arflow-hybrid": ("arflow", "hybrid"),
    "arflow-softmax": ("arflow", "softmax"),
    "sit-softmax": ("sit", "softmax"),
}
_FORMULATIONS = {"arflow": ARFlow, "sit": SiT}


def _model(attention: str, flavor: str, image_size: int, channels: int, patch_size: int,
           num_classes: int, device: str, seed: int) -> DiT:
    torch.manual_seed(seed)  # identical backbone weights wherever the shapes agree
    # built on CPU, then moved: the CPU generator gives the same weights on every device
    model = build_model(ModelSpec(flavor=flavor, patch_size=patch_size),
                        AttentionSpec(name=attention), image_size=image_size, channels=channels,
                        num_classes=num_classes)
    return model.to(device).eval()


@restores_threads
def run_sampling_bench(
    results_dir: Path = Path("results"),
    steps: int = 250,
    batch: int = 8,
    flavor: str = "debug",
    image_size: int = 32,
    channels: int = 1,
    patch_size: int = 4,
    num_classes: int = 10,
    sampler: str = "sde",
    cfg_scale: float = 1.5,
    positions: Iterable[int] = (1, 50, 250),
    repeats: int = 3,
    step_repeats: int = 10,
    warmup: int = 1,
    device: str = "cpu",
    threads: int | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Run both measurements (see the module docstring); append and return the rows.

    Defaults: Fashion-MNIST geometry (1x32x32, patch 4 = 64 tokens per image, the paper's
    ImageNet-128 sequence geometry), the debug flavor, batch 8 (16 rows with guidance).
    `threads` sets torch's CPU threads for the run (None keeps the current setting; the
    caller's setting is restored after).
    """
    if threads is not None:
        torch.set_num_threads(threads)
    out_file = Path(results_dir) / BENCH_FILE
    env = environment_stamp(device)
    base = {"flavor": flavor, "batch": batch,
            "image_size": image_size, "channels": channels, "patch_size": patch_size,
            "tokens_per_image": (image_size // patch_size) ** 2, "sampler": sampler,
            "steps": steps, "cfg_scale": cfg_scale, "device": device, "warmup": warmup,
            "threads": torch.get_num_threads()}
    rows: list[dict[str, Any]] = []

    def record(**fields: Any) -> dict[str, Any]:
        # the load average says how much other work shared the machine (wall-clock timings)
        rec = BenchRecord(bench="sampling", env=env, values={
            **base, "load_avg_1m": os.getloadavg()[0], **fields})
        append(out_file, rec)
        rows.append(rec.flat())
        return rows[-1]

    models = {name: _model(attn, flavor, image_size, channels, patch_size, num_classes, device,
                           seed) for name, (_, attn) in VARIANTS.items()}
    labels = torch.arange(batch, device=device) % num_classes

    # -- 1. whole sampling calls ---------------------------------------------------------------
    nfe: dict[str, int] = {}

    def sampling_call(name: str):
        form = _FORMULATIONS[VARIANTS[name][0]]()

        def call():
            g = torch.Generator().manual_seed(seed)
            nfe[name] = form.sample(models[name], labels, steps, sampler, cfg_scale, g).nfe
        return call

    pair = ("arflow-hybrid", "sit-softmax")
    timings = time_interleaved({n: sampling_call(n) for n in pair}, warmup=warmup,
                               repeats=repeats, device=device)
    for name in pair:
        form, attn = VARIANTS[name]
        t = timings[name]
        record(measure="sampling", variant=name, formulation=form, attention=attn,
               implementation=models[name].attention_implementation, nfe=nfe[name],
               ms_per_nfe=t.median_ms / nfe[name], **t.as_dict())
    ratio = timings[pair[0]].median_ms / timings[pair[1]].median_ms

    # -- 2. one step at position k, and the state it leaves --------------------------------------
    rows_b = 2 * batch if cfg_scale != 1.0 else batch  # guidance doubles the batch
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((rows_b, channels, image_size, image_size), generator=g).to(device)
    y = (torch.arange(rows_b, device=device) % num_classes)
    t = torch.full((rows_b,), 0.5, device=device)
    ar = ("arflow-hybrid", "arflow-softmax")
    states = {n: models[n].init_state(rows_b, device=device) for n in ar}

    def step_call(n: str, state):
        return lambda: models[n].step(x, t, y, state)

    def sit_call():
        return models["sit-softmax"](x[:, None], t[:, None], y)  # SiT: one image, no state

    with torch.no_grad():  # hybrid's step and SiT's forward cost the same at every position
        pair_flops = [count_flops(step_call(pair[0], states[pair[0]])), count_flops(sit_call)]
    record(measure="sampling_ratio", variant=f"{pair[0]}/{pair[1]}", ratio_median=ratio,
           ratio_p20_p80=[timings[pair[0]].p20_ms / timings[pair[1]].p80_ms,
                          timings[pair[0]].p80_ms / timings[pair[1]].p20_ms],
           flops_ratio=pair_flops[0] / pair_flops[1],
           target=RATIO_TARGET, within_target=ratio <= RATIO_TARGET, repeats=repeats)

    held = 0  # images each state holds
    for k in sorted(set(positions)):
        with torch.no_grad():
            while held < k - 1:  # fill the context up to k - 1 images (untimed)
                for n in ar:
                    states[n] = models[n].step(x, t, y, states[n])[1]
                held += 1
            calls = {n: step_call(n, states[n]) for n in ar} | {"sit-softmax": sit_call}
            step_t = time_interleaved(calls, warmup=warmup, repeats=step_repeats, device=device)
            after = {n: tensor_bytes(calls[n]()[1]) for n in ar}  # state holding k images
            flops = {n: count_flops(call) for n, call in calls.items()}
        for n, timing in step_t.items():
            form, attn = VARIANTS[n]
            record(measure="step", variant=n, formulation=form, attention=attn, position=k,
                   rows=rows_b, state_bytes=after.get(n), flops=flops[n], **timing.as_dict())
    return rows


def summary(rows: Iterable[dict[str, Any]]) -> str:
    """The rows of one run as short Markdown tables."""
    rows = [r for r in rows if r.get("bench") == "sampling"]
    out = ["| variant | sampling median ms | p20 | p80 | NFE |", "|---|---|---|---|---|"]
    out += [f"| {r['variant']} | {r['median_ms']:.0f} | {r['p20_ms']:.0f} | {r['p80_ms']:.0f} | "
            f"{r['nfe']} |" for r in rows if r["measure"] == "sampling"]
    out += [f"\nratio {r['variant']}: {r['ratio_median']:.3f} (target <= {r['target']}; "
            f"FLOPs per step {r['flops_ratio']:.3f}: the time ratio at equal FLOP/s)"
            for r in rows if r["measure"] == "sampling_ratio"]
    out += ["", "| variant | position | step median ms | p20 | p80 | state bytes |",
            "|---|---|---|---|---|---|"]
    out += [f"| {r['variant']} | {r['position']} | {r['median_ms']:.2f} | {r['p20_ms']:.2f} | "
            f"{r['p80_ms']:.2f} | {r['state_bytes'] if r['state_bytes'] is not None else '-'} |"
            for r in rows if r["measure"] == "step"]
    return "\n".join(out)
