"""Divergence safety: a non-finite loss at step t proves the checkpoint of step t-1 (whose parameters
produced it) and any later one bad. Those are moved to `WORKDIR/diverged/<step>`, outside `checkpoints/`
so resume never picks them, and the run halts naming the newest checkpoint that gives finite losses."""

from __future__ import annotations

import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

DIVERGED_DIR = "diverged"


class NonFiniteLoss(RuntimeError):
    """Training stopped on a NaN/inf loss or state; the message names the step to resume from."""


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
              if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def state_is_finite(state: Any) -> bool:
    """True when every floating-point array of `state` (parameters, optimizer moments) is finite."""
    return bool(np.asarray(jax.device_get(_all_finite(state))))


def proven_bad(steps: Sequence[int], non_finite_step: int) -> list[int]:
    """The checkpoints a non-finite loss at `non_finite_step` rules out: the one whose parameters
    computed it (the previous step) and every later one."""
    return [s for s in steps if s >= non_finite_step - 1]


def diverged_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), DIVERGED_DIR)


def move_aside(workdir: str, steps: Sequence[int], folder: str = DIVERGED_DIR) -> list[str]:
    """Moves `checkpoints/<step>` to `<folder>/<step>` (`<step>.1`, ... when that exists), a sibling of
    `checkpoints/` that Orbax never lists; returns the new paths."""
    source_dir = os.path.join(os.path.abspath(workdir), "checkpoints")
    target_dir = os.path.join(os.path.abspath(workdir), folder)
    os.makedirs(target_dir, exist_ok=True)
    moved = []
    for step in steps:
        target, copy = os.path.join(target_dir, str(step)), 0
        while os.path.exists(target):
            copy += 1
            target = os.path.join(target_dir, f"{step}.{copy}")
        os.rename(os.path.join(source_dir, str(step)), target)
        moved.append(target)
    return moved


def _resume_point(good: Sequence[int]) -> str:
    if good:
        return f"the run resumes from step {good[-1]}, the newest checkpoint with finite losses"
    return "no checkpoint gives finite losses, so the run starts again from step 0"


def halt(workdir: str, steps: Sequence[int], non_finite_step: int, what: str, *,
         move: bool = True) -> NonFiniteLoss:
    """Moves the checkpoints proven bad aside (only when `move`: process 0) and returns the error to
    raise, e.g. `what`="non-finite loss nan at step 12"."""
    bad = proven_bad(steps, non_finite_step)
    good = [s for s in steps if s not in bad]
    moved = move_aside(workdir, bad) if move and bad else []
    aside = (f"; checkpoint(s) {bad} moved to {os.path.dirname(moved[0]) if moved else diverged_dir(workdir)} "
             f"(kept for inspection, never resumed from)" if bad else "")
    return NonFiniteLoss(f"{what}{aside}; {_resume_point(good)}: change what made it diverge (e.g. a lower "
                         f"--config.optimizer.lr) and run the same command again")
