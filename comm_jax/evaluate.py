"""Evaluation process: watches `WORKDIR/checkpoints` (read-only) and evaluates each new checkpoint
with the evaluators `config.evals` selects, until training has written its completion marker and
every retained checkpoint is done.

    python -m comm_jax.evaluate --config=configs/trifeatures.py:cpu --workdir=DIR [--step=N] [--config.key=value ...]

It runs as one process or as several, with the same multi-process flags and environment variables as
training (`comm_jax.distributed`). Each process reads its own shard of the evaluation splits, the
features of all processes are gathered so every process runs the same evaluators on the same data,
and only process 0 prints and writes results. Process 0 also takes every decision (which checkpoints
to evaluate, when to stop, whether a failed restore is retried) and shares it, so the processes
never diverge.

Each checkpoint's model is built from the config saved with it; only its parameters and batch
statistics are read. Results: `DIR/metrics/eval.jsonl` (one row per step, also how a restarted
process knows what is done), TensorBoard events under `DIR/metrics/eval`, `DIR/metrics/eval.png`
and a summary table printed at the end. A checkpoint deleted or unreadable under the watcher is
skipped with a warning; an evaluator that fails is logged and the others still report.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from typing import Any, Iterable, Mapping, Sequence

import jax
import ml_collections
from jax.sharding import Mesh

from comm_jax import cli_errors, distributed, priority
from comm_jax.cli_errors import ProgramError
from comm_jax.watch_progress import WatchProgress
from comm_jax.checkpoints import CheckpointStore, checkpoint_dir, completed_step
from comm_jax.evaluators import Evaluator, Source, build_evaluators, extraction_limit, resolve_config
from comm_jax.evaluators.data import evaluation_data
from comm_jax.evaluators.features import EvalContext
from comm_jax.evaluators.frozen_model import FrozenModel, restore_frozen_model
from comm_jax.evaluators.report import format_table, plot, read_rows
from comm_jax.mesh import make_mesh
from comm_jax.metrics_log import MetricsWriter, say

log = logging.getLogger("comm_jax.evaluate")
EVAL_LOG = "eval"


def evaluate_model(model: FrozenModel, evaluators: Sequence[Evaluator], sources: Mapping[Source, Iterable],
                   evals: ml_collections.ConfigDict, mesh: Mesh) -> dict[str, float]:
    """Every evaluator's metrics for one model; one that fails is logged with its error and left out."""
    requests: dict[Source, list] = collections.defaultdict(list)
    readers: dict[Source, list[Evaluator]] = collections.defaultdict(list)
    runnable = []
    for evaluator in evaluators:
        try:
            for source, subset in evaluator.requests(model.modalities):
                requests[source].append(tuple(subset))
                readers[source].append(evaluator)
            runnable.append(evaluator)
        except Exception as error:
            log.error("evaluator %r failed at step %s: %s", evaluator.name, model.step, error)
    limits = {source: extraction_limit(source, readers[source], evals) for source in requests}
    ctx = EvalContext(model, mesh, sources, requests, limits)
    metrics: dict[str, float] = {}
    for evaluator in runnable:
        try:
            metrics.update(evaluator.evaluate(ctx))
        except Exception as error:
            log.error("evaluator %r failed at step %s: %s: %s", evaluator.name, model.step,
                      type(error).__name__, error, exc_info=True)
    return metrics


