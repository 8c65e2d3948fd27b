"""Timing with device synchronisation: medians over repeated calls after warm-up, compile time,
and what XLA says about a compiled executable (FLOPs, memory)."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import jax

from comm_jax import flops


def timed_compile(jitted, *args) -> tuple[Any, float]:
    """(compiled executable, seconds to lower and compile)."""
    start = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return compiled, time.perf_counter() - start


def memory_stats(compiled) -> dict[str, int] | None:
    """Per-device bytes of the compiled program: arguments, outputs, temporaries, and their sum
    less donated aliases (`total`, an upper bound of the program's peak)."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # some backends do not implement it
        return None
    if m is None:
        return None
    out = {k: int(getattr(m, f"{k}_size_in_bytes")) for k in ("argument", "output", "temp", "alias")}
    out["total"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
    return out


def executable_report(compiled) -> dict[str, Any]:
    return {"compiled_flops_per_device": flops.compiled_flops(compiled), "memory": memory_stats(compiled)}


def median_time(call: Callable[[], Any], steps: int, warmup: int = 1) -> dict[str, Any]:
    """Runs `call` (which returns arrays) `warmup` times, then `steps` timed times, each timed to
    `jax.block_until_ready`; returns median, min and all times in seconds, and the last output."""
    for _ in range(warmup):
        jax.block_until_ready(call())
    times, out = [], None
    for _ in range(steps):
        start = time.perf_counter()
        out = jax.block_until_ready(call())
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "times_s": times, "last": out}


def check_fits(memory: dict[str, int] | None, device: jax.Device) -> None:
    """Raises an out-of-memory error before running a program whose compiled footprint exceeds the
    device's memory (GPUs and TPUs report `bytes_limit`; CPUs do not, and are not checked)."""
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    limit = (stats or {}).get("bytes_limit")
    if memory and limit and memory["total"] > limit:
        raise MemoryError(f"RESOURCE_EXHAUSTED: program needs {memory['total'] / 2**30:.1f} GiB per device, "
                          f"{device.device_kind} has {limit / 2**30:.1f} GiB")


def is_out_of_memory(err: BaseException) -> bool:
    text = str(err)
    return any(s in text for s in ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory", "OOM"))
