"""Model sizes. Names are defined here once; specs, the CLI and tests derive from `FLAVORS`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Flavor:
    depth: int
    width: int
    heads: int
    mlp_ratio: float = 4.0


FLAVORS: dict[str, Flavor] = {
    # a few seconds of CPU training: the tests' and the quickstart's model
    "debug": Flavor(depth=2, width=64, heads=2),
    # the CPU evidence flavor (issue 9): fashion-mnist 32x32, patch 4, 40 images per step. Head
    # dim 64 as in the paper. Chosen as the largest that trains 80k images in ~15 min on 2 cores
    # for the slower variant (ARFlow-hybrid), by `bench training --threads 2` (Dec 2026, shared
    # machine, quiet windows): depth 5 / width 256: SiT-softmax 130 img/s, ARFlow-hybrid 97.5
    # (80k in 13.7 min); depth 6 / 256: 108 / 81 (16.4 min, over); depth 4 / 320: ~41 img/s at
    # 1 thread for ARFlow-hybrid like depth 6 / 256 (over). 2 threads ran ~1.85x 1 thread here.
    "mini": Flavor(depth=5, width=256, heads=4),
    # the DiT/SiT sizes (S 33M, B 130M, L 458M, XL 675M parameters with patch 2 on 32x32x4)
    "S": Flavor(depth=12, width=384, heads=6),
    "B": Flavor(depth=12, width=768, heads=12),
    "L": Flavor(depth=24, width=1024, heads=16),
    "XL": Flavor(depth=28, width=1152, heads=16),
    # ARFlow-XL keeps head dim 64 (1152 / 18)
    "ARFlow-XL": Flavor(depth=28, width=1152, heads=18),
}
