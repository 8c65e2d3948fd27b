"""The command: compile a config's steps for a TPU pod or fake devices and print the plan, or fail
with what the step needs and what to change.

    python -m comm_jax.aot_check --config=configs/trifeatures.py --topology=v5e-16 --config.batch_size=1024
    python -m comm_jax.aot_check --config=configs/trifeatures.py --topology=v5e:4x4,slices=2
    python -m comm_jax.aot_check --config=configs/trifeatures.py --devices=64 --chip=h100
    python -m comm_jax.aot_check --table [--table_pods=v5e-16,v4-64] [--table_out=docs/benchmarks/pod_plans] [--table_render]

`--devices=N` compiles with XLA:CPU on N fake devices (any machine): the memory and collectives are the
CPU compiler's, an approximation of a GPU's; `--chip` names the GPU whose capacity and roofline apply.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Mapping


def _flag_value(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        if arg == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _use_fake_devices(n: int) -> None:
    """Must run before JAX initialises its backend."""
    import os

    os.environ["JAX_PLATFORMS"] = "cpu"
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f]
    os.environ["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={n}"])


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


def format_step(step: Mapping[str, Any]) -> list[str]:
    """Readable lines of one compiled step's report."""
    lines = [f"{step['step']} step: global batch {step['global_batch']} ({step['per_chip_batch']} per chip), "
             f"compiled in {step['compile_s']:.1f} s"]
    if "compiler_oom" in step:
        oom = step["compiler_oom"]
        return lines + [f"  the compiler ran out of memory: needs {oom['needed_gib']:.2f} GiB, "
                        f"{oom['available_gib']:.2f} GiB available"]
    m = step["memory_bytes"]
    capacity = f" of {step['capacity_gib']:g} GiB ({'fits' if step['fits'] else 'DOES NOT FIT'})" \
        if "capacity_gib" in step else ""
    lines.append(f"  memory per chip: arguments {_gib(m['argument'])}, outputs {_gib(m['output'])}, "
                 f"temporaries {_gib(m['temp'])}, aliased {_gib(m['alias'])}, peak {_gib(m['peak'])}{capacity}")
    lines.append(f"  per chip: {step['flops'] / 1e12:.3f} TFLOP, {step['bytes_accessed'] / 1e9:.2f} GB accessed")
    kinds = [f"{kind} x{c['count']} ({c['buffer_bytes'] / 1e6:.1f} MB buffers, {c['sent_bytes'] / 1e6:.1f} MB sent)"
             for kind, c in step["collectives"].items()]
    lines.append(f"  collectives: {'; '.join(kinds) or 'none'}")
    if "roofline" in step:
        r = step["roofline"]
        lines.append(f"  roofline estimate (a lower bound, not a measurement): {_ms(r['step_s_lower_bound'])} "
                     f"bound by {r['bound_by']} (compute {_ms(r['compute_s'])} at {r['peak_tflops']:g} TFLOP/s, "
                     f"HBM {_ms(r['hbm_s'])}, interconnect {_ms(r['interconnect_s'])})")
    return lines


def format_plan(plan: Mapping[str, Any], target: str, compiler: str) -> str:
    lines = [f"{target}: {plan['devices']} x {plan['device_kind']}, mesh {plan['mesh']}, {plan['precision']}; "
             f"{compiler}"]
    chip = plan.get("chip")
    if chip and "hbm_gbps" in chip:
        lines.append(f"chip ({chip['key']}, comm_jax.peaks): {chip['hbm_gib']:g} GiB HBM at {chip['hbm_gbps']:g} GB/s, "
                     f"interconnect {chip['interconnect_gbps']:g} GB/s, {chip['bfloat16']:g} TFLOP/s bf16")
    for step in plan["steps"].values():
        lines += format_step(step)
    return "\n".join(lines)


