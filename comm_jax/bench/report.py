"""Markdown tables from a benchmark JSON file (`python -m comm_jax.benchmark ... --output FILE`).

    python -m comm_jax.bench.report FILE.json [FILE.json ...]
"""

from __future__ import annotations

import json
import sys
from typing import Any, Iterable


def _table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _f(value, spec: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(value * scale, spec)


def machine(results: dict[str, Any]) -> str:
    m, p = results["machine"], results.get("peaks_tflops", {})
    peaks = ", ".join(f"{k} {v:.3f}" for k, v in p.items() if isinstance(v, float))
    return (f"{m['date']}, {m['device_count']} x {m['device_kind']} ({m['processor']}, {m['host_cores']} host cores), "
            f"jax {m['jax']}, load average at start {_load(m.get('load_average_at_start'))}, at end "
            f"{_load(m.get('load_average_at_end'))}; peaks TFLOP/s: {peaks or 'unknown'}")


def _load(load) -> str:
    return "-" if not load else "/".join(f"{x:.2f}" for x in load)


def train_step(rows: list[dict[str, Any]]) -> str:
    out = []
    for r in rows:
        if r.get("oom"):
            out.append([r["config"], r["precision"], r["batch_size"], "OOM"] + ["-"] * 8)
            continue
        mem = (r.get("memory") or {}).get("total")
        out.append([r["config"], r["precision"], r["batch_size"], _f(r.get("examples_per_s"), ".1f"),
                    _f(r.get("step_s"), ".1f", 1e3), _f(r["compile_s"], ".1f"),
                    _f(r["analytic_flops"]["train_step"], ".3f", 1e-12),
                    _f(r.get("tflops_per_device"), ".4f"), _f(r.get("compiled_tflops_per_device"), ".4f"),
                    _f(r.get("analytic_over_compiled"), ".3f"), _f(r.get("mfu"), ".1f", 100),
                    _f(mem, ".2f", 2 ** -30)])
    return _table(["config", "precision", "batch", "examples/s", "step ms", "compile s", "TFLOP/step",
                   "TFLOP/s/dev (analytic)", "TFLOP/s/dev (XLA)", "analytic/XLA", "MFU %", "memory GiB"], out)


def loss(section: dict[str, Any]) -> str:
    rows = sorted(section["rows"], key=lambda r: (r["global_batch"], r["devices"], r["impl"]))
    out = [[r["global_batch"], r["devices"], r["local_batch"], r["impl"],
            "OOM" if r.get("oom") else _f(r.get("time_s"), ".1f", 1e3),
            _f(r.get("compiled_flops_per_device"), ".2f", 1e-9),
            _f((r.get("memory") or {}).get("temp"), ".1f", 2 ** -20),
            _f((r.get("memory") or {}).get("total"), ".1f", 2 ** -20)] for r in rows]
    return _table(["global N", "devices", "local b", "impl", "time ms (fwd+bwd)", "GFLOP/device (XLA)",
                   "temp MiB/device", "total MiB/device"], out)


def pipeline(section: dict[str, Any]) -> str:
    if "skipped" in section:
        return f"(skipped: {section['skipped']})"
    rows = [[r["config"], f"{r['source_px']}->{r['output_px']}", r["batch_size"], f"{r['examples_per_s']:.1f}",
             f"{r['examples_per_s_per_core']:.1f}", f"{r['images_per_s']:.1f}"] for r in section["throughput"]]
    text = _table(["dataset", "px", "batch", "examples/s", "examples/s per core", "augmented images/s"], rows)
    bounds = section["input_bound"]
    if "config" in bounds:                   # results written before views could be drawn on the device
        bounds = {"tfdata_views": bounds}
    text += ("\n\n" + _table(
        ["quickstart step", "views drawn by", "alone ms", "fed sync: wait ms", "fed sync: step ms", "fed async ex/s",
         "alone ex/s", "device idle", "input-bound"],
        [[f"{b['config']} batch {b['batch_size']}", "the device" if name == "device_views" else "tf.data",
          f"{b['step_alone_s'] * 1e3:.0f}", f"{b['sync_wait_s'] * 1e3:.0f}", f"{b['sync_step_s'] * 1e3:.0f}",
          f"{b['async_examples_per_s']:.0f}", f"{b['examples_per_s_alone']:.0f}",
          f"{b['async_device_idle_fraction']:.0%}", "yes" if b["input_bound"] else "no"] for name, b in bounds.items()]))
    return text


def torch(rows: list[dict[str, Any]]) -> str:
    runs = lambda xs: " / ".join(f"{x:.1f}" for x in xs)
    return _table(["AlexNet px", "batch", "threads", "JAX ex/s (median)", "torch ex/s (median)", "JAX/torch",
                   "JAX runs", "torch runs", "torch env"],
                  [[r["size"], r["batch_size"], r["threads"], f"{r['jax_examples_per_s']:.2f}",
                    f"{r['torch_examples_per_s']:.2f}", f"{r['jax_over_torch']:.2f}",
                    runs(r.get("jax_runs_examples_per_s", [])), runs(r.get("torch_runs_examples_per_s", [])),
                    " ".join(f"{k}={v}" for k, v in r.get("torch_env", {}).items()) or "-"]
                   for r in rows])


def render(results: dict[str, Any]) -> str:
    """Tables of one run's results, or of each run in `{"runs": [...]}`."""
    if "runs" in results:
        return "\n".join(render(run) for run in results["runs"])
    parts = [machine(results)]
    for key, fn in (("train_step", train_step), ("loss", loss), ("pipeline", pipeline), ("torch", torch)):
        if key in results:
            parts.append(f"### {key}\n\n{fn(results[key])}")
    return "\n\n".join(parts) + "\n"


if __name__ == "__main__":
    for path in sys.argv[1:]:
        with open(path) as file:
            print(render(json.load(file)))
