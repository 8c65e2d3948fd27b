"""Input pipeline: tf.data throughput (via `input_pipeline.benchmark`) and whether the train step
is input-bound when the real iterator feeds it. Imports tensorflow; only the `pipeline`
sub-command loads this module."""

from __future__ import annotations

import copy
import os
import statistics
import time
from typing import Any, Sequence

import jax
import tensorflow_datasets as tfds

import input_pipeline  # noqa: F401  (registers the TFDS builders)
from input_pipeline import benchmark as pipeline_benchmark
from input_pipeline.pipeline import make_train_iterator

from comm_jax.bench.timing import median_time, timed_compile
from comm_jax.bench.train_step import synthetic_batch
from comm_jax.mesh import make_mesh, put_batch
from comm_jax.train_step import build_train_step


def host_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def ensure_prepared(names: Sequence[str], data_dir: str | None) -> None:
    """Generates the (offline, deterministic) TFDS datasets that are not built yet."""
    for name in names:
        builder = tfds.builder(name, data_dir=data_dir)
        if not builder.is_prepared():
            print(f"preparing {name} in {builder.data_dir} ...", flush=True)
            builder.download_and_prepare()


def throughput(targets: Sequence[tuple[str, int | None]], *, data_dir: str | None, batch: int,
               steps: int, warmup: int, window: int) -> list[dict[str, Any]]:
    """`input_pipeline.benchmark` for each (TFDS name, output size or None for native), with the
    rate per host core added."""
    cores = host_cores()
    rows = []
    for name, size in targets:
        row = pipeline_benchmark.benchmark_config(name, data_dir=data_dir, modalities=["image_1", "image_2"],
                                                  batch_size=batch, steps=steps, warmup=warmup,
                                                  window=window, size=size)
        row |= {"host_cores": cores, "examples_per_s_per_core": row["examples_per_s"] / cores}
        rows.append(row)
        print(f"{name:34s} {row['source_px']}->{row['output_px']} px  batch {batch}: "
              f"{row['examples_per_s']:8.1f} examples/s ({row['examples_per_s_per_core']:.1f} per core)", flush=True)
    return rows


def input_bound(cfg, *, data_dir: str | None, steps: int, warmup: int) -> dict[str, Any]:
    """Feeds the train step from the real tf.data iterator on this host and compares it with the
    step alone on a device-resident batch.

    - `step_alone_s`: median step on a synthetic device batch (the iterator idle, its buffer full);
    - synchronous breakdown: per step, time blocked in `next(iterator)` + host-to-device transfer
      (`wait_s`) vs time in the step (`step_s`), each step synchronised;
    - asynchronous loop as `comm_jax.train` runs it (dispatch the step, then fetch the next batch
      while it runs): examples/s, and device idle = wall time - steps x `step_alone_s`.
    """
    cfg = copy.deepcopy(cfg)
    cfg.data.data_dir = data_dir
    mesh = make_mesh(cfg.mesh)
    built = build_train_step(cfg, mesh)
    state = built.state
    iterator = make_train_iterator(cfg.data, built.spec, batch_size=cfg.batch_size, seed=cfg.seed)
    batch = put_batch(next(iterator), mesh)
    compiled, _ = timed_compile(built.step, state, batch)

    def run(b):
        nonlocal state
        state, metrics = compiled(state, b)
        return state, metrics

    synthetic = synthetic_batch(cfg, cfg.batch_size, mesh)
    time.sleep(1.0)                                   # let the iterator's prefetch buffer fill
    step_alone = median_time(lambda: run(synthetic), steps, warmup)["median_s"]

    waits, step_times = [], []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        b = put_batch(next(iterator), mesh)
        jax.block_until_ready(b)
        t1 = time.perf_counter()
        jax.block_until_ready(run(b))
        t2 = time.perf_counter()
        if i >= warmup:
            waits.append(t1 - t0)
            step_times.append(t2 - t1)

    b = put_batch(next(iterator), mesh)
    fetch = []
    start = time.perf_counter()
    for _ in range(steps):
        run(b)                                        # dispatched asynchronously
        t = time.perf_counter()
        b = put_batch(next(iterator), mesh)
        fetch.append(time.perf_counter() - t)
    jax.block_until_ready(state)
    wall = time.perf_counter() - start
    wait, step = statistics.median(waits), statistics.median(step_times)
    idle = max(0.0, wall - steps * step_alone)
    return {
        "config": cfg.data.name, "batch_size": cfg.batch_size, "host_cores": host_cores(), "steps": steps,
        "step_alone_s": step_alone, "examples_per_s_alone": cfg.batch_size / step_alone,
        "sync_wait_s": wait, "sync_step_s": step, "sync_wait_fraction": wait / (wait + step),
        "async_wall_s": wall, "async_examples_per_s": steps * cfg.batch_size / wall,
        "async_fetch_s_median": statistics.median(fetch),
        "async_device_idle_s": idle, "async_device_idle_fraction": idle / wall,
        "input_bound": idle / wall > 0.10,
    }
