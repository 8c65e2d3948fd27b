"""The pod plan table (docs/benchmarks/pod_plans.{json,md}): the full-size Trifeatures and fusion-heavy
configs and a large-batch config compiled for TPU pods, the fused loss against the reference's
N x N loss at the same batch, and the largest global batch per pod for each config.

Each result is appended to the JSON as soon as it is compiled, so an interrupted run keeps what it
compiled; a rerun skips the cases already there.
"""

from __future__ import annotations

import gc
import json
import math
import os
import time
from typing import Any, Callable, Sequence

import jax
from jax.sharding import NamedSharding, PartitionSpec as P

from comm_jax.aot_check import pods, roofline
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
LOSS_BATCHES = (16_384, 65_536)
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
    """The loss alone (value and gradient in the embeddings), fused or the reference's, on a data mesh."""
    from comm_jax.bench import loss as loss_bench
    from comm_jax.mesh import batch_axes, make_mesh
    from comm_jax.peaks import chip_spec

    mesh = make_mesh([("data", -1)], devices)
    sharding = NamedSharding(mesh, P(None, batch_axes(mesh), None))
    views = jax.ShapeDtypeStruct((LOSS_EMBEDDINGS, global_batch, LOSS_DIM), jax.numpy.float32, sharding=sharding)
    step = loss_bench.value_and_grad_step(loss_bench.objectives(mesh)[impl], mesh)
    chip = chip_spec(devices[0].device_kind)
    entry = {"kind": "loss", "row": f"loss_{impl}", "pod": pod.name, "chips": len(devices),
             "global_batch": global_batch, "per_chip_batch": global_batch // len(devices),
             "capacity_gib": chip["hbm_gib"]}
    try:
        return entry | _summary(planning.compile_program("loss", step, (views, views), {}, batch=global_batch,
                                                         mesh=mesh, chip=chip, precision="float32"))
    except planning.StepDoesNotFit as error:
        return entry | _summary(error.report)


def predicted_max_per_chip(entry: dict[str, Any]) -> int | None:
    """Largest per-chip batch if memory beyond the state grows linearly with it, rounded down to a
    multiple of 8, from one compiled (or refused) point."""
    used = entry.get("peak_gib", entry.get("needs_gib"))
    state = entry.get("state_gib", 0.0)
    if not used or used <= state:
        return None
    per_example = (used - state) / entry["per_chip_batch"]
    best = int((entry["capacity_gib"] * roofline.USABLE_FRACTION - state) / per_example)
    return best // 8 * 8 if best >= 8 else best or None


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


SEARCH_COMPILES = 8        # compiles spent on each (row, pod)'s largest batch after the first
SEARCH_WITHIN = 8          # stop once the refused size is within 1/8 of the fitting one (or 8 per chip)


