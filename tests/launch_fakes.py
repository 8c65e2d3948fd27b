"""Test doubles for the table drivers of launch/: a driver script loaded as a module, and a stand-in for
`runs.run` that writes what the real trainer and evaluator write."""

from __future__ import annotations

import importlib.util
import json
import os

from comm_jax.checkpoints import mark_complete

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_driver(name: str):
    """launch/NAME.py loaded as a fresh module (its own `main`, constants and helpers to patch)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "launch", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def complete_at_step_30(workdir: str, flags: dict[str, str]) -> None:
    """What training leaves at the least: the completion marker of step 30."""
    mark_complete(workdir, 30)


def fake_runner(metrics, finish=complete_at_step_30):
    """(run, calls): `run` stands in for `runs.run` and appends each command it is given to `calls`.

    `comm_jax.train` makes the work directory and finishes the run there, by `finish(workdir, flags)` (flags:
    {"--name": value} of the command); `comm_jax.evaluate` appends the row
    {"step": --step, **metrics(method, seed, biased)} to the run's metrics/eval.jsonl, the method and bias read
    from the `--config` tokens `loss=` and `bias=true`, the seed from `--config.seed`."""
    calls = []

    def run(cmd: list[str]) -> None:
        calls.append(cmd)
        flags = dict(a.split("=", 1) for a in cmd if a.startswith("--") and "=" in a)
        workdir, config = flags["--workdir"], flags["--config"]
        if cmd[2] == "comm_jax.train":
            os.makedirs(workdir, exist_ok=True)
            finish(workdir, flags)
            return
        method, biased = config.split("loss=")[1].split(",")[0], "bias=true" in config
        row = {"step": int(flags["--step"]), **metrics(method, int(flags["--config.seed"]), biased)}
        os.makedirs(os.path.join(workdir, "metrics"), exist_ok=True)
        with open(os.path.join(workdir, "metrics", "eval.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")

    return run, calls
