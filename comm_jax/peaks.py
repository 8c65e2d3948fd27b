"""Peak matmul throughput per chip (dense, no sparsity) for MFU, and a measured peak for the host CPU.

Figures are vendor datasheet peaks in TFLOP/s per device (a GPU, or a TPU chip as JAX sees it):
- `bfloat16`: bf16 inputs, f32 accumulation (tensor cores / MXU);
- `float32`: float32 inputs at JAX's *default* matmul precision, which is what a float32 run uses:
  TF32 tensor cores on Ampere and later GPUs, one bf16 pass on TPU (see the JAX "Matmul precision"
  guide); `float32_ieee`: true float32 arithmetic (GPU CUDA cores; TPU bf16 x6 passes, HIGHEST).
CPUs have no datasheet entry here: `measure_matmul_peak` times a large `jnp.dot` on the host.
`CHIP_MEMORY` holds the same chips' memory and link figures, for the ahead-of-time plans' memory
fit and roofline estimate.
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


# device_kind key -> memory per chip (GiB), HBM bandwidth and interconnect bandwidth (GB/s,
# bidirectional, summed over the chip's links: ICI on TPU, NVLink on GPU). Sources: Cloud TPU system
# architecture pages (v5e: 16 GB, 819 GB/s, ICI 400 GB/s; v5p: 95 GiB, 2765 GB/s, ICI 1200 GB/s;
# v6e: 32 GB, 1638 GB/s, ICI 800 GB/s; v4: 32 GiB, 1200 GB/s), v4's ICI from "How to Scale Your
# Model" (jax-ml scaling book, TPU chapter: 6 links of 45 GB/s each way), and NVIDIA's datasheets
# (H100/H200 SXM NVLink 900 GB/s, A100 SXM 600 GB/s).
CHIP_MEMORY: dict[str, dict[str, float]] = {
    "h200": {"hbm_gib": 141.0, "hbm_gbps": 4800.0, "interconnect_gbps": 900.0},
    "h100 pcie": {"hbm_gib": 80.0, "hbm_gbps": 2000.0, "interconnect_gbps": 600.0},
    "h100 nvl": {"hbm_gib": 94.0, "hbm_gbps": 3900.0, "interconnect_gbps": 600.0},
    "h100": {"hbm_gib": 80.0, "hbm_gbps": 3350.0, "interconnect_gbps": 900.0},
    "a100": {"hbm_gib": 80.0, "hbm_gbps": 2039.0, "interconnect_gbps": 600.0},
    "tpu v4": {"hbm_gib": 32.0, "hbm_gbps": 1200.0, "interconnect_gbps": 540.0},
    "tpu v5 lite": {"hbm_gib": 16.0, "hbm_gbps": 819.0, "interconnect_gbps": 400.0},
    "tpu v5e": {"hbm_gib": 16.0, "hbm_gbps": 819.0, "interconnect_gbps": 400.0},
    "tpu v5p": {"hbm_gib": 95.0, "hbm_gbps": 2765.0, "interconnect_gbps": 1200.0},
    "tpu v5": {"hbm_gib": 95.0, "hbm_gbps": 2765.0, "interconnect_gbps": 1200.0},
    "tpu v6 lite": {"hbm_gib": 32.0, "hbm_gbps": 1638.0, "interconnect_gbps": 800.0},
}


def chip_spec(device_kind: str) -> dict[str, float | str] | None:
    """Peaks and memory figures of a chip (`key`, the `PEAK_TFLOPS` and `CHIP_MEMORY` entries
    merged), or None when the chip is unknown. `device_kind` may also be a table key ("h100")."""
    entry = table_entry(device_kind)
    if entry is None or entry[0] not in CHIP_MEMORY:
        return None
    return {"key": entry[0], **entry[1], **CHIP_MEMORY[entry[0]]}


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