def _chip(pod, chip_name: str | None, memory_gb: float | None, devices) -> dict | None:
    from comm_jax.peaks import chip_spec

    known_hardware = pod is not None or devices[0].platform != "cpu"
    chip = chip_spec(chip_name or devices[0].device_kind) if (known_hardware or chip_name) else None
    if chip_name and chip is None:
        raise SystemExit(f"error: unknown --chip={chip_name!r}; known: see CHIP_MEMORY in comm_jax/peaks.py")
    if memory_gb is not None:
        chip = dict(chip or {"key": "given"}, hbm_gib=memory_gb)
    return chip


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv if argv is None else argv)
    topology, fake = _flag_value(argv, "topology"), _flag_value(argv, "devices")
    table = any(a == "--table" or a.startswith("--table=") for a in argv)
    if (topology or table) and fake:
        raise SystemExit("error: --topology/--table (a TPU pod) and --devices (fake CPU devices) exclude each other")
    pod = None
    if topology or table:
        from comm_jax.aot_check import pods

        pods.prepare_environment()
        try:
            pod = pods.parse_pod(topology) if topology else None
        except ValueError as error:
            raise SystemExit(f"error: {error}")
        if not pods.libtpu_available():
            raise SystemExit(f"error: {pods.INSTALL_HINT}")
    elif fake:
        _use_fake_devices(int(fake))

    from absl import app, flags, logging
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
    flags.DEFINE_string("topology", None, "TPU pod to compile for: v5e-16, v4-64, v5p-128, v5e:4x4[,slices=K].")
    flags.DEFINE_integer("devices", None, "Compile for this many fake CPU devices instead.")
    flags.DEFINE_string("chip", None, "With --devices: the chip whose memory and peaks apply (h100, a100, ...).")
    flags.DEFINE_float("device_memory_gb", None, "Per-chip memory to check against, overriding the chip table.")
    flags.DEFINE_list("steps", ["train", "embed"], "Which steps to compile: train, embed.")
    flags.DEFINE_string("json", None, "Also write the report as JSON to this path.")
    flags.DEFINE_bool("table", False, "Compile the pod plan table (docs/benchmarks/pod_plans.{json,md}).")
    flags.DEFINE_list("table_pods", None, "With --table: only these pods.")
    flags.DEFINE_list("table_rows", None, "With --table: only these rows (by name).")
    flags.DEFINE_string("table_out", "docs/benchmarks/pod_plans", "With --table: output path without suffix.")
    flags.DEFINE_bool("table_render", False, "With --table: write the Markdown from the JSON's compiled cases "
                      "only, compiling nothing.")

    def run(_):
        logging.set_verbosity(logging.WARNING)
        f = flags.FLAGS
        if f.table:
            from comm_jax.aot_check import table as pod_table

            pod_table.main(f.table_pods, f.table_rows, f.table_out, render_only=f.table_render)
            return
        if f.config is None:
            raise SystemExit("error: --config is required (or --table)")
        run_check(f.config, pod, f.chip, f.device_memory_gb, tuple(f.steps), f.json)

    app.run(run, argv=argv)


def run_check(cfg, pod, chip_name: str | None, memory_gb: float | None, steps: tuple[str, ...],
              json_path: str | None) -> None:
    import jax

    from comm_jax.aot_check import plan as planning, pods

    devices = pods.pod_devices(pod) if pod else jax.devices()
    chip = _chip(pod, chip_name, memory_gb, devices)
    if pod:
        target, compiler = pod.label, f"compiled by the TPU compiler for topology {pod.topology}"
    elif devices[0].platform == "cpu":
        target = f"{len(devices)} fake CPU devices"
        compiler = ("compiled by XLA:CPU on fake devices: no GPU compiler here, so memory and collectives are "
                    "the CPU compiler's plan, an approximation of a GPU's")
    else:
        target, compiler = f"{len(devices)} local devices", f"compiled for {devices[0].platform}"
    try:
        report = planning.plan(cfg, devices, chip, steps=steps)
    except ValueError as error:
        raise SystemExit(f"error: {error}")
    except planning.StepDoesNotFit as error:
        from comm_jax.aot_check import roofline

        step = error.report
        needed = step.get("compiler_oom", {}).get("needed_gib") or step["memory_bytes"]["peak"] / 2**30
        fixed = step.get("memory_bytes", {}).get("argument", 0) / 2**30
        capacity = chip["hbm_gib"] if chip else needed
        print("\n".join(format_step(step)))
        raise SystemExit(f"error: on {target}, {error}: "
                         + roofline.advice(needed, capacity, step["global_batch"], len(devices), fixed))
    report |= {"target": target, "compiler": compiler}
    print(format_plan(report, target, compiler))
    if json_path:
        with open(json_path, "w") as out:
            json.dump(report, out, indent=1)
