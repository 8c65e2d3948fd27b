"""OOD-detection table on the shifted Bimodal Trifeatures: does keeping modality-specific information
(CoMM) detect shifts better than cross-modal alignment (Cross, CLIP-style) or Cross+Self?

For each method and seed: pretrain with `ood=true` on in-distribution pairs (unbiased; and biased by
the texture->colour mapping M for the synergy shift), evaluate the final checkpoint with the `ood`
evaluator, and write the AUROC of one score (`--score`, default knn) per shift kind on the fused Z
(`z`), on image 1's and image 2's own Z for the shifts of image 1 (which modality the score blames),
and failure prediction on the ID test split. Runs are reused when their work directory has results
(the same checks as launch/trifeatures_table.py, in launch/runs.py).

    python launch/ood_table.py --root=workdirs/ood_table [--res=64] [--crop=0.5] [--seeds=1] [--methods=comm,cross,cross_self] \\
        [--score=knn] [--override num_steps=1500]

Writes ROOT/table.json (every `ood/` metric of every run), ROOT/table.md and ROOT/table.png; with
`--finished_only`, the table of the runs evaluated so far, training nothing.
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

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import runs  # noqa: E402  (puts ROOT on sys.path)
from configs.trifeatures import BIASED_SHIFTS, UNBIASED_SHIFTS  # noqa: E402

NAMES = {"comm": "CoMM", "cross": "Cross (CLIP-style)", "cross_self": "Cross+Self"}
FEATURES = ("z", "z_image_1", "z_image_2")


def config_arg(res: int, method: str, biased: bool, crop: float | None = None) -> str:
    """The `--config` of one pretraining, e.g. configs/trifeatures.py:cpu,res=64,crop=0.5,loss=comm,ood=true,bias=true."""
    return (f"configs/trifeatures.py:cpu,res={res}" + (f",crop={crop:g}" if crop is not None else "")
            + f",loss={method},ood=true" + (",bias=true" if biased else ""))


def needed(score: str, biased: bool) -> list[str]:
    return [f"ood/{shift}/{score}/z/auroc" for shift in (BIASED_SHIFTS if biased else UNBIASED_SHIFTS)]


def pretrain_and_score(args, method: str, seed: int, biased: bool) -> dict[str, float]:
    """The final checkpoint's `ood/` metrics of one pretraining, training and evaluating it when needed."""
    config = config_arg(args.res, method, biased, args.crop)
    workdir = os.path.join(args.root, f"{method}-seed{seed}-{'biased' if biased else 'unbiased'}")
    # With --finished_only, the table of what is done: nothing trained or evaluated.
    row = runs.evaluated_run(workdir, config, runs.seed_overrides(args, seed), needed(args.score, biased),
                             train=not getattr(args, "finished_only", False))
    # A biased pretraining serves the synergy shift only (its failure prediction is on biased test pairs).
    shifts = BIASED_SHIFTS if biased else (*UNBIASED_SHIFTS, "failure")
    return {k: v for k, v in (row or {}).items() if k.startswith("ood/") and k.split("/")[1] in shifts}


def columns(score: str) -> list[tuple[str, str]]:
    """(column name, metric key) of the table: each shift on z, image-1 shifts on each image's Z, failure."""
    cols = [(shift, f"ood/{shift}/{score}/z/auroc") for shift in UNBIASED_SHIFTS + BIASED_SHIFTS]
    cols += [(f"{shift} @{feature}", f"ood/{shift}/{score}/{feature}/auroc")
             for shift in UNBIASED_SHIFTS if shift.endswith("_1") for feature in FEATURES[1:]]
    cols += [("failure AUROC", f"ood/failure/{score}/z/auroc"), ("failure AURC", f"ood/failure/{score}/z/aurc")]
    return cols


def summarise(per_seed: dict[str, list[dict[str, float]]], score: str) -> dict[str, dict[str, tuple[float, float, int]]]:
    """method -> column -> (mean, std, number of seeds) over the seeds that have the column.

    Every seed has every column once its runs are evaluated; with `--finished_only` a seed whose biased
    run is not done yet has no `synergy`, and that cell is the mean of the seeds that have it."""
    table = {}
    for method, rows in per_seed.items():
        table[method] = {}
        for name, key in columns(score):
            values = [row[key] for row in rows if key in row]
            if values:
                table[method][name] = (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0,
                                       len(values))
    return table


def cell(mean: float, std: float, n: int, seeds: int) -> str:
    """`mean ± std` over n > 1 seeds, the value alone for one seed, `(n=k)` where fewer than the row's seeds."""
    text = f"{mean:.3f} ± {std:.3f}" if n > 1 else f"{mean:.3f}"
    return text + (f" (n={n})" if n < seeds else "")


