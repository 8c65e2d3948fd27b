"""The information sweep on `synthetic_info`: how much of a label each method's representation keeps as
the label's information goes from shared (redundant) to modality-specific (unique) to synergistic.

For each method and seed: pretrain once with `configs/synthetic_info.py:cpu,loss=METHOD,sweep=true` and
evaluate the final checkpoint on the label of every noise-free mix (`SWEEP_MIXES`): a linear probe
(balanced accuracy) and the PID of (Z_1, Z_2; label) (`pid` evaluator: each modality's own Z, k-means
codes, exact BROJA), beside the label's ground-truth PID of (X_1, X_2; label) from the generator. The
vectors are the same in every noise-free mix and pretraining reads no label, so one pretraining per
method and seed serves every mix. Runs are reused when their work directory has results, with the
checks of launch/runs.py (a finished run trained with another config stops the driver).

With `--batch_pid` (default) the PID of (Z_1, Z_2; label) is also estimated by the continuous estimator
(`comm_jax.information.batch_estimator`) on the train split's frozen embeddings (`comm_jax.export
--embeddings`, each mix's label composed from the exported task bits), and the same estimator is run on the
inputs (X_1, X_2; label) as its own reference against the ground truth; both are cached (ROOT/RUN/batch_pid.json,
ROOT/batch_pid_inputs.json).

    python launch/info_sweep.py --root=workdirs/info_sweep [--seeds=3] [--methods=cross,cross_self,factorcl:1,comm] \\
        [--override num_steps=600] [--no-batch_pid | --batch_pid_seeds=1]

`METHOD:N` runs N seeds of that method (default `--seeds`).

Writes ROOT/table.json (every seed's metrics, the ground truth, the summary), ROOT/table.md and
ROOT/table.png (probe accuracy against the label's share of unique information per method; the PID of
each representation beside the ground truth per mix).
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

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import runs  # noqa: E402  (puts ROOT on sys.path)
from comm_jax.information import PID_PARTS  # noqa: E402
from configs.synthetic_info import SWEEP_MIXES  # noqa: E402

NAMES = {"cross": "Cross", "cross_self": "Cross+Self", "factorcl": "FactorCL", "comm": "CoMM"}
SHORT = {"cross": "Cr", "cross_self": "CS", "factorcl": "FC", "comm": "Co"}     # bar labels of the chart
# The single-bit tasks and the metric holding each one's probe (the mixes redundant, unique1 and synergy
# label those very bits).
TASK_PROBES = {"R": "probe_redundant/label", "U1": "probe_unique1/label", "U2": "probe/U2",
               "S": "probe_synergy/label"}


def config_arg(method: str) -> str:
    """The `--config` of one pretraining, e.g. configs/synthetic_info.py:cpu,loss=comm,sweep=true."""
    return f"configs/synthetic_info.py:cpu,loss={method},sweep=true"


def needed() -> list[str]:
    """The metrics a run's final evaluation must have for the sweep."""
    keys = ["probe/U2"]
    for mix in SWEEP_MIXES:
        keys += [f"probe_{mix}/label"] + [f"pid_{mix}/label/{p}" for p in PID_PARTS]
    return keys


def ground_truth() -> dict[str, dict]:
    """mix -> {"pid": {R, U1, U2, S} bits of (X1, X2; label), "classes", "unique_share", "synergy_share"}."""
    from input_pipeline import synthetic_info

    out = {}
    for mix in SWEEP_MIXES:
        tasks = synthetic_info.LABELS[mix]
        pid = synthetic_info.ground_truth_pid(tasks)
        total = sum(pid.values())
        out[mix] = {"pid": pid, "classes": 2 ** len(tasks),
                    "unique_share": round((pid["U1"] + pid["U2"]) / total, 6),
                    "synergy_share": round(pid["S"] / total, 6)}
    return out


def pretrain_and_evaluate(args, method: str, seed: int) -> dict[str, float]:
    """The final checkpoint's sweep metrics of one pretraining, training and evaluating it when needed."""
    config = config_arg(method)
    workdir = os.path.join(args.root, f"{method}-seed{seed}")
    keys = needed()
    row = runs.evaluated_run(workdir, config, runs.seed_overrides(args, seed), keys)
    return {k: row[k] for k in keys}


# The continuous estimator's settings for representations and inputs (10,000 rows: 5,000 estimate).
BATCH_SETTINGS = dict(classifier_steps=1500, align_steps=200)


def mix_label(bits: dict[str, np.ndarray], mix: str) -> np.ndarray:
    """The label of `mix` from the task bits {task: [n]} (first task the highest bit, as the generator)."""
    from input_pipeline import synthetic_info

    label = np.zeros_like(bits[synthetic_info.LABELS[mix][0]])
    for task in synthetic_info.LABELS[mix]:
        label = 2 * label + bits[task]
    return label