class Watcher:
    """Evaluates the checkpoints of one workdir, remembering what is done across restarts.

    With several processes every method is called by all of them in the same order; what the
    processes could see differently (the checkpoint listing, the completion marker, `eval.jsonl`, a
    restore that failed) is decided on process 0 and broadcast.
    """

    def __init__(self, cfg: ml_collections.ConfigDict, workdir: str, timeout: float = 0.0):
        self.evals = resolve_config(cfg.evals)
        self.evaluators = build_evaluators(self.evals)
        self.mesh = make_mesh(cfg.mesh)
        if self.evals.batch_size % self.mesh.size:
            raise ValueError(f"config.evals.batch_size={self.evals.batch_size} is not divisible by the "
                             f"{self.mesh.size} devices of the mesh")
        self.workdir = os.path.abspath(workdir)
        self.log_path = os.path.join(self.workdir, "metrics", f"{EVAL_LOG}.jsonl")
        self.done = {int(row["step"]) for row in read_rows(self.log_path)}
        self.cfg = cfg
        self._sources: dict[Source, Iterable] | None = None
        self.store: CheckpointStore | None = None
        self.given_up: set[int] = set()
        self.failures: collections.Counter = collections.Counter()
        self.progress = WatchProgress(self.workdir, timeout)

    def data(self) -> dict[Source, Iterable]:
        """The evaluation (dataset, split)s, loaded on first use and kept for every checkpoint."""
        if self._sources is None:
            needed = [source for evaluator in self.evaluators for source in evaluator.sources()]
            self._sources = evaluation_data(self.cfg, self.evals, needed)
        return self._sources

    def _store_state(self, wait: bool) -> str:
        """'open', 'wait' or 'missing' (process 0's view of the checkpoints directory)."""
        if os.path.isdir(checkpoint_dir(self.workdir)):
            return "open"
        return "wait" if wait and completed_step(self.workdir) is None else "missing"

    def _open_store(self, wait: bool) -> CheckpointStore:
        announced = False
        while self.store is None:
            state = distributed.broadcast_from_primary(self._store_state(wait) if distributed.is_primary() else "")
            if state == "open":
                self.store = CheckpointStore(self.workdir, read_only=True)
            elif state == "missing":
                raise FileNotFoundError(f"no checkpoints directory at {checkpoint_dir(self.workdir)}")
            elif distributed.broadcast_from_primary(self.progress.timed_out([]) if distributed.is_primary() else ""):
                raise ProgramError(self.progress.timeout_message())
            else:
                if not announced:
                    say(f"waiting for checkpoints in {checkpoint_dir(self.workdir)}")
                    announced = True
                time.sleep(self.evals.poll_seconds)
        return self.store

    def _restore(self, step: int) -> tuple[FrozenModel | None, Exception | None]:
        """The model of `step` on every process, or (None, error) on every process when any of them
        could not read it."""
        model, error = None, None
        try:
            model = restore_frozen_model(self.store, step, self.mesh)
        except Exception as raised:
            error = raised
        if distributed.all_processes(error is None):
            return model, None
        return None, error or RuntimeError("another process could not read it")

    def evaluate_step(self, step: int, writer: MetricsWriter) -> dict[str, Any] | None:
        """Evaluates one checkpoint and appends its row; None when it cannot be read (warned)."""
        start = time.perf_counter()
        model, error = self._restore(step)
        if model is None:
            if distributed.is_primary():     # only process 0's bookkeeping decides what comes next
                self._restore_failed(step, error)
            return None
        metrics = evaluate_model(model, self.evaluators, self.data(), self.evals, self.mesh)
        row = writer.write(step, metrics)
        self.done.add(step)
        shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        say(f"step {step}: {shown or 'no metrics'} ({time.perf_counter() - start:.1f}s)")
        return row

    def _restore_failed(self, step: int, error: Exception) -> None:
        reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        if step not in self.store.steps():
            log.warning("checkpoint at step %d was deleted before it could be evaluated; skipping it (%s)",
                        step, reason)
            self.given_up.add(step)
            return
        self.failures[step] += 1
        if self.failures[step] >= self.evals.max_attempts:
            log.warning("checkpoint at step %d could not be read %d times; skipping it (%s)",
                        step, self.failures[step], reason)
            self.given_up.add(step)
        else:
            log.warning("checkpoint at step %d could not be read (half-written?); will retry (%s)", step, reason)

    def _plan(self) -> tuple[bool, list[int]]:
        """(training finished, steps to evaluate now), as process 0 sees them."""
        plan = None
        if distributed.is_primary():
            finished = completed_step(self.workdir) is not None     # read before listing the steps
            steps = self.store.steps()
            self.progress.note_listing(self.store, steps, self.done | self.given_up)
            todo = [s for s in steps if s not in self.done and s not in self.given_up]
            plan = [finished, todo, "" if finished or todo else self.progress.timed_out(steps)]
        finished, todo, timed_out = distributed.broadcast_from_primary(plan)
        if timed_out:
            raise ProgramError(self.progress.timeout_message())
        return bool(finished), [int(s) for s in todo]

    def watch(self, writer: MetricsWriter) -> None:
        """Until the completion marker is present and no retained checkpoint is left to evaluate."""
        self.data()                      # a data error shows now, not after the first checkpoint
        if distributed.is_primary():     # tells training which checkpoints to keep for this watcher
            self.progress.publish(lambda: sorted(self.done | self.given_up))
        self._open_store(wait=True)
        while True:
            finished, todo = self._plan()
            if finished and not todo:
                self.progress.report_never_seen()
                return
            progressed = any([self.evaluate_step(step, writer) is not None for step in todo])
            if not progressed:
                time.sleep(self.evals.poll_seconds)

    def evaluate_one(self, step: int, writer: MetricsWriter, again: bool = False) -> None:
        """Evaluates `step` once; with `again`, also when `eval.jsonl` has it (a new row is appended
        and readers take a step's last row)."""
        store = self._open_store(wait=False)
        steps = distributed.broadcast_from_primary(store.steps() if distributed.is_primary() else None)
        if not again and distributed.broadcast_from_primary(step in self.done):
            say(f"step {step} is already in {self.log_path}; pass --again to evaluate it again")
            return
        if step not in steps:
            raise ValueError(f"no checkpoint at step {step} in {store.directory}; it has {steps}")
        model, error = self._restore(step)
        if model is None:
            raise error
        metrics = evaluate_model(model, self.evaluators, self.data(), self.evals, self.mesh)
        writer.write(step, metrics)
        self.done.add(step)

    def close(self) -> None:
        self.progress.close()
        if self.store is not None:
            self.store.close()


