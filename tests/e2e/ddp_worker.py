"""A data-parallel training and sampling run, for `test_ddp.py`: run under torchrun (W ranks)
or called in-process (one), it trains the debug model and samples, and rank 0 saves
``w<W>_<case>.pt`` (weights, losses, images) in OUT.

    python -m torch.distributed.run --standalone --nproc-per-node 2 ddp_worker.py OUT
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from arflowbench.config import RunSpec, RuntimeOptions
from arflowbench.distributed import World, close_world, init_world
from arflowbench.resolve import resolve
from arflowbench.sampling import class_balanced_labels, generate
from arflowbench.trainer import train

STEPS = 20
#: case -> (formulation, train.grad_accum); batch 16 splits over 2 ranks x 2 x S=2
CASES = {"sit": ({"name": "sit"}, 1),
         "arflow": ({"name": "arflow", "options": {"images_per_sequence": 2}}, 1),
         "sit_accum2": ({"name": "sit"}, 2)}
NUM_SAMPLES = 10


def spec(case: str) -> RunSpec:
    formulation, accum = CASES[case]
    return RunSpec.model_validate({
        "data": {"name": "digits"}, "model": {"flavor": "debug", "patch_size": 2},
        "formulation": formulation,
        "train": {"steps": STEPS, "batch_size": 16, "lr": 3e-4, "grad_clip": 1.0,
                  "weight_decay": 0.02, "grad_accum": accum},
        "sample": {"sampler": "sde", "steps": 3, "cfg_scale": 1.5}})


def run(case: str, out: Path, world: World, sample_batch: int = 2) -> dict:
    """Train `case` on `world` and sample NUM_SAMPLES images; what rank 0 keeps (else {})."""
    res = resolve(spec(case), RuntimeOptions(results_dir=out))
    torch.manual_seed(0)
    model = res.build_model("cpu")
    ema, tr = train(model, res.formulation, res.dataset.load("train"), res.spec.train,
                    train_id=f"{case}-{world.size}", checkpoint_path=out / f"ck_{case}_{world.size}.pt",
                    checkpoint_every=1000, world=world)
    labels = class_balanced_labels(NUM_SAMPLES, res.dataset.num_classes)
    s = generate(res.formulation, ema, labels, res.spec.sample, res.dataset, device="cpu",
                 seed=7, batch_size=sample_batch, world=world)
    return {"model": model.state_dict(), "losses": tr.losses, "images": s.images}


def main(out: Path) -> None:
    torch.set_num_threads(1)
    world, _ = init_world("cpu", timeout_s=120)
    try:
        for case in CASES:
            kept = run(case, out, world)
            if world.is_main:
                torch.save(kept, out / f"w{world.size}_{case}.pt")
    finally:
        close_world(world)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
