"""The runs behind the launch drivers' tables: the trainer and evaluator started as subprocesses, the
metrics they wrote read back, and the check that a finished run is the one a driver would train."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from comm_jax.checkpoints import CheckpointStore, completed_step, first_difference_in  # noqa: E402


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def final_metrics(workdir: str) -> dict[str, float] | None:
    """The last evaluation row of the final checkpoint, or None when training or its evaluation is not done."""
    final = completed_step(workdir)
    path = os.path.join(workdir, "metrics", "eval.jsonl")
    if final is None or not os.path.exists(path):
        return None
    rows = [json.loads(line) for line in open(path) if line.strip()]
    return next((r for r in reversed(rows) if r["step"] == final), None)


def last_evaluation(workdir: str) -> dict | None:
    """The evaluation row of the highest step in `workdir`, or None."""
    path = os.path.join(workdir, "metrics", "eval.jsonl")
    if not os.path.exists(path):
        return None
    with open(path) as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    return max(rows, key=lambda row: row["step"]) if rows else None


# The parts of a run's config that make its result a table's: what it trained on, what and how long.
SAME_RUN = ("data", "model", "loss", "optimizer", "precision", "batch_size", "num_steps", "seed")


def training_config(config: str, overrides: list[str]) -> dict:
    """The config, as JSON, that `comm_jax.train --config=CONFIG *OVERRIDES` builds (the same flag parser)."""
    from absl import flags
    from ml_collections import config_flags

    argv = ["runs", f"--config={os.path.join(ROOT, config)}", *overrides]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "experiment config", flag_values=values, sys_argv=argv)
    values(argv)
    return json.loads(values.config.to_json())


def value_at(tree, path: str):
    """The value at a dotted path as `first_difference_in` names it (`data.views.view1.image_1`, `mesh[0]`)."""
    for part in path.replace("[", ".[").split("."):
        if tree is None:
            return None
        tree = tree[int(part[1:-1])] if part.startswith("[") else tree.get(part)
    return tree


def check_same_run(workdir: str, final: int, config: str, overrides: list[str]) -> None:
    """Stop when the run in `workdir`, finished at step `final`, was trained with another config than this call's."""
    try:
        store = CheckpointStore(workdir, read_only=True)
    except FileNotFoundError:   # evaluated earlier and its checkpoints removed since: nothing to compare
        print(f"warning: {workdir} has no checkpoints; its config cannot be checked", flush=True)
        return
    try:
        saved = store.restore_config(final)
    finally:
        store.close()
    current = training_config(config, overrides)
    found = first_difference_in(saved, current, SAME_RUN)
    if found is not None:
        raise SystemExit(
            f"{workdir}: its run was trained with {found} = {value_at(saved, found)!r}, this table asks for "
            f"{value_at(current, found)!r}; give this table another --root (work directories are named by "
            f"method, seed and bias only)")


def add_override_flags(parser) -> None:
    """The driver flags that `seed_overrides` reads: `--data_dir` and the repeatable `--override`."""
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--override", action="append", default=[], help="config override KEY=VALUE (repeatable)")


def seed_overrides(args, seed: int) -> list[str]:
    """The config flags of one seed's run: its seed, each `--override` of the driver and its `--data_dir`."""
    overrides = [f"--config.seed={seed}"] + [f"--config.{o}" for o in args.override]
    if args.data_dir:
        overrides.append(f"--config.data.data_dir={args.data_dir}")
    return overrides


def evaluated_run(workdir: str, config: str, overrides: list[str], keys, train: bool = True) -> dict | None:
    """The final checkpoint's evaluation row of the run in `workdir`, holding every metric of `keys`.

    A finished run trained with another config stops the driver (`check_same_run`). Without an evaluated
    final checkpoint the run is trained (an unfinished one resumes) and its final checkpoint evaluated; a
    final evaluation that lacks a key (evaluated before an evaluator existed) is evaluated again. With
    `train=False` the row is returned as found (None when there is none), nothing run."""
    final = completed_step(workdir)
    if final is not None:   # an unfinished run is checked by the trainer when it resumes
        check_same_run(workdir, final, config, overrides)
    row = final_metrics(workdir)
    if not train or (row is not None and all(k in row for k in keys)):
        return row
    again = []
    if row is None:     # train (resuming if interrupted), then evaluate the final checkpoint only
        run([sys.executable, "-m", "comm_jax.train", f"--config={config}", f"--workdir={workdir}", *overrides])
    else:               # evaluated before an evaluator of the table existed
        again = ["--again"]
    final = completed_step(workdir)
    run([sys.executable, "-m", "comm_jax.evaluate", f"--config={config}", f"--workdir={workdir}",
         f"--step={final}", *again, *overrides])
    row = final_metrics(workdir)
    missing = [k for k in keys if k not in (row or {})]
    if missing:
        raise SystemExit(f"{workdir}: the evaluation of step {final} lacks {missing} (see its eval log)")
    return row


def train_and_evaluate(flags: list[str]) -> bool:
    """Train, then evaluate, each a subprocess with the same `flags`; False when either fails."""
    for program in ("comm_jax.train", "comm_jax.evaluate"):
        command = [sys.executable, "-m", program, *flags]
        print("+", " ".join(command), flush=True)
        if subprocess.run(command, cwd=ROOT).returncode:
            return False
    return True