def batch_pids(x1: np.ndarray, x2: np.ndarray, bits: dict[str, np.ndarray], seed: int) -> dict[str, dict]:
    """mix -> {"parts", "stderr"} of the continuous estimator on (x1, x2; label of the mix)."""
    from comm_jax.information.batch_estimator import BatchPIDSettings, batch_pid
    from input_pipeline import synthetic_info

    out = {}
    for mix in SWEEP_MIXES:
        estimate = batch_pid(x1, x2, mix_label(bits, mix), classes=2 ** len(synthetic_info.LABELS[mix]),
                             settings=BatchPIDSettings(**BATCH_SETTINGS), seed=seed)
        out[mix] = {"parts": estimate.parts, "stderr": estimate.stderr}
    return out


def cached(path: str, compute) -> dict:
    """The JSON at `path` if it was written with these BATCH_SETTINGS, else compute() written there."""
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        if saved.get("settings") == BATCH_SETTINGS:
            return saved["pid"]
    result = compute()
    with open(path, "w") as f:
        json.dump({"settings": BATCH_SETTINGS, "pid": result}, f, indent=2)
    return result


def export_embeddings(workdir: str, config: str, overrides: list[str]) -> str:
    """The train split's frozen embeddings of the run's final checkpoint (exported once); returns the .npz path."""
    out = os.path.join(workdir, "export")
    path = os.path.join(out, "embeddings_train.npz")
    if not os.path.exists(path):
        runs.run([sys.executable, "-m", "comm_jax.export", f"--workdir={workdir}", f"--output={out}", "--embeddings",
                  "--split=train", f"--config={config}", *overrides])
    return path


def representation_pid(args, method: str, seed: int) -> dict[str, dict]:
    """mix -> continuous-estimator PID of (Z_1, Z_2; label) of a finished run (cached in its work directory)."""
    workdir = os.path.join(args.root, f"{method}-seed{seed}")
    overrides = [f"--config.seed={seed}"] + [f"--config.{o}" for o in args.override]

    def compute():
        arrays = np.load(export_embeddings(workdir, config_arg(method), overrides))
        modalities = sorted(k for k in arrays.files if k.startswith("z_"))
        bits = {task: arrays[f"label_{task}"] for task in ("redundant", "unique1", "unique2", "synergy")}
        return batch_pids(arrays[modalities[0]], arrays[modalities[1]], bits, seed)

    return cached(os.path.join(workdir, "batch_pid.json"), compute)


def input_pid(root: str) -> dict[str, dict]:
    """mix -> continuous-estimator PID of the inputs (X_1, X_2; label), train split (cached in ROOT)."""
    def compute():
        from input_pipeline import synthetic_info
        arrays = synthetic_info.generate_split("train", synthetic_info.LABELS[SWEEP_MIXES[0]], 0.0)
        bits = {task: arrays[task] for task in synthetic_info.TASKS}
        return batch_pids(arrays["x1"], arrays["x2"], bits, seed=0)

    return cached(os.path.join(root, "batch_pid_inputs.json"), compute)


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(per_seed: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, dict]]:
    """method -> mix -> {"accuracy": (mean, std), "pid": {part: (mean, std)}} over seeds; plus
    method -> "tasks" -> {task: (mean, std)} of the single-bit probes."""
    table = {}
    for method, rows in per_seed.items():
        table[method] = {mix: {"accuracy": mean_std([r[f"probe_{mix}/label"] for r in rows]),
                               "pid": {p: mean_std([r[f"pid_{mix}/label/{p}"] for r in rows]) for p in PID_PARTS}}
                         for mix in SWEEP_MIXES}
        table[method]["tasks"] = {t: mean_std([r[key] for r in rows]) for t, key in TASK_PROBES.items()}
        estimated = [r for r in rows if "batch_pid" in r]
        if estimated:
            for mix in SWEEP_MIXES:
                table[method][mix]["batch_pid"] = {p: mean_std([r["batch_pid"][mix]["parts"][p] for r in estimated])
                                                   for p in PID_PARTS}
    return table


def above_chance(accuracy: float, classes: int) -> float:
    """Balanced accuracy rescaled so chance (1 / classes) is 0 and a perfect probe 1."""
    return (accuracy - 1.0 / classes) / (1.0 - 1.0 / classes)


