"""The pod plan table (docs/benchmarks/pod_plans.{json,md}): the full-size Trifeatures and fusion-heavy
configs and a large-batch config compiled for TPU pods, the fused loss against the reference's
N x N loss at the same batch, and the largest global batch per pod for each config.

Each result is appended to the JSON as soon as it is compiled, so an interrupted run keeps what it
compiled; a rerun skips the cases already there.
"""

from __future__ import annotations

import gc
import json
import os
import time
from typing import Any, Callable, Sequence

import jax
from jax.sharding import NamedSharding, PartitionSpec as P

from comm_jax.aot_check import pods, roofline
from comm_jax.aot_check.search import largest_batch
from comm_jax.aot_check import plan as planning

PODS = ("v5e-16", "v4-64", "v5p-128", "v5e-256")
CONFIGS_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "configs")
FSDP_RULES = ((r".*blocks\..*kernel(\.value)?", (None, "fsdp")),)
# name -> (config file and argument, overrides, per-chip batch of the first compile or None, global batches)
ROWS: dict[str, tuple[str, dict[str, Any], int | None, tuple[int, ...]]] = {
    "trifeatures": ("trifeatures.py", {}, 64, ()),
    "fusion_heavy": ("fusion_heavy.py", {}, 16, ()),
    "fusion_heavy_fsdp4": ("fusion_heavy.py", {"mesh": [("data", -1), ("fsdp", 4)],
                                               "param_sharding": FSDP_RULES}, 16, ()),
    "large_batch": ("trifeatures.py", {"precision": "bfloat16"}, None, (16_384, 65_536)),
}
# sharding variants, compiled at their stated batch beside the row they vary; no largest-batch search
NOT_SEARCHED = ("fusion_heavy_fsdp4",)
LOSS_BATCHES = (16_384, 65_536)
LOSS_CHUNK = 4096            # columns per block of the blockwise loss row
LOSS_EMBEDDINGS, LOSS_DIM = 3, 256        # CoMM on two modalities: n + 1 embeddings of the head's 256


def load_row_config(row: str, global_batch: int):
    from comm_jax.benchmark import load_config

    name, overrides, _, _ = ROWS[row]
    cfg = load_config(os.path.join(CONFIGS_DIR, name))
    for key, value in overrides.items():
        setattr(cfg, key, value)
    cfg.batch_size = global_batch
    return cfg


def _summary(step: dict[str, Any]) -> dict[str, Any]:
    out = {"compile_s": round(step["compile_s"], 1), "fits": step.get("fits", False)}
    if "compiler_oom" in step:
        return out | {"needs_gib": round(step["compiler_oom"]["needed_gib"], 2), "compiler_oom": True}
    m = step["memory_bytes"]
    out |= {"peak_gib": round(m["peak"] / roofline.GIB, 3), "state_gib": round(m["output"] / roofline.GIB, 3),
            "tflop_per_chip": round(step["flops"] / 1e12, 4),
            "collective_sent_mb": round(step["collective_sent_bytes"] / 1e6, 2),
            "collectives": {k: v["count"] for k, v in step["collectives"].items()}}
    if "roofline" in step:
        out |= {"roofline_ms": round(step["roofline"]["step_s_lower_bound"] * 1e3, 3),
                "bound_by": step["roofline"]["bound_by"]}
    return out


