"""Metrics files (`metrics/<name>.jsonl`, TensorBoard events) and the console progress line.

Only the primary process writes. On resume, lines of a jsonl file past the restored step are
dropped, so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Mapping


def _scalar(value: Any) -> float | int:
    value = value.item() if hasattr(value, "item") else value
    return value if isinstance(value, int) else float(value)


class MetricsWriter:
    """Appends `{"step": ..., **metrics}` lines to `WORKDIR/metrics/<name>.jsonl` and TensorBoard."""

    def __init__(self, workdir: str, name: str = "train", *, enabled: bool = True,
                 keep_until_step: int | None = None, tensorboard: bool = True):
        self.enabled = enabled
        self.directory = os.path.join(os.path.abspath(workdir), "metrics")
        self.path = os.path.join(self.directory, f"{name}.jsonl")
        self._tb = None
        if not enabled:
            return
        os.makedirs(self.directory, exist_ok=True)
        if keep_until_step is not None and os.path.exists(self.path):
            self._truncate_after(keep_until_step)
        self._file = open(self.path, "a")
        if tensorboard:
            try:
                import tensorflow as tf
                self._tb = tf.summary.create_file_writer(os.path.join(self.directory, name))
            except ImportError:   # TensorBoard events need tensorflow; jsonl is always written
                self._tb = None

    def _truncate_after(self, step: int) -> None:
        kept = []
        with open(self.path) as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:   # a line cut short by a crash
                    print(f"warning: {self.path}:{number} is not valid JSON (an interrupted write?); "
                          f"dropping it", file=sys.stderr, flush=True)
                    continue
                if row.get("step", 0) <= step:
                    kept.append(line if line.endswith("\n") else line + "\n")
        with open(self.path, "w") as f:
            f.writelines(kept)

    def write(self, step: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
        row = {"step": int(step), **{k: _scalar(v) for k, v in metrics.items()}}
        if not self.enabled:
            return row
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            import tensorflow as tf
            with self._tb.as_default(step=int(step)):
                for key, value in row.items():
                    if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                        tf.summary.scalar(key, value)
        return row

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            if self._tb is not None:
                self._tb.flush()


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Throughput:
    """Examples/s and step time over the window since the last report, and an ETA. The clock can be
    paused (checkpointing, evaluation) so those do not count as training time."""

    def __init__(self, batch_size: int, total_steps: int, start_step: int):
        self.batch_size, self.total_steps = batch_size, total_steps
        self._window_start, self._window_step = time.perf_counter(), start_step
        self._paused = 0.0

    def pause(self):
        outer = self

        class _Pause:
            def __enter__(self):
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                outer._paused += time.perf_counter() - self.t
        return _Pause()

    def report(self, step: int) -> dict[str, float]:
        now = time.perf_counter()
        elapsed = max(now - self._window_start - self._paused, 1e-9)
        steps = max(step - self._window_step, 1)
        self._window_start, self._window_step, self._paused = now, step, 0.0
        step_time = elapsed / steps
        return {"examples_per_sec": self.batch_size / step_time, "step_time": step_time,
                "eta_seconds": step_time * (self.total_steps - step)}


def progress_line(step: int, total: int, row: Mapping[str, Any]) -> str:
    extra = f" ssl_acc {row['ssl_acc']:.1f}" if "ssl_acc" in row else ""
    return (f"step {step}/{total} | loss {row['loss']:.4f}{extra} | lr {row.get('learning_rate', 0):.2e} | "
            f"{row['examples_per_sec']:.1f} ex/s | {1000 * row['step_time']:.0f} ms/step | "
            f"ETA {format_duration(row['eta_seconds'])}")


def console(message: str) -> None:
    print(message, file=sys.stdout, flush=True)


def say(message: str) -> None:
    """Console output of process 0 only (every process may call it)."""
    import jax

    if jax.process_index() == 0:
        console(message)
