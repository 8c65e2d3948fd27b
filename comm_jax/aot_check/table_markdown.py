"""The pod plan table as Markdown: the largest global batch per pod, every compiled step, and the fused
loss against the reference's N x N loss."""

from __future__ import annotations

from typing import Any, Sequence

from comm_jax.aot_check.roofline import USABLE_FRACTION
from comm_jax.aot_check.search import SEARCH_COMPILES

HEADER = f"""# Pod plans: what fits where

Compiled ahead of time by the TPU compiler (`libtpu`) for each pod's topology on a CPU-only host:
`python -m comm_jax.aot_check --table`. Memory is per chip from the compiled executable
(arguments + outputs + temporaries - donated aliases); a step fits when that peak is within {USABLE_FRACTION:.0%} of the
chip's HBM; "refused" means the compiler itself ran out of HBM and said how much the step needs. The roofline column is an **estimate**: the largest of
FLOPs / peak FLOP/s, bytes accessed / HBM bandwidth and collective bytes sent / interconnect
bandwidth (chip figures in `comm_jax/peaks.py`), a lower bound on step time, never a measurement.

Rows: `trifeatures` is `configs/trifeatures.py` at full size (AlexNet on 224 px, float32, views drawn
on the chips); `fusion_heavy` is `configs/fusion_heavy.py` (12-layer width-768 fusion over 2 x 128
tokens), `_fsdp4` with its block kernels and their optimizer state sharded over a 4-way `fsdp` axis;
`large_batch` is the full-size Trifeatures model in bfloat16 at global batches 16,384 and 65,536 with
the fused loss.
"""


def _gib(entry: dict[str, Any]) -> str:
    if entry.get("compiler_oom"):
        return f"refused: needs {entry['needs_gib']:.1f}"
    return f"{entry['peak_gib']:.2f}"


def _largest(entries: Sequence[dict[str, Any]], rows: Sequence[str] = (), pods: Sequence[str] = ()) -> list[str]:
    pods = list(dict.fromkeys([*pods, *(e["pod"] for e in entries)]))
    lines = ["## Largest global batch per pod (compiled and fitting; the smallest batch above it that does not fit)", "",
             "| config | " + " | ".join(pods) + " |", "|---|" + "---|" * len(pods)]
    for row in dict.fromkeys([*rows, *(e["row"] for e in entries if e["kind"] == "step")]):
        cells = []
        for pod in pods:
            cases = [e for e in entries if e["kind"] == "step" and e["row"] == row and e["pod"] == pod]
            best = max((e for e in cases if e["fits"]), key=lambda e: e["global_batch"], default=None)
            above = min((e["global_batch"] for e in cases if not e["fits"]
                         and (best is None or e["global_batch"] > best["global_batch"])), default=None)
            if best is None:
                cells.append(f"none fits ({above:,} does not)" if above else "none compiled")
            else:
                searched = any(e.get("search") for e in cases)
                cells.append(f"{best['global_batch']:,} ({best['per_chip_batch']}/chip)"
                             + (f"; {above:,} does not fit" if above else "; not searched" if not searched else ""))
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return lines + ["", f"Each pod's largest batch is searched by compiling, from the compiles at the row's stated "
                        "batches (multiples of 8 per chip): the linear prediction from the largest fitting compile; "
                        "then, until a size does not fit, one step up (1/8 more) or doubling once the prediction has "
                        "been passed; then bisection between the largest fitting size and the smallest one that does not fit, "
                        f"at most {SEARCH_COMPILES} compiles, stopping when the two are within 1/8 (or 8 per chip) "
                        "of each other. Near the limit the compiler trades memory for recomputation, so peak "
                        "memory is not monotone in the batch (see the steps below); a cell's two sizes are the "
                        "compiles that bracket it. Rows marked \"not searched\" are compiled at their stated "
                        "batch only.", ""]


def _steps(entries: Sequence[dict[str, Any]]) -> list[str]:
    lines = ["## Every compiled train step", "",
             "| config | pod | chips | global batch | per chip | peak GiB | of GiB | fits | TFLOP/chip | "
             "collectives sent MB | roofline ms (bound) | compile s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in sorted((e for e in entries if e["kind"] == "step"), key=lambda e: (e["row"], e["chips"], e["global_batch"])):
        roof = f"{e['roofline_ms']:.1f} ({e['bound_by']})" if "roofline_ms" in e else "-"
        lines.append(f"| {e['row']} | {e['pod']} | {e['chips']} | {e['global_batch']:,} | {e['per_chip_batch']} | "
                     f"{_gib(e)} | {e['capacity_gib']:g} | {'yes' if e['fits'] else 'no'} | "
                     f"{e.get('tflop_per_chip', '-')} | {e.get('collective_sent_mb', '-')} | {roof} | {e['compile_s']} |")
    return lines + [""]


def _loss(entries: Sequence[dict[str, Any]]) -> list[str]:
    losses = [e for e in entries if e["kind"] == "loss"]
    if not losses:
        return []
    chunks = ", ".join(f"{c:,}" for c in sorted({e["chunk"] for e in losses if "chunk" in e})) or "-"
    lines = ["## The fused loss against the reference's N x N loss (value and gradient, per chip)", "",
             "Embeddings `[3, N, 256]` (CoMM on two modalities) sharded over a data mesh. Fused: each chip scores "
             "its rows against the gathered columns. Reference: every chip gathers everything and builds the "
             "full `2N x 2N` logits of each term, as the PyTorch reference does on every GPU.", "",
             "Blockwise: the fused loss with the gathered columns scored a chunk at a time (`config.loss.column_chunk`; "
             f"{chunks} columns per chunk here), each block recomputed in the backward pass.", "",
             "| pod | global batch N | fused peak GiB | blockwise peak GiB | reference peak GiB | chip GiB |",
             "|---|---|---|---|---|---|"]
    for pod in dict.fromkeys(e["pod"] for e in losses):
        for batch in sorted({e["global_batch"] for e in losses if e["pod"] == pod}):
            pair = {e["row"]: e for e in losses if e["pod"] == pod and e["global_batch"] == batch}
            cells = [_gib(pair[k]) if k in pair else "-" for k in ("loss_fused", "loss_blockwise", "loss_reference")]
            capacity = next(iter(pair.values()))["capacity_gib"]
            lines.append(f"| {pod} | {batch:,} | {' | '.join(cells)} | {capacity:g} |")
    return lines + [""]


def render(entries: Sequence[dict[str, Any]], rows: Sequence[str] = (), pods: Sequence[str] = ()) -> str:
    """The tables; `rows` and `pods` name the grid asked for, so that cases not compiled yet show as such."""
    return "\n".join([HEADER, *_largest(entries, rows, pods), *_loss(entries), *_steps(entries)])
