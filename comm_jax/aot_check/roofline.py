"""The arithmetic of a plan: per-chip memory against the chip's capacity, a roofline lower bound on
step time from peak FLOP/s, HBM and interconnect bandwidth, and what a compiler's out-of-memory error
says the step needed."""

from __future__ import annotations

import re
from typing import Any, Mapping

GIB = 2 ** 30
# The share of a chip's memory a step may plan for: the runtime and XLA keep some for themselves
# (the TPU compiler reports 15.75 GiB of a v5e's 16 available).
USABLE_FRACTION = 0.95


def peak_bytes(memory: Mapping[str, int]) -> int:
    """Bytes a compiled program holds at once on one device: arguments, outputs and temporaries,
    less the outputs that reuse donated arguments."""
    return memory["argument"] + memory["output"] + memory["temp"] - memory["alias"]


def fits(peak: int, capacity_gib: float) -> bool:
    return peak <= capacity_gib * GIB * USABLE_FRACTION


def roofline(flops: float, bytes_accessed: float, sent_bytes: float, chip: Mapping[str, Any],
             precision: str) -> dict[str, Any]:
    """Seconds each resource needs at its peak, and their maximum: a lower bound on the step's time
    that assumes perfect overlap (an estimate, never a measurement). `chip` is a
    `comm_jax.peaks.chip_spec` entry; on TPUs `float32` runs at the bf16 rate (default precision)."""
    tflops = chip.get(precision) or chip["bfloat16"]
    seconds = {"compute_s": flops / (tflops * 1e12),
               "hbm_s": bytes_accessed / (chip["hbm_gbps"] * 1e9),
               "interconnect_s": sent_bytes / (chip["interconnect_gbps"] * 1e9)}
    bound = max(seconds, key=seconds.get)
    return {**seconds, "step_s_lower_bound": seconds[bound], "bound_by": bound.removesuffix("_s"),
            "peak_tflops": tflops}


_SIZE = r"([0-9.]+)\s*([KMGT])i?B?"
_UNITS = {"K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}


def out_of_memory(message: str) -> dict[str, float] | None:
    """(needed, available) GiB from an XLA out-of-memory message, None if it is not one. Knows the
    TPU compiler's 'total memory required ... (16.00G) exceeds available HBM (15.75G)' and
    'Used 20.5G of 15.75G hbm' forms."""
    if "RESOURCE_EXHAUSTED" not in message and "out of memory" not in message.lower():
        return None
    patterns = (rf"required[^(]*\({_SIZE}\)\s*exceeds available[^(]*\({_SIZE}\)", rf"Used {_SIZE} of {_SIZE}")
    for pattern in patterns:
        match = re.search(pattern, message)
        if match:
            need = float(match.group(1)) * _UNITS[match.group(2)] / GIB
            have = float(match.group(3)) * _UNITS[match.group(4)] / GIB
            return {"needed_gib": need, "available_gib": have}
    return {"needed_gib": float("nan"), "available_gib": float("nan")}


def advice(needed_gib: float, capacity_gib: float, global_batch: int, chips: int, fixed_gib: float) -> str:
    """What to change when a step needs `needed_gib` per chip: a global batch that would fit if the
    batch-dependent part (`needed - fixed`) scales linearly, and the other levers."""
    usable = capacity_gib * USABLE_FRACTION
    hint = "lower config.batch_size, "
    if needed_gib > fixed_gib and usable > fixed_gib:
        per_chip = int((global_batch // chips) * (usable - fixed_gib) / (needed_gib - fixed_gib))
        if per_chip >= 1:
            hint = f"lower config.batch_size to about {per_chip * chips} ({per_chip} per chip), "
    return (f"{hint}use config.precision=bfloat16, shard parameters and optimizer state with "
            f"config.mesh=[('data', -1), ('fsdp', K)] and config.param_sharding rules, or use more chips")
