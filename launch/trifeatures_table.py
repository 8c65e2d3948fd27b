"""The paper's Bimodal Trifeatures table: CoMM learns synergy, cross-modal alignment does not.

For each method and seed: pretrain on unbiased pairs (R, U1, U2 from its linear probes) and on pairs
biased by the texture->colour mapping M (S from its probe, balanced accuracy on unbiased pairs);
evaluate each final checkpoint; write the table beside the paper's numbers (Markdown, JSON) and a
bar chart (PNG). Runs are resumed/skipped when their work directory already has results; a final
checkpoint whose evaluation lacks a metric of the table (an evaluator added since) is evaluated again.
A finished run is used only if its final checkpoint's config is the one this call would train (same
data, crops, model, loss, optimizer, steps and seed); a root filled by another `--crop`, `--res` or
`--override` stops the driver with the first difference, since work directories are named by method,
seed and bias only. `--include` joins the per-seed rows of another call's table.json: methods this call
does not train, and the first seeds of one it does (the rest trained here), so a table can be completed
on another machine or after its work directories are gone.

Columns: R, U, S from the reference's probe (unweighted logistic regression, scored by balanced
accuracy), and S_bal from a class-balanced probe of the same features: synergy is 10% positives, and an
unweighted probe can score exactly 50 on features that carry it (see configs/trifeatures.py).

    python launch/trifeatures_table.py --variant=cpu --root=workdirs/table [--seeds=3] [--methods=comm,cross,cross_self]
    python launch/trifeatures_table.py --variant=cpu --res=64 --seeds=1 --override num_steps=4000 --root=workdirs/table64
    python launch/trifeatures_table.py --variant=cpu --res=64 --crop=0.5 --seeds=1 --override num_steps=4000 --root=workdirs/table64c
    python launch/trifeatures_table.py --variant=full --root=/shared/table          # GPU
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

PAPER = {  # linear probe on frozen Z, accuracy % (CoMM paper, Bimodal Trifeatures)
    "cross": {"R": 100.0, "U": 11.6, "S": 50.0},
    "cross_self": {"R": 99.7, "U": 86.9, "S": 50.0},
    "factorcl": {"R": 99.8, "U": 62.5, "S": 46.5},
    "comm": {"R": 99.9, "U": 87.8, "S": 71.9},
}
# The issue's targets for the CPU-sized variant: (task, ">=" or "<=", value in %).
TARGETS = {
    "comm": (("R", ">=", 95.0), ("U", ">=", 70.0), ("S", ">=", 65.0)),
    "cross": (("R", ">=", 95.0), ("U", "<=", 30.0), ("S", "<=", 55.0)),
    "cross_self": (("R", ">=", 95.0),),
}
NAMES = {"comm": "CoMM", "cross": "Cross (CLIP-style)", "cross_self": "Cross+Self", "factorcl": "FactorCL"}
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import runs  # noqa: E402  (puts ROOT on sys.path)


TASKS = ("R", "U", "S", "S_bal")
# The metrics each pretraining must have: unbiased runs give R and U, biased runs S and S_bal.
NEEDED = {False: ("probe/R", "probe/U1", "probe/U2"), True: ("probe/S", "probe_bal/S")}


def config_arg(variant: str, res: int | None, method: str, biased: bool, crop: float | None = None) -> str:
    """The `--config` argument of one pretraining, e.g. configs/trifeatures.py:cpu,res=64,loss=comm,bias=true."""
    tokens = ["cpu" if variant == "cpu" else "", f"res={res}" if res else "", f"crop={crop:g}" if crop is not None else "",
              f"loss={method}", "bias=true" if biased else ""]
    return "configs/trifeatures.py:" + ",".join(filter(None, tokens))


def pretrain_and_probe(args, method: str, seed: int, biased: bool) -> dict[str, float]:
    config = config_arg(args.variant, args.res, method, biased, args.crop)
    workdir = os.path.join(args.root, f"{method}-seed{seed}-{'biased' if biased else 'unbiased'}")
    return runs.evaluated_run(workdir, config, runs.seed_overrides(args, seed), NEEDED[biased])


def summarise(results: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, tuple[float, float]]]:
    table = {}
    for method, seeds in results.items():
        table[method] = {}
        for task in TASKS:
            values = [s[task] for s in seeds]
            table[method][task] = (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
    return table


def target_checks(table) -> dict[str, dict[str, bool]]:
    """method -> {"U >= 70": met?} for the issue's CPU-variant targets of the methods in `table`."""
    checks = {}
    for method, targets in TARGETS.items():
        if method in table:
            checks[method] = {f"{task} {op} {value:g}": (table[method][task][0] >= value if op == ">="
                                                         else table[method][task][0] <= value)
                              for task, op, value in targets}
    return checks


