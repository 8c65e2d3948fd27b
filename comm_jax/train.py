"""Pretraining entry point: config -> mesh -> data -> sharded state -> jitted step -> loop with
metrics read one step late, asynchronous Orbax checkpoints and exact resume.

    python -m comm_jax.train --config=configs/trifeatures.py:cpu --workdir=DIR [--config.key=value ...]
"""

from __future__ import annotations

import collections
import math
import time
from typing import Any, Iterator

import jax
import ml_collections

from comm_jax import config_schema, distributed
from comm_jax.checkpoints import CheckpointStore, clear_complete, first_difference_in, mark_complete
from comm_jax.mesh import make_mesh, put_batch
from comm_jax.metrics_log import MetricsWriter, Throughput, progress_line, say
from comm_jax.train_state import abstract_state
from comm_jax.train_step import build_train_step


class NonFiniteLoss(RuntimeError):
    pass


def _device_prefetch(batches: Iterator, mesh, size: int = 2) -> Iterator:
    """Keeps `size` batches already transferred to the devices ahead of the step."""
    queue: collections.deque = collections.deque()
    for batch in batches:
        queue.append(put_batch(batch, mesh))
        if len(queue) > size:
            yield queue.popleft()
    while queue:
        yield queue.popleft()


def _check_resumable(saved: dict[str, Any], cfg: ml_collections.ConfigDict, step: int) -> None:
    """Refuse to resume a checkpoint whose model, loss or data differ from the current config."""
    current = config_schema.to_json_dict(cfg)
    key = first_difference_in(saved, current, ("model", "loss", "data", "precision", "mesh", "param_sharding"))
    if key is not None:
        raise ValueError(f"checkpoint at step {step} was written with a different config: {key} differs "
                         f"(use another --workdir, or restore the original value)")


def train(cfg: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains to `cfg.num_steps`, resuming from the latest checkpoint in `workdir`. Returns the last
    logged metrics row."""
    from input_pipeline.pipeline import make_train_iterator

    primary = jax.process_index() == 0
    mesh = make_mesh(cfg.mesh)
    built = build_train_step(cfg, mesh)
    state, shardings = built.state, built.shardings
    store = CheckpointStore(workdir, save_every=cfg.ckpt_every, keep=cfg.keep_ckpts,
                            keep_every=cfg.keep_every or None)
    start = store.latest_step() or 0
    if start:
        _check_resumable(store.restore_config(start), cfg, start)
        state, data_state = store.restore(start, abstract_state(state, shardings))
        say(f"resumed from checkpoint at step {start} in {store.directory}")
    if primary and start < cfg.num_steps:
        clear_complete(workdir)
    position = start
    local_batch = cfg.batch_size // jax.process_count()
    batches = make_train_iterator(cfg.data, built.spec, batch_size=local_batch, seed=cfg.seed,
                                  process_index=jax.process_index(), process_count=jax.process_count(),
                                  position=position)
    device_batches = _device_prefetch(batches, mesh)
    config_json = cfg.to_json()
    log = MetricsWriter(workdir, "train", enabled=primary, keep_until_step=start)

    first = next(device_batches)
    t0 = time.perf_counter()
    compiled = built.step.lower(state, first).compile()
    compile_seconds = time.perf_counter() - t0
    say(f"compiled train step in {compile_seconds:.1f}s; {cfg.num_steps - start} steps to go, global batch "
            f"{cfg.batch_size} on {mesh.size} device(s) {dict(mesh.shape)}")

    clock = Throughput(cfg.batch_size, cfg.num_steps, start)
    pending: tuple[int, Any] | None = None
    last_row: dict[str, Any] = {}
    batch = first

    def read(step: int, metrics) -> dict[str, float]:
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not math.isfinite(values["loss"]):
            raise NonFiniteLoss(f"non-finite loss {values['loss']} at step {step}; the last good checkpoint "
                                f"(step {store.latest_step()}) is kept")
        return values

    try:
        for step in range(start + 1, cfg.num_steps + 1):
            state, metrics = compiled(state, batch)
            if pending is not None:                 # the previous step's metrics, read one step late
                prev_step, prev_metrics = pending
                values = read(prev_step, prev_metrics)
                if prev_step % cfg.log_every == 0:
                    last_row = log.write(prev_step, values | clock.report(prev_step))
                    say(progress_line(prev_step, cfg.num_steps, last_row))
            pending = (step, metrics)
            if step % cfg.ckpt_every == 0 or step == cfg.num_steps:
                with clock.pause():
                    read(step, metrics)             # never checkpoint a step whose loss is not finite
                    # The whole random state: every augmentation is a pure function of (seed, epoch,
                    # example index) in tf.data, or of (seed, step, row) on the devices.
                    store.save(step, state, {"position": step, "seed": cfg.seed}, config_json,
                               force=step == cfg.num_steps)
            if step < cfg.num_steps:
                batch = next(device_batches)
        if pending is not None:
            prev_step, prev_metrics = pending
            values = read(prev_step, prev_metrics)
            if prev_step % cfg.log_every == 0 or prev_step == cfg.num_steps:
                last_row = log.write(prev_step, values | clock.report(prev_step))
                say(progress_line(prev_step, cfg.num_steps, last_row))
    finally:
        store.wait()
        log.close()
    if cfg.num_steps > start:
        store.close()
    if primary:
        mark_complete(workdir, cfg.num_steps)
    say(f"training complete at step {cfg.num_steps}; checkpoints in {store.directory}")
    return last_row | {"compile_seconds": compile_seconds}


def main(argv=None) -> None:
    from absl import app, flags, logging
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Experiment config file, e.g. configs/trifeatures.py:cpu",
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics (resumed if it has checkpoints).")
    flags.mark_flags_as_required(["config", "workdir"])
    distributed.define_flags()

    def run(_):
        logging.set_verbosity(logging.WARNING)   # Orbax logs every save step at INFO
        try:
            distributed.initialize(flags.FLAGS)
            train(flags.FLAGS.config, flags.FLAGS.workdir)
        except (ValueError, NonFiniteLoss, FileNotFoundError, RuntimeError) as err:
            raise SystemExit(f"error: {err}")

    app.run(run, argv=argv)


if __name__ == "__main__":
    main()