def markdown(table, score: str, res: int, crop: float | None = None) -> str:
    names = [name for name, _ in columns(score) if any(name in row for row in table.values())]
    lines = [f"AUROC of `{score}` (ID test vs each shift; 0.5 is chance), Bimodal Trifeatures at {res} px"
             + (f" (SimCLR crops from {crop:.0%} of the area)" if crop is not None else "") + ", CPU "
             "variant, mean ± std over the seeds (a single value: one seed; `(n=k)`: the cell has k of the row's "
             "seeds). `@z_image_k`: the score on image k's own Z; `synergy` after pretraining on M-biased pairs; "
             "failure: predicting the texture-1 probe's errors (AURC: lower is better).", "",
             "| method | seeds | " + " | ".join(names) + " |", "|" + " --- |" * (len(names) + 2)]
    for method, row in table.items():
        seeds = max((v[2] for v in row.values()), default=0)
        cells = [cell(*row[n], seeds) if n in row else "-" for n in names]
        lines.append(f"| {NAMES.get(method, method)} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def best_scores(per_seed: dict[str, list[dict[str, float]]], feature: str = "z") -> dict[str, dict[str, tuple[str, float]]]:
    """method -> shift -> (the score with the highest mean AUROC on `feature` over the seeds that have it, that AUROC)."""
    best = {}
    for method, rows in per_seed.items():
        means: dict[tuple[str, str], list[float]] = {}
        for row in rows:
            for key, value in row.items():
                parts = key.split("/")
                if len(parts) == 5 and parts[3] == feature and parts[4] == "auroc" and parts[1] != "failure":
                    means.setdefault((parts[1], parts[2]), []).append(value)
        best[method] = {}
        for (shift, score), values in means.items():
            mean = statistics.mean(values)
            if shift not in best[method] or mean > best[method][shift][1]:
                best[method][shift] = (score, mean)
    return best


def best_markdown(best) -> str:
    shifts = [s for s in UNBIASED_SHIFTS + BIASED_SHIFTS if any(s in row for row in best.values())]
    lines = ["The best score per shift on the fused Z (highest mean AUROC among every score the `ood` evaluator "
             "computes on Z; a post-hoc choice, so an upper bound on what one fixed score gives):", "",
             "| method | " + " | ".join(shifts) + " |", "|" + " --- |" * (len(shifts) + 1)]
    for method, row in best.items():
        cells = [f"{row[s][1]:.3f} ({row[s][0]})" if s in row else "-" for s in shifts]
        lines.append(f"| {NAMES.get(method, method)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def bar_chart(table, score: str, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    shifts = [s for s in UNBIASED_SHIFTS + BIASED_SHIFTS if any(s in row for row in table.values())]
    fig, ax = plt.subplots(figsize=(1.1 * len(shifts) + 2, 3.4))
    width = 0.8 / max(len(table), 1)
    for i, (method, row) in enumerate(table.items()):
        x = np.arange(len(shifts)) + (i - (len(table) - 1) / 2) * width
        ax.bar(x, [row.get(s, (np.nan, 0))[0] for s in shifts], width, yerr=[row.get(s, (0, 0))[1] for s in shifts],
               label=NAMES.get(method, method))
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(np.arange(len(shifts)), shifts, rotation=30, ha="right")
    ax.set_ylabel(f"AUROC ({score}, fused Z)")
    ax.set_ylim(0, 1.05)
    ax.legend(frameon=False, ncol=len(table), loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="workdirs/ood_table")
    parser.add_argument("--res", type=int, choices=(32, 64), default=64)
    parser.add_argument("--crop", type=float, default=None,
                        help="smallest crop area of the SimCLR views (the config's `crop=`; default the config's)")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--methods", default="comm,cross,cross_self")
    parser.add_argument("--score", default="knn", help="the score of the table (every score is kept in the JSON)")
    runs.add_override_flags(parser)
    parser.add_argument("--finished_only", action="store_true",
                        help="write the table of the runs already evaluated (each cell over the seeds that have it); "
                             "train and evaluate nothing")
    args = parser.parse_args()

    started = time.time()
    per_seed: dict[str, list[dict[str, float]]] = {}
    for method in args.methods.split(","):
        if method not in NAMES:
            raise SystemExit(f"unknown method {method!r}; known: {sorted(NAMES)}")
        per_seed[method] = [{**pretrain_and_score(args, method, seed, biased=False),
                             **pretrain_and_score(args, method, seed, biased=True)} for seed in range(args.seeds)]
        if args.finished_only:
            per_seed[method] = [row for row in per_seed[method] if row]
            if not per_seed[method]:
                del per_seed[method]
    table = summarise(per_seed, args.score)
    os.makedirs(args.root, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=runs.ROOT, capture_output=True,
                            text=True).stdout.strip() or None
    with open(os.path.join(args.root, "table.json"), "w") as f:
        json.dump({"res": args.res, "crop": args.crop, "seeds": args.seeds, "score": args.score, "per_seed": per_seed,
                   "table": {m: {c: {"mean": v[0], "std": v[1], "seeds": v[2]} for c, v in row.items()} for m, row in table.items()},
                   "best_score_on_z": {m: {s: {"score": v[0], "auroc": v[1]} for s, v in row.items()}
                                       for m, row in best_scores(per_seed).items()},
                   "command": " ".join(sys.argv), "commit": commit,
                   "date": datetime.datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
                   "cores": os.cpu_count(), "wall_minutes": round((time.time() - started) / 60, 1)}, f, indent=2)
    best = best_scores(per_seed)
    text = markdown(table, args.score, args.res, args.crop) + "\n" + best_markdown(best)
    with open(os.path.join(args.root, "table.md"), "w") as f:
        f.write(text)
    bar_chart(table, args.score, os.path.join(args.root, "table.png"))
    print(text)


if __name__ == "__main__":
    main()
