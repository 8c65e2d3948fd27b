"""Wall time of the exact BROJA solver on random joints; `python -m comm_jax.information.broja_timing`
prints the median, the range and the certified gaps."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence

import numpy as np

from comm_jax.information.pid import broja


def time_broja(shape: tuple[int, int, int] = (30, 30, 10), instances: int = 7,
               concentration: float = 0.5, seed: int = 0) -> list[dict]:
    """One row per random joint p ~ Dirichlet(concentration) of `shape`: seconds, Newton steps
    and certified gap (bits). Each instance is timed once, after one untimed warm-up solve."""
    rng = np.random.default_rng(seed)
    broja(rng.dirichlet(np.ones(int(np.prod(shape)))).reshape(shape))
    rows = []
    for _ in range(instances):
        p = rng.dirichlet(np.full(int(np.prod(shape)), concentration)).reshape(shape)
        start = time.perf_counter()
        _, info = broja(p, return_info=True)
        rows.append({"seconds": time.perf_counter() - start, "newton_steps": info["newton_steps"],
                     "gap": info["gap"]})
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shape", type=int, nargs=3, default=[30, 30, 10])
    parser.add_argument("--instances", type=int, default=7)
    parser.add_argument("--concentration", type=float, default=0.5)
    args = parser.parse_args(argv)
    rows = time_broja(tuple(args.shape), args.instances, args.concentration)
    seconds = [row["seconds"] for row in rows]
    print(f"shape {tuple(args.shape)}, {len(rows)} Dirichlet({args.concentration}) joints: "
          f"median {statistics.median(seconds):.3f} s (min {min(seconds):.3f}, max {max(seconds):.3f}); "
          f"Newton steps {min(r['newton_steps'] for r in rows)}-{max(r['newton_steps'] for r in rows)}; "
          f"max certified gap {max(r['gap'] for r in rows):.1e} bits")


if __name__ == "__main__":
    main()
