"""Which checkpoints training deletes, so none is lost to a live evaluation watcher unnoticed.

Kept: the latest `keep`, every step divisible by `keep_every`, and, while a watcher publishes a fresh
heartbeat in `WORKDIR/metrics/eval_watcher.json` (outside `checkpoints/`: evaluation never writes
there), up to `keep_unevaluated` more that it has not evaluated yet (the oldest first: the watcher
evaluates in step order). Past that bound the oldest waiting steps are deleted with a warning, so the
disk cannot fill.
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

from comm_jax import distributed
from comm_jax.lease import is_live, read_record

WATCHER_FILE = os.path.join("metrics", "eval_watcher.json")


def watcher_path(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), WATCHER_FILE)


def watcher_done(workdir: str) -> set[int] | None:
    """Steps a live watcher has finished with (evaluated or skipped), or None when no watcher is live."""
    record = read_record(watcher_path(workdir))
    if not is_live(record):
        return None
    return {int(step) for step in record.get("done", [])}


def plan_deletions(steps: Sequence[int], *, keep: int | None, keep_every: int | None,
                   done: set[int] | None, keep_unevaluated: int) -> tuple[list[int], list[int]]:
    """(steps to delete, those among them a live watcher has not evaluated). `done` is None when no
    watcher is live; `keep` None keeps everything."""
    steps = sorted(set(steps))
    if keep is None:
        return [], []
    protected = set(steps[-keep:]) | {s for s in steps if keep_every and s % keep_every == 0}
    candidates = [s for s in steps if s not in protected]
    if done is None:
        return candidates, []
    waiting = [s for s in candidates if s not in done]
    spared = set(waiting[:keep_unevaluated]) if keep_unevaluated > 0 else set()
    delete = [s for s in candidates if s not in spared]
    return delete, [s for s in delete if s in waiting]


class Rotation:
    """Deletes old checkpoints after each save (all processes call `after_save`; process 0 decides)."""

    def __init__(self, store, workdir: str, *, keep: int | None, keep_every: int | None, keep_unevaluated: int):
        self.store, self.workdir = store, workdir
        self.keep, self.keep_every, self.keep_unevaluated = keep, keep_every, keep_unevaluated

    def after_save(self, saved_step: int, final: bool = False) -> list[int]:
        """Deletes what the policy no longer keeps; returns the deleted steps. Until the next step's loss
        confirms it (or it is the `final` one) the step just saved does not count among the latest `keep`,
        so a divergence right after it still leaves `keep` good checkpoints."""
        plan = None
        if distributed.is_primary():
            steps = set(self.store.steps()) | {saved_step}
            if not final:
                steps.discard(saved_step)
            done = watcher_done(self.workdir)
            delete, unevaluated = plan_deletions(steps, keep=self.keep, keep_every=self.keep_every, done=done,
                                                 keep_unevaluated=self.keep_unevaluated)
            if unevaluated:
                print(f"warning: deleting checkpoint(s) {unevaluated} before the evaluation watcher evaluated "
                      f"them: {self.keep_unevaluated} unevaluated checkpoints are already kept "
                      f"(--keep_unevaluated)", file=sys.stderr, flush=True)
            plan = [s for s in delete if s != saved_step]
        delete = [int(s) for s in distributed.broadcast_from_primary(plan)]
        for step in delete:
            self.store.manager.delete(step)
        return delete