def markdown(table, truth, seeds: dict[str, int], steps: str, inputs: dict | None = None,
             batch_seeds: int | None = None) -> str:
    methods = list(table)
    lines = [f"Linear probe balanced accuracy (%) of each mix's label on frozen representations, synthetic_info, CPU "
             f"variant ({steps} steps), mean ± std over the seeds in brackets; chance is 100 / classes. Ground truth: "
             "the label's PID of (X1, X2; label) in bits.", "",
             "| mix (label) | classes | truth R / U1 / U2 / S | unique share | "
             + " | ".join(f"{NAMES[m]} ({seeds[m]})" for m in methods) + " |",
             "|" + " --- |" * (4 + len(methods))]
    for mix in SWEEP_MIXES:
        t = truth[mix]
        cells = [f"{100 * table[m][mix]['accuracy'][0]:.1f} ± {100 * table[m][mix]['accuracy'][1]:.1f}" for m in methods]
        lines.append(f"| {mix} | {t['classes']} | " + " / ".join(f"{t['pid'][p]:.2f}" for p in PID_PARTS)
                     + f" | {t['unique_share']:.2f} | " + " | ".join(cells) + " |")
    lines += ["", "Single-bit tasks, probe balanced accuracy (%): R = shared bit, U1 / U2 = a bit of x1's / x2's unique "
              "block, S = xor of one bit of each unique block.", "",
              "| method | R | U1 | U2 | S |", "| --- | --- | --- | --- | --- |"]
    for m in methods:
        lines.append(f"| {NAMES[m]} | " + " | ".join(
            f"{100 * table[m]['tasks'][t][0]:.1f} ± {100 * table[m]['tasks'][t][1]:.1f}" for t in TASK_PROBES) + " |")
    lines += ["", "PID of (Z1, Z2; label) in bits (each modality's own Z, `pid` evaluator: k-means codes, exact BROJA), "
              "mean over seeds, R / U1 / U2 / S; the truth is the PID of (X1, X2; label).", "",
              "| mix | truth | " + " | ".join(NAMES[m] for m in methods) + " |", "|" + " --- |" * (2 + len(methods))]
    for mix in SWEEP_MIXES:
        cells = [" / ".join(f"{table[m][mix]['pid'][p][0]:.2f}" for p in PID_PARTS) for m in methods]
        lines.append(f"| {mix} | " + " / ".join(f"{truth[mix]['pid'][p]:.2f}" for p in PID_PARTS) + " | "
                     + " | ".join(cells) + " |")
    batch = [m for m in methods if "batch_pid" in table[m][SWEEP_MIXES[0]]]
    if batch and inputs:
        lines += ["", "PID of (Z1, Z2; label) in bits by the continuous estimator (`batch_estimator`: learned "
                  "conditionals, Sinkhorn-coupled q per batch of 256) on the train split's embeddings, mean over "
                  + (f"the first {batch_seeds} seed(s)" if batch_seeds else "seeds") + ", "
                  "R / U1 / U2 / S; `inputs`: the same estimator on (X1, X2; label), its own error against the truth.", "",
                  "| mix | truth | inputs | " + " | ".join(NAMES[m] for m in batch) + " |", "|" + " --- |" * (3 + len(batch))]
        for mix in SWEEP_MIXES:
            cells = [" / ".join(f"{table[m][mix]['batch_pid'][p][0]:.2f}" for p in PID_PARTS) for m in batch]
            lines.append(f"| {mix} | " + " / ".join(f"{truth[mix]['pid'][p]:.2f}" for p in PID_PARTS) + " | "
                         + " / ".join(f"{inputs[mix]['parts'][p]:.2f}" for p in PID_PARTS) + " | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# Mixes along which the chart draws lines: the label without synergy, and with one synergistic bit.
FAMILIES = (("redundant", "redundant_unique1", "unique1"),
            ("redundant_synergy", "redundant_unique1_synergy", "unique1_synergy"))


def chart(table, truth, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    methods = list(table)
    colours = {m: plt.get_cmap("tab10")(i) for i, m in enumerate(methods)}
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 4.4), gridspec_kw={"width_ratios": [1, 2.2]})
    for m in methods:
        for family, style in zip(FAMILIES, ("-", "--")):
            x = [truth[mix]["unique_share"] for mix in family]
            y = [above_chance(table[m][mix]["accuracy"][0], truth[mix]["classes"]) for mix in family]
            left.plot(x, y, style, marker="o", color=colours[m], label=NAMES[m] if style == "-" else None)
        left.plot([truth["synergy"]["unique_share"]],
                  [above_chance(table[m]["synergy"]["accuracy"][0], truth["synergy"]["classes"])],
                  marker="x", ls="", color=colours[m])
    left.set_xlabel("share of the label's information that is unique (ground truth)")
    left.set_ylabel("probe accuracy above chance\n(0 = chance, 1 = perfect)")
    left.set_title("solid: no synergy in the label; dashed: plus one\nsynergistic bit; x: synergy only", fontsize=9)
    left.set_ylim(-0.05, 1.05)
    left.legend(frameon=False, fontsize=8)

    # The continuous estimator's PIDs where the table has them, else the clustered evaluator's.
    key = "batch_pid" if all("batch_pid" in table[m][SWEEP_MIXES[0]] for m in methods) else "pid"
    columns = ["truth"] + methods
    width = 0.8 / len(columns)
    part_colours = {"R": "#4c72b0", "U1": "#dd8452", "U2": "#c44e52", "S": "#55a868"}
    for i, column in enumerate(columns):
        x = np.arange(len(SWEEP_MIXES)) + (i - (len(columns) - 1) / 2) * width
        bottom = np.zeros(len(SWEEP_MIXES))
        for part in PID_PARTS:
            values = np.array([truth[mix]["pid"][part] if column == "truth" else table[column][mix][key][part][0]
                               for mix in SWEEP_MIXES]).clip(min=0)     # a negative part is an estimation error
            right.bar(x, values, width * 0.95, bottom=bottom, color=part_colours[part],
                      label=part if i == 0 else None, edgecolor="black" if column == "truth" else "none", lw=0.5)
            bottom += values
        for xi in x:
            right.text(xi, -0.08, "T" if column == "truth" else SHORT[column], ha="center", va="top", fontsize=6)
    right.set_xticks(np.arange(len(SWEEP_MIXES)), [m.replace("_", "\n") for m in SWEEP_MIXES], fontsize=8)
    right.tick_params(axis="x", pad=14)
    right.set_ylabel("bits")
    estimator = "continuous estimator" if key == "batch_pid" else "k-means codes + BROJA"
    right.set_title(f"PID of (Z1, Z2; label) per method ({estimator}, mean over seeds) beside the truth T of "
                    "(X1, X2; label)\n" + ", ".join(f"{SHORT[m]} {NAMES[m]}" for m in methods)
                    + "; negative estimates drawn as 0", fontsize=9)
    right.legend(frameon=False, ncol=4, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="workdirs/info_sweep")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--methods", default="cross,cross_self,factorcl,comm", help="METHOD[:SEEDS],...")
    runs.add_override_flags(parser)
    parser.add_argument("--batch_pid", action=argparse.BooleanOptionalAction, default=True,
                        help="also the continuous estimator's PID of each representation and of the inputs")
    parser.add_argument("--batch_pid_seeds", type=int, default=None,
                        help="the continuous estimator on the first N seeds of each method only (default: all)")
    args = parser.parse_args()

    started = time.time()
    seeds = {}
    for item in args.methods.split(","):
        method, _, count = item.partition(":")
        if method not in NAMES:
            raise SystemExit(f"unknown method {method!r}; known: {sorted(NAMES)}")
        seeds[method] = int(count) if count else args.seeds
    per_seed: dict[str, list[dict]] = {m: [] for m in seeds}
    # Seeds outermost: an interrupted sweep has every method at about the same number of seeds.
    for seed in range(max(seeds.values())):
        for method in seeds:
            if seed < seeds[method]:
                per_seed[method].append(pretrain_and_evaluate(args, method, seed))
    inputs = None
    if args.batch_pid:
        for method, rows in per_seed.items():
            for seed, row in enumerate(rows[:args.batch_pid_seeds]):
                row["batch_pid"] = representation_pid(args, method, seed)
        inputs = input_pid(args.root)
    table = summarise(per_seed)
    truth = ground_truth()
    steps = next((o.split("=", 1)[1] for o in args.override if o.startswith("num_steps=")), "600")
    os.makedirs(args.root, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=runs.ROOT, capture_output=True,
                            text=True).stdout.strip() or None

    def cell(value):
        return {"mean": value[0], "std": value[1]}

    summary = {m: {k: ({"mean": v["accuracy"][0], "std": v["accuracy"][1],
                        **{key: {p: cell(x) for p, x in v[key].items()} for key in ("pid", "batch_pid") if key in v}}
                       if k != "tasks" else {t: cell(x) for t, x in v.items()})
                   for k, v in row.items()} for m, row in table.items()}
    with open(os.path.join(args.root, "table.json"), "w") as f:
        json.dump({"seeds": seeds, "mixes": list(SWEEP_MIXES), "truth": truth, "batch_pid_inputs": inputs,
                   "batch_settings": BATCH_SETTINGS if args.batch_pid else None,
                   "batch_pid_seeds": args.batch_pid_seeds if args.batch_pid else None, "per_seed": per_seed,
                   "table": summary, "command": " ".join(sys.argv), "commit": commit, "overrides": args.override,
                   "date": datetime.datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
                   "cores": os.cpu_count(), "wall_minutes": round((time.time() - started) / 60, 1)}, f, indent=2)
    text = markdown(table, truth, seeds, steps, inputs, args.batch_pid_seeds)
    with open(os.path.join(args.root, "table.md"), "w") as f:
        f.write(text)
    chart(table, truth, os.path.join(args.root, "table.png"))
    print(text)


if __name__ == "__main__":
    main()