def compile_row(row: str, pod: pods.Pod, devices, global_batch: int) -> dict[str, Any]:
    from comm_jax.peaks import chip_spec

    cfg = load_row_config(row, global_batch)
    chip = chip_spec(devices[0].device_kind)
    entry = {"kind": "step", "row": row, "pod": pod.name, "chips": len(devices), "global_batch": global_batch,
             "per_chip_batch": global_batch // len(devices), "capacity_gib": chip["hbm_gib"]}
    try:
        report = planning.plan(cfg, devices, chip, steps=("train",))
        return entry | _summary(report["steps"]["train"])
    except planning.StepDoesNotFit as error:
        return entry | _summary(error.report)


def compile_loss(impl: str, pod: pods.Pod, devices, global_batch: int) -> dict[str, Any]:
    """The loss alone (value and gradient in the embeddings), fused (whole rows or blockwise) or the
    reference's, on a data mesh."""
    from comm_jax.bench import loss as loss_bench
    from comm_jax.mesh import batch_axes, make_mesh
    from comm_jax.peaks import chip_spec

    mesh = make_mesh([("data", -1)], devices)
    sharding = NamedSharding(mesh, P(None, batch_axes(mesh), None))
    views = jax.ShapeDtypeStruct((LOSS_EMBEDDINGS, global_batch, LOSS_DIM), jax.numpy.float32, sharding=sharding)
    objective = (loss_bench.blockwise_objective(mesh, LOSS_CHUNK) if impl == "blockwise"
                 else loss_bench.objectives(mesh)[impl])
    step = loss_bench.value_and_grad_step(objective, mesh)
    chip = chip_spec(devices[0].device_kind)
    entry = {"kind": "loss", "row": f"loss_{impl}", "pod": pod.name, "chips": len(devices),
             "global_batch": global_batch, "per_chip_batch": global_batch // len(devices),
             "capacity_gib": chip["hbm_gib"]} | ({"chunk": LOSS_CHUNK} if impl == "blockwise" else {})
    try:
        return entry | _summary(planning.compile_program("loss", step, (views, views), {}, batch=global_batch,
                                                         mesh=mesh, chip=chip, precision="float32"))
    except planning.StepDoesNotFit as error:
        return entry | _summary(error.report)


class Table:
    """The JSON results file, appended to as each case compiles."""

    def __init__(self, path: str):
        self.path = path
        self.entries: list[dict[str, Any]] = []
        if os.path.exists(path):
            with open(path) as f:
                self.entries = json.load(f)["entries"]

    def find(self, **keys) -> dict[str, Any] | None:
        return next((e for e in self.entries if all(e.get(k) == v for k, v in keys.items())), None)

    def run(self, keys: dict[str, Any], compile_case: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        done = self.find(**keys)
        if done is not None:
            return done
        start = time.perf_counter()
        try:
            entry = compile_case() | keys
        except Exception as error:  # one case the compiler rejects must not stop the table
            entry = dict(keys, fits=False, compile_s=round(time.perf_counter() - start, 1), chips=0,
                         per_chip_batch=0, capacity_gib=0, error=str(error).splitlines()[0][:300])
        print(f"{entry['pod']:>8} {entry['row']:<20} batch {entry['global_batch']:>6}: "
              f"{'fits' if entry['fits'] else 'does not fit'} {entry.get('peak_gib', entry.get('needs_gib'))} GiB "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
        self.entries.append(entry)
        self.save()
        jax.clear_caches()   # each case's executables: a long table otherwise grows by gigabytes of host memory
        gc.collect()
        return entry

    def save(self) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        with open(self.path, "w") as f:
            json.dump({"jax": jax.__version__, "entries": self.entries}, f, indent=1)


def build(pod_names: Sequence[str], rows: Sequence[str], out: str) -> Table:
    """Compile every case: the cheap loss programs, each row over all pods, then the largest-batch searches."""
    table = Table(out + ".json")
    targets = [(pod, pods.pod_devices(pod)) for pod in map(pods.parse_pod, pod_names)]
    if "loss" in rows:
        for pod, devices in targets:
            for batch in LOSS_BATCHES:
                for impl in ("fused", "reference", "blockwise"):
                    table.run({"kind": "loss", "row": f"loss_{impl}", "pod": pod.name, "global_batch": batch},
                              lambda: compile_loss(impl, pod, devices, batch))
    # Every (row, pod) at its stated batches first, then the largest-batch searches: an interrupted run
    # has the whole grid at the default batch before it spends compiles on any search. A search starts from
    # every compile of its (row, pod) in the table, so a rerun goes on from the bracket an earlier run left.
    searches = []
    for row in (r for r in rows if r in ROWS):
        _, _, per_chip, batches = ROWS[row]
        for pod, devices in targets:
            stated = list(batches) + ([per_chip * len(devices)] if per_chip else [])
            for batch in stated:
                table.run({"kind": "step", "row": row, "pod": pod.name, "global_batch": batch},
                          lambda: compile_row(row, pod, devices, batch))
            if row not in NOT_SEARCHED:
                searches.append((row, pod, devices))
    for row, pod, devices in searches:
        known = [e for e in table.entries if e["kind"] == "step" and e["row"] == row and e["pod"] == pod.name]
        largest_batch(table, row, pod.name, len(devices), known,
                      lambda per_chip, r=row, p=pod, d=devices: compile_row(r, p, d, per_chip * len(d)))
    return table


def main(pod_names: Sequence[str] | None, rows: Sequence[str] | None, out: str, render_only: bool = False) -> None:
    from comm_jax.aot_check import table_markdown

    # render_only: the Markdown of what the JSON holds (e.g. while or after an interrupted run), nothing compiled
    table = Table(out + ".json") if render_only else build(pod_names or PODS, rows or ("loss", *ROWS), out)
    with open(out + ".md", "w") as f:
        f.write(table_markdown.render(table.entries, [r for r in (rows or ROWS) if r in ROWS], pod_names or PODS))
    print(f"wrote {out}.md" if render_only else f"wrote {out}.json and {out}.md")
