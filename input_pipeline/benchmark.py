"""Throughput of the training input pipeline (two SimCLR-augmented views per pair) on this host.

    python -m input_pipeline.benchmark --config bimodal_trifeatures/64px \
        --config bimodal_trifeatures/224px --batch 64 --steps 40 --output bench.json

Reports examples/s (pairs, each giving two augmented views of every image modality) as the
median over timed windows after a warm-up. ``--size 224`` on a 64 px dataset measures the 224 px
augmentation cost on upsampled crops (the PNG decode then stays at 64 px).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from typing import Any, Sequence

import ml_collections
import tensorflow as tf
import tensorflow_datasets as tfds

import input_pipeline  # noqa: F401  (registers the TFDS builders)
from comm_jax.batch import BatchSpec
from comm_jax.view_recipes import simclr_image_ops
from input_pipeline import pipeline


def benchmark_config(name: str, *, data_dir: str | None, modalities: Sequence[str],
                     batch_size: int, steps: int, warmup: int, window: int,
                     size: int | None = None) -> dict[str, Any]:
    """Times `steps` batches of the training iterator after `warmup` ones; one result dict."""
    native = tfds.builder(name, data_dir=data_dir).info.features[modalities[0]].shape[0]
    size = size or native
    data_cfg = ml_collections.ConfigDict({
        "name": name, "data_dir": data_dir, "train_split": "train",
        "modalities": {modality: modality for modality in modalities},
    })
    ops = simclr_image_ops(size)
    spec = BatchSpec(input_shapes={m: (size, size, 3) for m in modalities},
                     views={v: {m: ops for m in modalities} for v in ("view1", "view2")},
                     on_device=False, variable_length=())
    started = time.perf_counter()
    iterator = pipeline.make_train_iterator(data_cfg, spec, batch_size=batch_size, seed=0)
    batch = next(iterator)
    startup = time.perf_counter() - started
    for _ in range(warmup - 1):
        next(iterator)
    window_rates = []
    for _ in range(max(1, steps // window)):
        begin = time.perf_counter()
        for _ in range(window):
            next(iterator)
        window_rates.append(window * batch_size / (time.perf_counter() - begin))
    return {
        "config": name, "source_px": native, "output_px": size, "batch_size": batch_size,
        "modalities": list(modalities), "views": 2, "timed_steps": window * len(window_rates),
        "examples_per_s": statistics.median(window_rates),
        "images_per_s": statistics.median(window_rates) * 2 * len(modalities),
        "window_examples_per_s": window_rates, "startup_s": startup,
        "batch_shape": list(batch["views"]["view1"][modalities[0]].shape),
    }


def _machine() -> dict[str, Any]:
    return {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "tensorflow": tf.__version__, "python": platform.python_version()}


def _print_table(results: list[dict[str, Any]]) -> None:
    print(f"{'config':34s} {'px':>9s} {'batch':>5s} {'examples/s':>11s} {'images/s':>9s} "
          f"{'startup s':>9s}")
    for result in results:
        pixels = f"{result['source_px']}->{result['output_px']}"
        print(f"{result['config']:34s} {pixels:>9s} {result['batch_size']:5d} "
              f"{result['examples_per_s']:11.1f} {result['images_per_s']:9.1f} "
              f"{result['startup_s']:9.1f}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", help="TFDS name, repeatable "
                        "(default: bimodal_trifeatures/64px and /224px)")
    parser.add_argument("--data_dir", default=None, help="TFDS data dir (default: TFDS default)")
    parser.add_argument("--modalities", default="image_1,image_2", help="comma-separated features")
    parser.add_argument("--batch", type=int, default=64, help="per-host batch size")
    parser.add_argument("--steps", type=int, default=40, help="timed batches")
    parser.add_argument("--warmup", type=int, default=5, help="untimed batches first")
    parser.add_argument("--window", type=int, default=5, help="batches per timed window")
    parser.add_argument("--size", type=int, action="append",
                        help="crop output size, once per --config (default: the native size)")
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    configs = args.config or ["bimodal_trifeatures/64px", "bimodal_trifeatures/224px"]
    sizes = args.size or [None] * len(configs)
    if len(sizes) != len(configs):
        parser.error("give --size once per --config, or not at all")
    results = [benchmark_config(name, data_dir=args.data_dir, modalities=args.modalities.split(","),
                                batch_size=args.batch, steps=args.steps, warmup=args.warmup,
                                window=args.window, size=size)
               for name, size in zip(configs, sizes)]
    _print_table(results)
    if args.output:
        with open(args.output, "w") as file:
            json.dump({"machine": _machine(), "results": results}, file, indent=2)
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