def markdown(table, seeds: dict[str, int], variant: str, checks, res: int | None = None,
             crop: float | None = None) -> str:
    size = (f" at {res} px" if res else "") + (f", strong views cropping from {crop:.0%} of the area" if crop is not None else "")
    lines = [f"Linear probe accuracy (%) on frozen representations, {variant} variant{size}, mean ± std over "
             "seeds; paper in brackets. S_bal: the same features, class-balanced probe (the paper has no such column).",
             "", "| method | seeds | R | U | S | S_bal |", "| --- | --- | --- | --- | --- | --- |"]
    for method, row in table.items():
        cells = [f"{row[t][0]:.1f} ± {row[t][1]:.1f}" + (f" ({PAPER[method][t]:.1f})" if t in PAPER[method] else "")
                 for t in TASKS]
        lines.append(f"| {NAMES[method]} | {seeds[method]} | " + " | ".join(cells) + " |")
    if variant == "cpu" and checks:
        lines += ["", "CPU-variant targets: " + "; ".join(
            f"{NAMES[m]} {name} {'met' if ok else 'MISSED'}" for m, found in checks.items() for name, ok in found.items())]
    return "\n".join(lines) + "\n"


def bar_chart(table, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    methods = list(table)
    fig, axes = plt.subplots(1, len(TASKS), figsize=(3.4 * len(TASKS), 3.2), sharey=True)
    for ax, task in zip(axes, TASKS):
        x = np.arange(len(methods))
        ax.bar(x - 0.2, [table[m][task][0] for m in methods], 0.4, yerr=[table[m][task][1] for m in methods],
               label="comm-jax")
        if all(task in PAPER[m] for m in methods):
            ax.bar(x + 0.2, [PAPER[m][task] for m in methods], 0.4, label="paper", alpha=0.6)
        ax.set_xticks(x, [NAMES[m].split(" ")[0] for m in methods])
        ax.set_title(task)
    axes[0].set_ylabel("linear probe accuracy (%)")
    axes[0].set_ylim(0, 118)    # headroom for the legend above bars that reach 100
    axes[0].legend(loc="upper center", ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def included_rows(args) -> dict[str, list[dict[str, float]]]:
    """Per-seed rows by method from the `--include` tables (the first file holding a method wins), each
    checked to be of this table's variant, size, crops and, where the file records them, overrides."""
    rows: dict[str, list[dict[str, float]]] = {}
    for path in args.include:
        with open(path) as f:
            included = json.load(f)
        setting = {"variant": (included.get("variant"), args.variant), "res": (included.get("res"), args.res),
                   "crop": (included.get("crop"), args.crop)}
        if "overrides" in included:
            setting["overrides"] = (sorted(included["overrides"]), sorted(args.override))
        for key, (found, value) in setting.items():
            if found != value:
                verb = "are" if key == "overrides" else "is"
                raise SystemExit(f"{path}: its {key} {verb} {found!r}, this table's {value!r}")
        for method, seeds in included["per_seed"].items():
            rows.setdefault(method, seeds)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=("cpu", "full"), default="cpu")
    parser.add_argument("--root", default="workdirs/trifeatures_table")
    parser.add_argument("--res", type=int, choices=(32, 64, 128, 224), default=None,
                        help="image size (default: the variant's, 32 px for cpu and 224 px for full)")
    parser.add_argument("--crop", type=float, default=None,
                        help="smallest crop area of the SimCLR views (config token crop=; default: the config's)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--methods", default="comm,cross,cross_self")
    runs.add_override_flags(parser)
    parser.add_argument("--include", action="append", default=[],
                        help="a table.json of the same setting whose per-seed rows join the table: a method it holds "
                             "and this call trains keeps those seeds and trains the rest (e.g. seeds trained on another "
                             "machine); repeatable, the first file holding a method wins")
    args = parser.parse_args()

    started = time.time()
    included = included_rows(args)
    results: dict[str, list[dict[str, float]]] = {}
    for method in args.methods.split(","):
        if method not in PAPER:
            raise SystemExit(f"unknown method {method!r}; known: {sorted(PAPER)}")
        results[method] = included.pop(method, [])[:args.seeds]
        if results[method]:
            print(f"{method}: seeds 0-{len(results[method]) - 1} from --include, training the rest", flush=True)
        for seed in range(len(results[method]), args.seeds):
            unbiased = pretrain_and_probe(args, method, seed, biased=False)
            biased = pretrain_and_probe(args, method, seed, biased=True)
            results[method].append({k: 100.0 * v for k, v in (
                ("R", unbiased["probe/R"]), ("U", (unbiased["probe/U1"] + unbiased["probe/U2"]) / 2),
                ("S", biased["probe/S"]), ("S_bal", biased["probe_bal/S"]))})
    results.update(included)
    table = summarise(results)
    checks = target_checks(table)
    os.makedirs(args.root, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=runs.ROOT, capture_output=True,
                            text=True).stdout.strip() or None
    with open(os.path.join(args.root, "table.json"), "w") as f:
        json.dump({"variant": args.variant, "res": args.res, "crop": args.crop,
                   "seeds": args.seeds, "overrides": args.override, "per_seed": results, "included": args.include,
                   "table": {m: {t: {"mean": v[0], "std": v[1]} for t, v in row.items()} for m, row in table.items()},
                   "paper": PAPER, "targets": checks, "command": " ".join(sys.argv), "commit": commit,
                   "date": datetime.datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
                   "cores": os.cpu_count(), "wall_minutes": round((time.time() - started) / 60, 1)}, f, indent=2)
    text = markdown(table, {m: len(rows) for m, rows in results.items()}, args.variant, checks, args.res, args.crop)
    with open(os.path.join(args.root, "table.md"), "w") as f:
        f.write(text)
    bar_chart(table, os.path.join(args.root, "table.png"))
    print(text)


if __name__ == "__main__":
    main()
