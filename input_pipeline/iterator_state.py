"""Position arithmetic of the exactly-resumable training stream: which example a host reads when.

Each process reads an endless stream: epoch e is ``permutation(seed, e)[process_index::count]``,
truncated so all processes have the same number of examples per epoch, and epochs follow each
other without a gap (a batch may straddle two epochs). Batch k of a process is stream examples
``[k * batch_size, (k + 1) * batch_size)``, so the number of batches consumed is the whole state.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class TrainStream:
    """The example order seen by one process; ``position`` counts batches consumed."""

    num_examples: int
    seed: int
    batch_size: int
    process_index: int = 0
    process_count: int = 1
    shuffle: bool = True

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0 (it seeds numpy's default_rng), got {self.seed}")
        if not 0 <= self.process_index < self.process_count:
            raise ValueError(f"process_index {self.process_index} is not in [0, {self.process_count})")
        if self.examples_per_epoch < 1:
            raise ValueError(f"{self.num_examples} examples cannot be shared by "
                             f"{self.process_count} processes")

    @property
    def examples_per_epoch(self) -> int:
        """Examples this process reads per epoch (the same on every process)."""
        return self.num_examples // self.process_count

    @property
    def steps_per_epoch(self) -> float:
        """Batches per epoch on each process (fractional when a batch straddles epochs)."""
        return self.examples_per_epoch / self.batch_size

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """Dataset indices this process reads in `epoch`, in order: int64 [examples_per_epoch]."""
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
        else:
            order = np.arange(self.num_examples)
        return order[self.process_index::self.process_count][:self.examples_per_epoch].astype(np.int64)

    def locate(self, position: int) -> tuple[int, int]:
        """(epoch, offset within that epoch) of the first example of batch number `position`."""
        if position < 0:
            raise ValueError(f"iterator position must be >= 0, got {position}")
        return divmod(position * self.batch_size, self.examples_per_epoch)

    def state(self, position: int) -> dict[str, Any]:
        """JSON-able state: the position plus the settings that fix the stream."""
        return {"position": int(position), **dataclasses.asdict(self)}

    def position_from_state(self, state: dict[str, Any]) -> int:
        """The position in `state`, after checking that it was saved for this very stream."""
        for field, expected in dataclasses.asdict(self).items():
            if field in state and state[field] != expected:
                raise ValueError(
                    f"iterator state was saved with {field}={state[field]!r} but this iterator has "
                    f"{field}={expected!r}; resuming would not reproduce the saved run")
        if "position" not in state:
            raise ValueError(f"iterator state has no 'position': {state!r}")
        return int(state["position"])
