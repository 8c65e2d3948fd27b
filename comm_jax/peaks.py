"""Peak matmul throughput per chip (dense, no sparsity) for MFU, and a measured peak for the host CPU.

Figures are vendor datasheet peaks in TFLOP/s per device (a GPU, or a TPU chip as JAX sees it):
- `bfloat16`: bf16 inputs, f32 accumulation (tensor cores / MXU);
- `float32`: float32 inputs at JAX's *default* matmul precision, which is what a float32 run uses:
  TF32 tensor cores on Ampere and later GPUs, one bf16 pass on TPU (see the JAX "Matmul precision"
  guide); `float32_ieee`: true float32 arithmetic (GPU CUDA cores; TPU bf16 x6 passes, HIGHEST).
CPUs have no datasheet entry here: `measure_matmul_peak` times a large `jnp.dot` on the host.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp

# device_kind substrings (lower case, first match wins) -> peaks in TFLOP/s.
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "h200": {"bfloat16": 989.4, "float32": 494.7, "float32_ieee": 66.9},   # SXM, as H100 SXM
    "h100 pcie": {"bfloat16": 756.5, "float32": 378.0, "float32_ieee": 51.2},
    "h100 nvl": {"bfloat16": 835.0, "float32": 417.5, "float32_ieee": 60.0},
    "h100": {"bfloat16": 989.4, "float32": 494.7, "float32_ieee": 66.9},   # SXM5
    "a100": {"bfloat16": 312.0, "float32": 156.0, "float32_ieee": 19.5},
    "tpu v4": {"bfloat16": 275.0, "float32": 275.0, "float32_ieee": 275.0 / 6},
    "tpu v5 lite": {"bfloat16": 197.0, "float32": 197.0, "float32_ieee": 197.0 / 6},  # v5e
    "tpu v5e": {"bfloat16": 197.0, "float32": 197.0, "float32_ieee": 197.0 / 6},
    "tpu v5p": {"bfloat16": 459.0, "float32": 459.0, "float32_ieee": 459.0 / 6},
    "tpu v5": {"bfloat16": 459.0, "float32": 459.0, "float32_ieee": 459.0 / 6},       # v5p reports "TPU v5"
    "tpu v6 lite": {"bfloat16": 918.0, "float32": 918.0, "float32_ieee": 918.0 / 6},  # v6e (Trillium)
}


def table_entry(device_kind: str) -> tuple[str, dict[str, float]] | None:
    """(table key, peaks) for a `jax.Device.device_kind` string, or None when the chip is unknown."""
    kind = device_kind.lower()
    for key, peaks in PEAK_TFLOPS.items():
        if key in kind:
            return key, peaks
    return None


def measure_matmul_peak(dtype=jnp.float32, size: int = 4096, repeats: int = 5,
                        device: jax.Device | None = None) -> float:
    """Median TFLOP/s of a `[size, size] @ [size, size]` product in `dtype` on one device."""
    device = device or jax.devices()[0]
    keys = jax.random.split(jax.random.key(0))
    a, b = (jax.device_put(jax.random.normal(k, (size, size), dtype), device) for k in keys)
    dot = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
    jax.block_until_ready(dot(a, b))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(dot(a, b))
        times.append(time.perf_counter() - start)
    return 2 * size ** 3 / statistics.median(times) / 1e12


def device_peaks(device: jax.Device | None = None, measure: bool = True) -> dict[str, Any]:
    """Peaks for `device` (default: the first): the datasheet entry when the chip is in the table,
    and (with `measure`) the measured matmul peak per dtype, which stands in for the datasheet on
    chips without an entry (CPUs). Keys: device_kind, platform, source ('datasheet:<key>',
    'measured' or 'unknown'), bfloat16, float32 (TFLOP/s, what MFU divides by; absent if unknown),
    float32_ieee, measured_bfloat16, measured_float32."""
    device = device or jax.devices()[0]
    out: dict[str, Any] = {"device_kind": device.device_kind, "platform": device.platform}
    entry = table_entry(device.device_kind)
    if entry is not None:
        out["source"] = f"datasheet:{entry[0]}"
        out |= entry[1]
    if measure:
        size = 4096 if device.platform == "cpu" else 8192
        for name, dtype in (("float32", jnp.float32), ("bfloat16", jnp.bfloat16)):
            out[f"measured_{name}"] = measure_matmul_peak(dtype, size, device=device)
        if entry is None:
            out["source"] = "measured"
            out["float32"], out["bfloat16"] = out["measured_float32"], out["measured_bfloat16"]
    out.setdefault("source", "unknown")
    return out


def mfu(tflops_per_device: float, peaks: dict[str, Any], precision: str) -> float | None:
    """Model FLOPs utilisation (0..1) against the peak for `precision`, None when unknown."""
    peak = peaks.get(precision)
    return None if not peak else tflops_per_device / peak
