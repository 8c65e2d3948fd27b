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

from comm_jax import cli_errors, config_schema, distributed, divergence, lease
from comm_jax.checkpoints import CheckpointStore, clear_complete, first_difference_in, mark_complete
from comm_jax.divergence import NonFiniteLoss
from comm_jax.mesh import make_mesh, put_batch
from comm_jax.resume import restore_newest_readable
from comm_jax.retention import Rotation
from comm_jax.metrics_log import MetricsWriter, Throughput, progress_line, say
from comm_jax.train_state import abstract_state
from comm_jax.train_step import build_train_step


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


def _take_lease(workdir: str) -> lease.HeartbeatFile | None:
    """Process 0 takes the workdir's trainer lease; every process stops when it is held elsewhere."""
    held, refusal = None, ""
    if jax.process_index() == 0:
        try:
            held = lease.acquire(workdir)
        except lease.LeaseHeld as error:
            refusal = str(error)
    refusal = distributed.broadcast_from_primary(refusal)
    if refusal:
        raise lease.LeaseHeld(refusal)
    return held


def train(cfg: ml_collections.ConfigDict, workdir: str, *, keep_unevaluated: int = 8) -> dict[str, Any]:
    """Trains to `cfg.num_steps`, resuming from the newest readable checkpoint in `workdir`. While an
    evaluation watcher is live, up to `keep_unevaluated` checkpoints it has not evaluated are kept beyond
    `cfg.keep_ckpts`. Returns the last logged metrics row."""
    config_schema.validate(cfg)
    held_lease = _take_lease(workdir)       # before anything is written in the workdir
    try:
        return _train(cfg, workdir, keep_unevaluated)
    finally:
        if held_lease is not None:
            held_lease.stop()


def _train(cfg: ml_collections.ConfigDict, workdir: str, keep_unevaluated: int) -> dict[str, Any]:
    from input_pipeline.pipeline import make_train_iterator

    primary = jax.process_index() == 0
    mesh = make_mesh(cfg.mesh)
    built = build_train_step(cfg, mesh)
    state, shardings = built.state, built.shardings
    # Retention is `Rotation`'s (it spares checkpoints a live watcher has not evaluated), not Orbax's.
    store = CheckpointStore(workdir, save_every=cfg.ckpt_every, keep=None, keep_every=None)
    rotation = Rotation(store, workdir, keep=cfg.keep_ckpts, keep_every=cfg.keep_every or None,
                        keep_unevaluated=keep_unevaluated)
    start, restored, _ = restore_newest_readable(
        store, workdir, abstract_state(state, shardings),
        lambda saved, step: _check_resumable(saved, cfg, step))
    if start:
        state = restored
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
            store.wait()
            raise divergence.halt(workdir, store.steps(), step, f"non-finite loss {values['loss']} at step "
                                  f"{step}", move=primary)
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
                    if not divergence.state_is_finite(state):
                        store.wait()
                        raise divergence.halt(workdir, store.steps(), step + 1,
                                              f"non-finite parameters after step {step} (not saved)", move=primary)
                    # The whole random state: every augmentation is a pure function of (seed, epoch,
                    # example index) in tf.data, or of (seed, step, row) on the devices.
                    store.save(step, state, {"position": step, "seed": cfg.seed}, config_json,
                               force=step == cfg.num_steps)
                    rotation.after_save(step, final=step == cfg.num_steps)
            if step < cfg.num_steps:
                batch = next(device_batches)
        if pending is not None:
            prev_step, prev_metrics = pending
            values = read(prev_step, prev_metrics)
            if prev_step % cfg.log_every == 0 or prev_step == cfg.num_steps:
                last_row = log.write(prev_step, values | clock.report(prev_step))
                say(progress_line(prev_step, cfg.num_steps, last_row))
    finally:
        batches.close()       # a tf.data generator left to interpreter exit logs a finalization error
        store.wait()
        log.close()
    if cfg.num_steps > start:
        store.close()
    if primary:
        mark_complete(workdir, cfg.num_steps)
    say(f"training complete at step {cfg.num_steps}; checkpoints in {store.directory}")
    return last_row | {"compile_seconds": compile_seconds}


def main(argv=None) -> None:
    from absl import flags, logging
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Experiment config file, e.g. configs/trifeatures.py:cpu",
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics (resumed if it has checkpoints).")
    flags.DEFINE_integer("keep_unevaluated", 8, "While an evaluation watcher runs beside training, keep up to "
                         "this many checkpoints it has not evaluated yet beyond config.keep_ckpts (0: off).")
    flags.mark_flags_as_required(["config", "workdir"])
    distributed.define_flags()

    def run(_):
        logging.set_verbosity(logging.WARNING)   # Orbax logs every save step at INFO
        cfg = cli_errors.loaded_config()
        distributed.initialize(flags.FLAGS)
        train(cfg, flags.FLAGS.workdir, keep_unevaluated=flags.FLAGS.keep_unevaluated)

    cli_errors.run_program(run, argv, workdir=lambda: flags.FLAGS.workdir)


if __name__ == "__main__":
    main()