def next_guess(last: dict[str, Any], fits_at: int | None, refused_at: int | None, fitted: int = 0) -> int | None:
    """The next per-chip batch to compile (a multiple of 8 when 8 or more), or None when the search is done;
    `fitted`: how many of the search's own compiles have fitted so far.
    After a fitting compile: the linear prediction from it (memory beyond the state grows about linearly
    below the limit), kept under the smallest refused size. With nothing refused yet, the prediction is
    trusted once: after a search compile has fitted, a prediction above it is raised to twice the largest
    fitting size, and a prediction of nothing larger becomes one step up (1/`SEARCH_WITHIN`, at least 8
    per chip), or twice the largest fitting size once two have fitted (near its limit the compiler trades
    memory for recomputation, so memory grows slower than linearly there). After a refusal: the
    geometric midpoint of the largest fitting and the smallest refused size, or, with nothing fitting
    yet, the prediction from what the refused compile needed, kept under half of it."""
    if last["fits"]:
        guess = predicted_max_per_chip(last) or 0
        if refused_at is not None:
            guess = min(guess, refused_at - 8)
            if guess <= fits_at:
                guess = int(math.sqrt(fits_at * refused_at))
        elif guess > fits_at:
            guess = max(guess, 2 * fits_at) if fitted >= 1 else guess
        elif fitted >= 2:
            guess = 2 * fits_at
        else:
            guess = fits_at + max(8, fits_at // SEARCH_WITHIN) if fits_at >= 8 else fits_at + 1
    elif fits_at:
        guess = int(math.sqrt(fits_at * refused_at))
    else:
        guess = min(predicted_max_per_chip(last) or 0, refused_at // 2)
    guess = guess // 8 * 8 if guess >= 8 else guess
    if fits_at and refused_at and guess <= fits_at:   # the midpoint rounded down onto the fitting size
        guess = fits_at + 8 if fits_at >= 8 else fits_at + 1
    return guess if guess > (fits_at or 0) and (refused_at is None or guess < refused_at) else None


def largest_batch(table: Table, row: str, pod: pods.Pod, devices, known: Sequence[dict[str, Any]],
                  compile_case: Callable[[int], dict[str, Any]] | None = None) -> None:
    """The largest per-chip batch that compiles and fits, searched from the compiles already made
    (`known`: the row's stated batches): the linear prediction from the largest fitting one (or what the
    smallest refused one needed), then bisection between the largest fitting and smallest refused sizes,
    at most `SEARCH_COMPILES` compiles; stops when the two are within 1/`SEARCH_WITHIN` (or 8 per chip) of
    each other, so every finished search names a refused size just above its largest fitting one."""
    chips = len(devices)
    compile_case = compile_case or (lambda per_chip: compile_row(row, pod, devices, per_chip * chips))
    fitting = [e for e in known if e["fits"]]
    refused = [e for e in known if not e["fits"]]
    fits_at = max((e["per_chip_batch"] for e in fitting), default=None)
    refused_at = min((e["per_chip_batch"] for e in refused), default=None)
    if fits_at and refused_at and refused_at - fits_at <= max(8, fits_at // SEARCH_WITHIN):
        return
    last = (max(fitting, key=lambda e: e["per_chip_batch"]) if fitting
            else min(refused, key=lambda e: e["per_chip_batch"]))
    fitted = 0
    for _ in range(SEARCH_COMPILES):
        guess = next_guess(last, fits_at, refused_at, fitted)
        if guess is None:
            return
        last = table.run({"kind": "step", "row": row, "pod": pod.name, "global_batch": guess * chips,
                          "search": "largest"}, lambda: compile_case(guess))
        if last["fits"]:
            fitted += 1
            fits_at = max(fits_at or 0, guess)
        else:
            refused_at = min(refused_at or guess, guess)
        if fits_at and refused_at and refused_at - fits_at <= max(8, fits_at // SEARCH_WITHIN):
            return


def build(pod_names: Sequence[str], rows: Sequence[str], out: str) -> Table:
    """Compile every case: the cheap loss programs, each row over all pods, then the largest-batch searches."""
    table = Table(out + ".json")
    targets = [(pod, pods.pod_devices(pod)) for pod in map(pods.parse_pod, pod_names)]
    if "loss" in rows:
        for pod, devices in targets:
            for batch in LOSS_BATCHES:
                for impl in ("fused", "reference"):
                    table.run({"kind": "loss", "row": f"loss_{impl}", "pod": pod.name, "global_batch": batch},
                              lambda: compile_loss(impl, pod, devices, batch))
    # Every (row, pod) at its stated batches first, then the largest-batch searches: an interrupted run
    # has the whole grid at the default batch before it spends compiles on any search.
    searches = []
    for row in (r for r in rows if r in ROWS):
        _, _, per_chip, batches = ROWS[row]
        for pod, devices in targets:
            stated = list(batches) + ([per_chip * len(devices)] if per_chip else [])
            known = [table.run({"kind": "step", "row": row, "pod": pod.name, "global_batch": batch},
                               lambda: compile_row(row, pod, devices, batch)) for batch in stated]
            searches.append((row, pod, devices, known))
    for row, pod, devices, known in searches:
        largest_batch(table, row, pod, devices, known)
    return table


def main(pod_names: Sequence[str] | None, rows: Sequence[str] | None, out: str, render_only: bool = False) -> None:
    from comm_jax.aot_check import table_markdown

    # render_only: the Markdown of what the JSON holds (e.g. while or after an interrupted run), nothing compiled
    table = Table(out + ".json") if render_only else build(pod_names or PODS, rows or ("loss", *ROWS), out)
    with open(out + ".md", "w") as f:
        f.write(table_markdown.render(table.entries, [r for r in (rows or ROWS) if r in ROWS], pod_names or PODS))
    print(f"wrote {out}.md" if render_only else f"wrote {out}.json and {out}.md")
