"""Lowering this process's CPU priority for every thread: those already started (TensorFlow's and absl's
start at import) and, by inheritance, those to come (XLA's and tf.data's pools).

`nice` raises each thread's nice value by that much (capped at 19). `idle` puts each thread under Linux's
SCHED_IDLE policy: it runs only on CPU time no normal-priority thread wants, so a process beside a
trainer takes the cores only while the trainer waits (for input, a checkpoint write, a collective).
"""

from __future__ import annotations

import os


def _thread_ids() -> list[int]:
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except FileNotFoundError:          # no procfs: the calling thread only
        return [0]


def lower(nice: int = 0, idle: bool = False) -> None:
    """Raises every thread's nice value by `nice` (>= 0) and, with `idle`, moves it to SCHED_IDLE."""
    if nice < 0:
        raise ValueError(f"nice={nice}: give 0 or more (raising priority needs root)")
    if idle and not hasattr(os, "SCHED_IDLE"):
        raise ValueError("idle priority needs Linux's SCHED_IDLE scheduling policy, absent on this system")
    for tid in _thread_ids():
        try:
            if nice:
                os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
            if idle:
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        except ProcessLookupError:     # a thread that ended since the listing
            continue