def evaluate(cfg: ml_collections.ConfigDict, workdir: str, *, step: int | None = None,
             again: bool = False, timeout: float = 0.0) -> list[dict[str, Any]]:
    """Watches `workdir` (or evaluates only `step`), then prints the summary table, writes the plot
    and returns every row of `metrics/eval.jsonl`. The watcher gives up after `timeout` seconds (0:
    never) without a new checkpoint while no trainer holds the workdir. In a multi-process job every
    process calls it; process 0 writes, prints and plots."""
    if not os.path.isdir(workdir):
        raise ProgramError(f"workdir {workdir} does not exist: nothing to evaluate (start training with "
                           f"--workdir={workdir} first, or check the path)")
    watcher = Watcher(cfg, workdir, timeout)
    writer = MetricsWriter(workdir, EVAL_LOG, enabled=distributed.is_primary())
    try:
        if step is None:
            watcher.watch(writer)
        else:
            watcher.evaluate_one(step, writer, again=again)
    finally:
        writer.close()
        watcher.close()
    rows = read_rows(watcher.log_path)
    say(format_table(rows))
    png = os.path.join(watcher.workdir, "metrics", f"{EVAL_LOG}.png")
    if rows and distributed.is_primary() and plot(rows, png):
        say(f"plot: {png}")
    return rows


def main(argv=None) -> None:
    from absl import flags
    from absl import logging as absl_logging
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Experiment config file, e.g. configs/trifeatures.py:cpu",
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "Training directory whose checkpoints are evaluated (read-only).")
    flags.DEFINE_integer("step", None, "Evaluate only this checkpoint step, then exit.")
    flags.DEFINE_bool("again", False, "With --step: evaluate it even when eval.jsonl has it (e.g. after "
                      "adding an evaluator); the new row is appended, the old one kept.")
    flags.DEFINE_float("timeout", 3600.0, "Give up after this many seconds without a new checkpoint while no "
                       "trainer holds the workdir (0: wait forever).")
    flags.DEFINE_integer("nice", 10, "Lower this process's CPU priority by this much (as `nice`, every "
                         "thread), so that a trainer beside the watcher keeps its speed on a shared host; 0 "
                         "keeps the priority.")
    flags.DEFINE_bool("idle", True, "While watching (no --step): run every thread under Linux's SCHED_IDLE "
                      "policy, so the watcher computes only on CPU time the trainer leaves (on a busy host it "
                      "may then evaluate mostly after training ends); --noidle for normal scheduling at --nice.")
    flags.mark_flags_as_required(["config", "workdir"])
    distributed.define_flags()

    def run(_):
        absl_logging.set_verbosity(absl_logging.WARNING)   # Orbax logs every restore at INFO
        if flags.FLAGS.nice < 0:
            raise cli_errors.UsageError(f"--nice={flags.FLAGS.nice}: give 0 or more (raising priority needs root)")
        # A watcher yields the CPU to the trainer; one checkpoint asked for by --step is evaluated at --nice.
        idle = flags.FLAGS.idle and flags.FLAGS.step is None and hasattr(os, "SCHED_IDLE")
        priority.lower(flags.FLAGS.nice, idle=idle)
        cfg = cli_errors.loaded_config()
        distributed.initialize(flags.FLAGS)
        if flags.FLAGS.again and flags.FLAGS.step is None:
            raise cli_errors.UsageError("--again needs --step (the watcher evaluates each checkpoint once)")
        evaluate(cfg, flags.FLAGS.workdir, step=flags.FLAGS.step, again=flags.FLAGS.again,
                 timeout=flags.FLAGS.timeout)

    cli_errors.run_program(run, argv)


if __name__ == "__main__":
    main()
