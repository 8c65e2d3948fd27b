"""Orbax checkpoints under `WORKDIR/checkpoints`, shared by training (writer) and evaluation (reader).

Each step holds three items: `state` (the TrainState), `data` (the input iterator's position, JSON)
and `config` (the run's config, JSON). Saves are asynchronous; the latest `keep` steps are kept, plus
every step divisible by `keep_every`. Training writes `WORKDIR/training_complete.json` when it ends.
"""

from __future__ import annotations

import json
import os
from typing import Any

import orbax.checkpoint as ocp

COMPLETION_MARKER = "training_complete.json"
# Config paths that choose how a step is computed, not what is trained (equal results up to rounding): a
# checkpoint resumes, and a finished run counts as the same run, whatever their value, also when the
# checkpoint's config predates the key.
HOW_NOT_WHAT = frozenset({"loss.column_chunk"})


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


class CheckpointStore:
    """A thin wrapper over `ocp.CheckpointManager` with this project's three items."""

    def __init__(self, workdir: str, *, save_every: int = 1, keep: int | None = 3,
                 keep_every: int | None = None, read_only: bool = False, async_save: bool = True):
        directory = checkpoint_dir(workdir)
        if read_only and not os.path.isdir(directory):
            raise FileNotFoundError(f"no checkpoints directory at {directory}")
        if read_only:   # save and retention options do not apply (Orbax warns when they are given)
            options = ocp.CheckpointManagerOptions(read_only=True, create=False)
        else:
            options = ocp.CheckpointManagerOptions(
                save_interval_steps=save_every, max_to_keep=keep, keep_period=keep_every or None,
                enable_async_checkpointing=async_save)
        self.directory = directory
        self.manager = ocp.CheckpointManager(directory, options=options)

    def steps(self) -> list[int]:
        self.manager.reload()
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def save(self, step: int, state, data_state: dict[str, Any], config_json: str, *, force: bool = False) -> bool:
        return self.manager.save(step, force=force, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state),
            config=ocp.args.JsonSave(json.loads(config_json))))

    def restore(self, step: int, abstract_state) -> tuple[Any, dict[str, Any]]:
        """(train state laid out as `abstract_state`'s shardings, data iterator state)."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        return restored.state, dict(restored.data)

    def restore_config(self, step: int) -> dict[str, Any]:
        """The config saved with `step`, through Orbax: every process of a job must call it together."""
        return dict(self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config)

    def read_config(self, step: int) -> dict[str, Any]:
        """The config saved with `step`, read as the JSON file it is, by this process alone (no
        collective: for decisions one process takes)."""
        with open(os.path.join(self.directory, str(step), "config", "metadata")) as f:
            return dict(json.load(f))

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def first_difference(saved: Any, current: Any, path: str = "") -> str | None:
    """Dotted path of the first key whose value differs between two JSON-like trees, or None; the paths
    in `HOW_NOT_WHAT` are not compared."""
    if isinstance(saved, dict) and isinstance(current, dict):
        for key in sorted(set(saved) | set(current)):
            sub = f"{path}.{key}" if path else str(key)
            if sub in HOW_NOT_WHAT:
                continue
            if key not in saved or key not in current:
                return sub
            found = first_difference(saved[key], current[key], sub)
            if found:
                return found
        return None
    if isinstance(saved, (list, tuple)) and isinstance(current, (list, tuple)):
        if len(saved) != len(current):
            return path
        for i, (a, b) in enumerate(zip(saved, current)):
            found = first_difference(a, b, f"{path}[{i}]")
            if found:
                return found
        return None
    return None if saved == current else path


def first_difference_in(saved: dict[str, Any], current: dict[str, Any], keys) -> str | None:
    """`first_difference` over the top-level `keys` of two configs, in the order given (a key absent on both
    sides is equal)."""
    return next((found for k in keys if (found := first_difference(saved.get(k), current.get(k), k))), None)


def mark_complete(workdir: str, step: int) -> None:
    path = os.path.join(os.path.abspath(workdir), COMPLETION_MARKER)
    with open(path + ".tmp", "w") as f:
        json.dump({"step": int(step)}, f)
    os.replace(path + ".tmp", path)


def clear_complete(workdir: str) -> None:
    """Training (re)started with steps left to run: an evaluator must not see it as finished."""
    path = os.path.join(os.path.abspath(workdir), COMPLETION_MARKER)
    if os.path.exists(path):
        os.remove(path)


def completed_step(workdir: str) -> int | None:
    """The final step if training has finished, else None."""
    path = os.path.join(os.path.abspath(workdir), COMPLETION_MARKER)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return int(json.load(f)["step"])
