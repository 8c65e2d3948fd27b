"""Benchmarks: train-step throughput and MFU, the fused loss vs the reference's, the input pipeline,
and the PyTorch anchor. Prints tables and writes JSON.

    python -m comm_jax.benchmark {train_step,loss,pipeline,torch,all} [--output FILE.json] [options]

Every figure is a median over repeated steps after warm-up, each step synchronised with
`jax.block_until_ready`, on device-resident synthetic inputs. Sweeps default to the platform: on
CPU they are capped to what a 2-core machine runs in minutes; on GPU/TPU batch sizes double from
64 until a step no longer fits in memory. Only `pipeline` imports tensorflow; `all` skips it with a
note where tensorflow is absent, and skips `torch` unless `--torch-python` is given.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import sys
from typing import Any, Sequence

import jax

from comm_jax import peaks as peak_table

# (config, batch sizes, batch sizes compiled and analysed but not run, (steps, warmup) or None for
# the command line's). On CPU the full-size configs take seconds to minutes per step: fewer steps,
# and the fusion-heavy one is timed at a small batch and only compiled at 64.
CPU_TRAIN_SWEEP = (
    ("configs/trifeatures.py:cpu", (64, 128, 256), (), None),
    ("configs/fusion_heavy.py:cpu", (64, 128, 256), (), None),
    ("configs/trifeatures.py", (64,), (), (3, 1)),
    ("configs/fusion_heavy.py", (4, 64), (64,), (3, 1)),
)
ACCELERATOR_TRAIN_SWEEP = tuple((name, "auto", (), None) for name in (
    "configs/trifeatures.py", "configs/trifeatures.py:cpu", "configs/fusion_heavy.py"))
LOSS_BATCHES = (256, 1024, 4096, 16384)
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_SCRIPT = os.path.join(os.path.dirname(REPO_ROOT), "shared", "bench", "torch_reference_step.py")


def load_config(spec: str):
    """`path/to/config.py[:arg]` -> the config from its `get_config(arg)`."""
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location(f"_bench_config_{abs(hash(path))}", path)
    if module_spec is None or module_spec.loader is None:
        raise SystemExit(f"error: cannot load config file {path!r}")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t]


def _machine(load: tuple[float, float, float] | None) -> dict[str, Any]:
    device = jax.devices()[0]
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
            "processor": platform.processor() or platform.machine(), "host_cores": os.cpu_count(),
            "python": platform.python_version(), "jax": jax.__version__, "backend": jax.default_backend(),
            "device_kind": device.device_kind, "device_count": jax.device_count(),
            "load_average_at_start": load, "argv": sys.argv}


def run_train_step(args, peaks: dict[str, Any]) -> list[dict[str, Any]]:
    from comm_jax.bench import train_step
    from comm_jax.mesh import make_mesh

    on_cpu = jax.default_backend() == "cpu"
    if args.config:
        batches = "auto" if args.batch_sizes == "auto" else _ints(args.batch_sizes or "64")
        sweep = [(spec, batches, tuple(_ints(args.compile_only_batches or "")), None) for spec in args.config]
    else:
        sweep = CPU_TRAIN_SWEEP if on_cpu else ACCELERATOR_TRAIN_SWEEP
    mesh = make_mesh([("data", -1)])
    print(f"\n== train step ({jax.device_count()} x {jax.devices()[0].device_kind}) ==\n{train_step.HEADER}", flush=True)
    rows = []
    for spec, batches, compile_only, timing in sweep:
        name = spec.removeprefix("configs/").replace(".py", "")
        steps, warmup = timing or (args.steps, args.warmup)
        rows += train_step.sweep(name, load_config(spec), mesh, batch_sizes=batches,
                                 precisions=args.precision.split(","), steps=steps, warmup=warmup,
                                 peaks=peaks, max_auto_batch=args.max_batch, compile_only_batches=compile_only)
    return rows


def run_loss(args) -> dict[str, Any]:
    from comm_jax.bench import loss

    on_cpu = jax.default_backend() == "cpu"
    counts = _ints(args.devices) if args.devices else (
        [1, 2, 4, 8] if on_cpu else [c for c in (1, 2, 4, 8, 16, 32, 64) if c <= jax.device_count()])
    batches = _ints(args.loss_batches) if args.loss_batches else list(LOSS_BATCHES)
    budget = args.max_timed_gflop if args.max_timed_gflop is not None else (200.0 if on_cpu else float("inf"))
    print(f"\n== loss: fused (local rows x gathered columns) vs reference (full N x N per term) ==\n"
          f"{loss.HEADER}", flush=True)
    rows = loss.run(counts, batches, dim=args.dim, steps=args.steps, max_timed_gflop=budget)
    checks = loss.check_scaling(rows)
    print(_scaling_summary(checks), flush=True)
    return {"rows": rows, "checks": checks}


def _scaling_summary(checks: dict[str, Any]) -> str:
    lines = [f"per-device fused FLOPs x devices / single-device FLOPs (want 1 +- {checks['flop_tolerance']:.0%}): "
             + ", ".join(f"{k}: {1 / v:.3f}" for k, v in checks["flop_ratio_1_over_d"].items()),
             f"  -> 1/devices FLOP scaling {'holds' if checks['flop_scaling_ok'] else 'FAILS'}"]
    for impl in ("fused", "reference"):
        fit = checks.get(f"{impl}_memory_fit")
        if fit:
            lines.append(f"{impl} temp memory fit, max relative error: a*local*global + b*global "
                         f"{fit['local_x_global']['max_rel_err']:.1%} "
                         f"({fit['local_x_global']['bytes_per_element']:.0f} B per local x global element), "
                         f"a*global^2 + b*global {fit['global_sq']['max_rel_err']:.1%}")
    if "memory_scaling_ok" in checks:
        lines.append(f"  -> fused memory grows with local x global, not global^2: "
                     f"{'holds' if checks['memory_scaling_ok'] else 'FAILS'}")
    return "\n".join(lines)


def run_pipeline(args) -> dict[str, Any]:
    from comm_jax.bench import pipeline

    names = ["bimodal_trifeatures/32px", "bimodal_trifeatures/64px", "bimodal_trifeatures/224px"]
    if args.prepare:
        pipeline.ensure_prepared(names, args.data_dir)
    print("\n== input pipeline (two SimCLR views of both images per example) ==", flush=True)
    rows = pipeline.throughput([(name, None) for name in names], data_dir=args.data_dir,
                               batch=args.pipeline_batch, steps=args.pipeline_steps, warmup=5, window=5)
    bounds = {}
    # The quickstart config as shipped (views drawn on the device) and with the views drawn by tf.data.
    for name, on_device in (("device_views", True), ("tfdata_views", False)):
        cfg = load_config("configs/trifeatures.py:cpu")
        cfg.data.augment_on_device = on_device
        bound = bounds[name] = pipeline.input_bound(cfg, data_dir=args.data_dir, steps=args.input_bound_steps,
                                                    warmup=args.warmup)
        print(f"quickstart (trifeatures:cpu, batch {bound['batch_size']}, {name}): step alone "
              f"{bound['step_alone_s'] * 1e3:.0f} ms ({bound['examples_per_s_alone']:.0f} ex/s); fed by tf.data: "
              f"synchronous wait {bound['sync_wait_s'] * 1e3:.0f} ms + step {bound['sync_step_s'] * 1e3:.0f} ms; "
              f"asynchronous {bound['async_examples_per_s']:.0f} ex/s, device idle "
              f"{bound['async_device_idle_fraction']:.0%} -> {'INPUT-BOUND' if bound['input_bound'] else 'not input-bound'}",
              flush=True)
    return {"throughput": rows, "input_bound": bounds}


def run_torch(args, peaks: dict[str, Any]) -> list[dict[str, Any]]:
    from comm_jax.bench import torch_anchor

    print(f"\n== PyTorch anchor ({args.torch_script}) ==", flush=True)
    config_file = os.path.join(REPO_ROOT, "configs", "trifeatures.py")
    return torch_anchor.compare(args.torch_python, args.torch_script,
                                lambda size: load_config(f"{config_file}:res={size}{args.torch_config_arg}"), batch=args.torch_batch,
                                sizes=_ints(args.torch_sizes), steps=args.steps, warmup=args.warmup,
                                threads=args.torch_threads, peaks=peaks, repeats=args.torch_repeats,
                                torch_env=dict(kv.split("=", 1) for kv in args.torch_env or ()),
                                device="cpu" if jax.default_backend() == "cpu" else "cuda")


def _tensorflow_available() -> bool:
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return False
    return True


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m comm_jax.benchmark", description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("train_step", "loss", "pipeline", "torch", "all"))
    p.add_argument("--output", help="write all results as JSON here")
    p.add_argument("--markdown", help="write the results as Markdown tables here")
    p.add_argument("--platform", choices=("cpu", "gpu", "cuda", "rocm", "tpu"),
                   help="JAX platform to run on (default: JAX's choice, the accelerator when there is one)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per measurement (median)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (after compilation)")
    g = p.add_argument_group("train_step")
    g.add_argument("--config", action="append", help="config file[:arg], repeatable (default: the platform sweep)")
    g.add_argument("--batch-sizes", help="comma-separated global batch sizes, or 'auto' (64, 128, ... until OOM)")
    g.add_argument("--compile-only-batches", help="batch sizes only compiled and analysed, not run")
    g.add_argument("--precision", default="float32,bfloat16", help="comma-separated: float32, bfloat16")
    g.add_argument("--max-batch", type=int, default=4096, help="upper bound of an 'auto' sweep")
    g.add_argument("--no-measure-peak", action="store_true",
                   help="skip timing a large matmul (the peak MFU uses on chips without a datasheet entry, e.g. CPUs)")
    g = p.add_argument_group("loss")
    g.add_argument("--devices", help="comma-separated device counts (CPU: fake devices, one subprocess each)")
    g.add_argument("--loss-batches", help=f"comma-separated global batch sizes (default {LOSS_BATCHES})")
    g.add_argument("--dim", type=int, default=256, help="embedding width")
    g.add_argument("--max-timed-gflop", type=float, help="run programs up to this many GFLOP in total; "
                   "larger ones are compiled and analysed only (default: 200 on CPU, no limit elsewhere)")
    g = p.add_argument_group("pipeline")
    g.add_argument("--data-dir", help="TFDS data dir (default: TFDS's)")
    g.add_argument("--prepare", action="store_true", help="generate missing Trifeatures datasets first")
    g.add_argument("--pipeline-batch", type=int, default=64)
    g.add_argument("--pipeline-steps", type=int, default=40)
    g.add_argument("--input-bound-steps", type=int, default=20)
    g = p.add_argument_group("torch")
    g.add_argument("--torch-python", help="python of an environment with torch (never this one)")
    g.add_argument("--torch-script", default=TORCH_SCRIPT,
                   help="the PyTorch reference step (default: ../shared/bench/ beside the repository)")
    g.add_argument("--torch-batch", type=int, default=16)
    g.add_argument("--torch-sizes", default="224,64")
    g.add_argument("--torch-threads", type=int, default=2)
    g.add_argument("--torch-config-arg", default="", type=lambda t: f",{t}" if t else "",
                   help="more configs/trifeatures.py tokens for the JAX side, e.g. conv3x3=winograd")
    g.add_argument("--torch-repeats", type=int, default=3, help="alternate JAX and torch runs this many times")
    g.add_argument("--torch-env", action="append", metavar="KEY=VALUE",
                   help="environment for the torch runs, repeatable (on a shared CPU host: OMP_WAIT_POLICY=PASSIVE)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.platform:
        jax.config.update("jax_platforms", "cuda" if args.platform == "gpu" else args.platform)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    results: dict[str, Any] = {"machine": _machine(load)}
    peaks = peak_table.device_peaks(measure=not args.no_measure_peak)
    results["peaks_tflops"] = peaks
    print(f"device {peaks['device_kind']} ({jax.device_count()} x {jax.default_backend()}), peaks TFLOP/s: "
          + ", ".join(f"{k} {v:.3f}" for k, v in peaks.items() if isinstance(v, float))
          + f"; load average {load}", flush=True)
    what = args.what
    if what in ("train_step", "all"):
        results["train_step"] = run_train_step(args, peaks)
    if what in ("loss", "all"):
        results["loss"] = run_loss(args)
    if what == "pipeline" or (what == "all" and _tensorflow_available()):
        results["pipeline"] = run_pipeline(args)
    elif what == "all":
        results["pipeline"] = {"skipped": "tensorflow is not installed"}
        print("\n(pipeline skipped: tensorflow is not installed)")
    if what == "torch" or (what == "all" and args.torch_python):
        if not args.torch_python:
            raise SystemExit("error: torch needs --torch-python (an environment with torch installed)")
        results["torch"] = run_torch(args, peaks)
    results["machine"]["load_average_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as file:
            json.dump(results, file, indent=1, default=str)
        print(f"wrote {args.output}")
    if args.markdown:
        from comm_jax.bench import report
        with open(args.markdown, "w") as file:
            file.write(report.render(json.loads(json.dumps(results, default=str))))
        print(f"wrote {args.markdown}")
    return results


if __name__ == "__main__":
    main()
