"""What the evaluation watcher tells others and itself about its progress: the steps it has finished with
(published in `WORKDIR/metrics/eval_watcher.json` so training keeps the others), the checkpoints it never
saw (deleted before it looked; reported), and when to give up (no new checkpoint and no live trainer for
`timeout` seconds). Used on process 0 only."""

from __future__ import annotations

import logging
import time
from typing import Callable, Sequence

from comm_jax.lease import HeartbeatFile, live_trainer
from comm_jax.metrics_log import say
from comm_jax.retention import watcher_path

log = logging.getLogger("comm_jax.evaluate")


class WatchProgress:
    """The watcher's published heartbeat, the steps it has seen, and its timeout clock."""

    def __init__(self, workdir: str, timeout: float = 0.0):
        self.workdir, self.timeout = workdir, timeout
        self.seen: set[int] = set()
        self.never_seen: list[int] = []
        self._last_change = time.monotonic()
        self._save_every: dict[int, int | None] = {}
        self._heartbeat: HeartbeatFile | None = None

    def publish(self, finished_steps: Callable[[], Sequence[int]]) -> None:
        """Starts the heartbeat file that lists the steps this watcher has finished with."""
        def payload() -> dict:
            for _ in range(3):     # the main thread may add a step while the list is copied
                try:
                    return {"done": [int(s) for s in finished_steps()]}
                except RuntimeError:
                    continue
            return {"done": []}
        self._heartbeat = HeartbeatFile(watcher_path(self.workdir), payload)
        self._heartbeat.beat()
        self._heartbeat.start()

    def _checkpoint_interval(self, store, step: int) -> int | None:
        if step not in self._save_every:
            try:
                self._save_every[step] = int(store.read_config(step)["ckpt_every"])   # process 0 alone
            except Exception:      # deleted or half-written under the watcher: ask again next time
                return None
        return self._save_every[step]

    def note_listing(self, store, steps: Sequence[int], finished: set[int]) -> None:
        """Records a listing of `checkpoints/`: resets the timeout clock on a new step, and warns once about
        each step the run's checkpoint interval says was saved but was never listed here."""
        new = set(steps) - self.seen
        if new:
            self._last_change = time.monotonic()
            self.seen |= new
        if not steps:
            return
        every = self._checkpoint_interval(store, max(steps))
        if not every:
            return
        missed = [s for s in range(every, max(steps), every)
                  if s not in self.seen and s not in finished and s not in self.never_seen]
        if missed:
            self.never_seen.extend(missed)
            log.warning("checkpoint(s) at step(s) %s were deleted before the watcher could evaluate them (run "
                        "the watcher beside training so it keeps them: see --keep_unevaluated)", missed)

    def timed_out(self, steps: Sequence[int]) -> str:
        """Non-empty when the watcher should give up: `timeout` seconds without a new checkpoint and no
        live trainer holding the workdir."""
        if steps:
            self.note_listing_time(steps)
        if self.timeout <= 0 or time.monotonic() - self._last_change < self.timeout:
            return ""
        return "" if live_trainer(self.workdir) else "timed out"

    def note_listing_time(self, steps: Sequence[int]) -> None:
        if set(steps) - self.seen:
            self._last_change = time.monotonic()
            self.seen |= set(steps)

    def timeout_message(self) -> str:
        return (f"no new checkpoint in {self.workdir}/checkpoints for {self.timeout:.0f}s and no trainer holds "
                f"the workdir; giving up (--timeout={self.timeout:g}; 0 waits forever)")

    def report_never_seen(self) -> None:
        if self.never_seen:
            say(f"never evaluated (deleted before the watcher saw them): steps {sorted(self.never_seen)}")

    def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
