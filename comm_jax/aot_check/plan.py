"""Compile the real train step and the evaluation's embedding step for a config on a list of devices
(a TPU pod's from its topology, or fake CPU devices) and report what each needs per chip."""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from comm_jax.aot_check import collectives, roofline
from comm_jax.mesh import batch_sharding, make_mesh, replicated


class StepDoesNotFit(Exception):
    """A step the compiler refused for lack of memory, or whose footprint exceeds the chip's."""

    def __init__(self, report: Mapping[str, Any], message: str):
        super().__init__(message)
        self.report = dict(report)


def _with_shardings(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def train_step_program(cfg, mesh) -> tuple[Callable, tuple]:
    """(jitted train step, abstract arguments) as training builds them."""
    from comm_jax.train_step import batch_shardings, build_train_step

    built = build_train_step(cfg, mesh, abstract=True)
    batch = built.spec.structure(cfg.batch_size)
    return built.step, (built.state, _with_shardings(batch, batch_shardings(mesh, batch)))


def eval_subsets(modalities: Sequence[str]) -> tuple[tuple[str, ...], ...]:
    """The fused subset and, with several modalities, each alone (the feature kinds evaluators read)."""
    whole = (tuple(modalities),)
    return whole + tuple((m,) for m in modalities) if len(modalities) > 1 else whole


def embedding_step_program(cfg, mesh) -> tuple[Callable, tuple, dict]:
    """(the evaluation's jitted representation function, its abstract arguments, static arguments):
    variables replicated as the evaluation restores them, inputs split over the mesh."""
    from comm_jax.evaluators.frozen_model import _representations, abstract_variables

    graphdef, params, batch_stats = abstract_variables(cfg.model.to_dict())
    rep = replicated(mesh)
    params, batch_stats = (jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), t)
                           for t in (params, batch_stats))
    batch = int(cfg.evals.get("batch_size", 256))
    inputs, valid = {}, {}
    for name in cfg.model.modalities:
        spec = cfg.model.encoders[name]
        shape = (batch, *tuple(spec.input_shape))
        inputs[name] = jax.ShapeDtypeStruct(shape, jnp.float32, sharding=batch_sharding(mesh, len(shape)))
        if spec.get("variable_length", False):
            valid[name] = jax.ShapeDtypeStruct(shape[:2], jnp.bool_, sharding=batch_sharding(mesh, 2))
    static = {"subsets": eval_subsets(tuple(cfg.model.modalities))}
    return _representations, (graphdef, params, batch_stats, inputs, valid or None), static


def analyse(compiled, n_devices: int, chip: Mapping[str, Any] | None, precision: str) -> dict[str, Any]:
    """Per-device memory, FLOPs, bytes accessed, collectives and (with a known chip) the fit and roofline."""
    stats = compiled.memory_analysis()
    memory = {k: int(getattr(stats, f"{k}_size_in_bytes")) for k in ("argument", "output", "temp", "alias")}
    memory["peak"] = roofline.peak_bytes(memory)
    cost = compiled.cost_analysis()
    cost = (cost[0] if cost else {}) if isinstance(cost, (list, tuple)) else (cost or {})
    found = collectives.parse(compiled.as_text(), n_devices)
    report = {"memory_bytes": memory, "flops": float(cost.get("flops", 0.0)),
              "bytes_accessed": float(cost.get("bytes accessed", 0.0)),
              "collectives": collectives.summarize(found),
              "collective_sent_bytes": sum(c.sent_bytes for c in found)}
    if chip and "hbm_gib" in chip:
        report["capacity_gib"] = chip["hbm_gib"]
        report["fits"] = roofline.fits(memory["peak"], chip["hbm_gib"])
    if chip and "hbm_gbps" in chip:
        report["roofline"] = roofline.roofline(report["flops"], report["bytes_accessed"],
                                               report["collective_sent_bytes"], chip, precision)
    return report


def compile_program(name: str, program: Callable, args: tuple, static: Mapping[str, Any], *, batch: int,
                    mesh, chip: Mapping[str, Any] | None, precision: str) -> dict[str, Any]:
    """Lower and compile one program; its report, or StepDoesNotFit naming what it needs."""
    head = {"step": name, "global_batch": batch, "per_chip_batch": batch // mesh.size}
    start = time.perf_counter()
    try:
        compiled = program.lower(*args, **static).compile()
    except Exception as error:  # the compilers raise XlaRuntimeError/JaxRuntimeError for OOM
        oom = roofline.out_of_memory(str(error))
        if oom is None:
            raise
        head |= {"compile_s": time.perf_counter() - start, "fits": False, "compiler_oom": oom}
        raise StepDoesNotFit(head, f"the {name} step needs {oom['needed_gib']:.2f} GiB per chip, "
                                   f"{oom['available_gib']:.2f} GiB are available") from None
    head["compile_s"] = time.perf_counter() - start
    report = head | analyse(compiled, mesh.size, chip, precision)
    if report.get("fits") is False:
        raise StepDoesNotFit(report, f"the {name} step needs {report['memory_bytes']['peak'] / roofline.GIB:.2f} GiB "
                                     f"per chip, more than {roofline.USABLE_FRACTION:.0%} of the chip's "
                                     f"{chip['hbm_gib']:g} GiB")
    return report


def plan(cfg, devices: Sequence, chip: Mapping[str, Any] | None, *, steps: Sequence[str] = ("train", "embed"),
         ) -> dict[str, Any]:
    """Compile `steps` of `cfg` on a mesh of `devices` from `cfg.mesh`; raises StepDoesNotFit or
    ValueError (a config or mesh that cannot work)."""
    mesh = make_mesh(cfg.mesh, devices)
    precision = str(cfg.get("precision", "float32"))
    out: dict[str, Any] = {"devices": mesh.size, "mesh": dict(mesh.shape), "device_kind": devices[0].device_kind,
                           "precision": precision, "param_sharding": [list(map(str, r)) for r in
                                                                      cfg.get("param_sharding", ())],
                           "chip": dict(chip) if chip else None, "steps": {}}
    if "train" in steps:
        program, args = train_step_program(cfg, mesh)
        out["steps"]["train"] = compile_program("train", program, args, {}, batch=cfg.batch_size, mesh=mesh,
                                                chip=chip, precision=precision)
    if "embed" in steps:
        batch = int(cfg.evals.get("batch_size", 256))
        if batch % mesh.size:
            raise ValueError(f"config.evals.batch_size={batch} is not divisible by the {mesh.size} devices")
        program, args, static = embedding_step_program(cfg, mesh)
        out["steps"]["embed"] = compile_program("embed", program, args, static, batch=batch, mesh=mesh,
                                                chip=chip, precision=precision)
    return out
