"""Resume from the newest readable checkpoint: one that cannot be read (a truncated or corrupted file) is
moved to `WORKDIR/unreadable/<step>` and the previous one is used, with a warning naming both."""

from __future__ import annotations

import sys
from typing import Any, Callable

from comm_jax import distributed
from comm_jax.cli_errors import ProgramError
from comm_jax.divergence import move_aside

UNREADABLE_DIR = "unreadable"


def _reason(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:200] if text else ''}"


def restore_newest_readable(store, workdir: str, abstract_state: Any,
                            check_config: Callable[[dict[str, Any], int], None]) -> tuple[int, Any, dict | None]:
    """(step, state, data state) of the newest checkpoint every process can read, or (0, None, None) when
    there is none. `check_config(saved config, step)` may raise to refuse a checkpoint of another run."""
    steps = store.steps()
    unreadable: list[tuple[int, str]] = []
    for step in reversed(steps):
        error = None
        try:
            saved_config = store.restore_config(step)
        except Exception as raised:
            saved_config, error = None, raised
        if distributed.all_processes(error is None):
            check_config(saved_config, step)
            try:
                state, data_state = store.restore(step, abstract_state)
            except Exception as raised:
                error = raised
            if distributed.all_processes(error is None):
                _set_aside(workdir, unreadable, step)
                return step, state, data_state
        unreadable.append((step, _reason(error) if error else "unreadable on another process"))
    if unreadable:
        listed = "; ".join(f"step {s}: {why}" for s, why in unreadable)
        raise ProgramError(f"no checkpoint in {store.directory} can be read ({listed}); move them out of "
                           f"checkpoints/ to start again from step 0")
    return 0, None, None


def _set_aside(workdir: str, unreadable: list[tuple[int, str]], resumed: int) -> None:
    if not unreadable:
        return
    bad = [step for step, _ in unreadable]
    if distributed.is_primary():
        moved = move_aside(workdir, bad, UNREADABLE_DIR)
        reasons = "; ".join(f"step {s}: {why}" for s, why in unreadable)
        print(f"warning: checkpoint(s) {bad} cannot be read ({reasons}); moved to {', '.join(moved)} and "
              f"resuming from the previous one, step {resumed}", file=sys.stderr, flush=True)
