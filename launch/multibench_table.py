"""The paper's MultiBench table from the user's original files: CoMM, Cross, Cross+Self and CMC with 2 and
3 modalities, each pretrained with `configs/multibench.py`, evaluated on its last checkpoint (linear
probe on frozen Z fit on the train split, scored on the test split), printed beside the paper's numbers.

Columns: V&T next end-effector pose (MSE x 1e-4, lower is better), MIMIC, MOSI, UR-FUNNY, MUsTARD
(accuracy %, 2 modalities), then V&T contact prediction and UR-FUNNY with 3 modalities. A run whose work
directory already holds an evaluation of its final step is read, not trained again; a run that fails is
reported as such and the others go on.

    python launch/multibench_table.py --manual_dir=DIR [--variant=cpu] [--root=workdirs/multibench_table]
        [--datasets=mosi,mimic] [--methods=comm,cross] [--override num_steps=1000]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Column:
    title: str
    dataset: str
    modalities: int
    metric: str
    scale: float          # metric -> the table's unit


COLUMNS = (
    Column("V&T MSE x1e-4", "vision_touch", 2, "probe/regression/mse", 1e4),
    Column("MIMIC", "mimic", 2, "probe/label/accuracy", 100.0),
    Column("MOSI", "mosi", 2, "probe/label/accuracy", 100.0),
    Column("UR-FUNNY", "ur_funny", 2, "probe/label/accuracy", 100.0),
    Column("MUsTARD", "mustard", 2, "probe/label/accuracy", 100.0),
    Column("V&T CP (3 mod.)", "vision_touch", 3, "probe/label/accuracy", 100.0),
    Column("UR-FUNNY (3 mod.)", "ur_funny", 3, "probe/label/accuracy", 100.0),
)
METHODS = {"comm": "CoMM", "cross": "Cross", "cross_self": "Cross+Self", "cmc": "CMC"}
# CoMM's numbers in the paper's MultiBench table; the baselines' are left to the paper itself.
PAPER = {"comm": {"V&T MSE x1e-4": 4.5, "MIMIC": 66.4, "MOSI": 67.5, "UR-FUNNY": 63.1, "MUsTARD": 63.9,
                  "V&T CP (3 mod.)": 94.2, "UR-FUNNY (3 mod.)": 64.6}}


def config_arg(column: Column, method: str, variant: str) -> str:
    arg = f"{column.dataset},loss={method},modalities={column.modalities}"
    return arg + (",cpu" if variant == "cpu" else "")


def last_evaluation(workdir: str) -> dict | None:
    """The evaluation row of the highest step in `workdir`, or None."""
    path = os.path.join(workdir, "metrics", "eval.jsonl")
    if not os.path.exists(path):
        return None
    with open(path) as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    return max(rows, key=lambda row: row["step"]) if rows else None


def pretrain_and_probe(args, column: Column, method: str) -> float | None:
    """The column's metric of `method` in the table's unit, training and evaluating when needed."""
    workdir = os.path.join(args.root, f"{column.dataset}_{column.modalities}mod_{method}")
    flags = [f"--config=configs/multibench.py:{config_arg(column, method, args.variant)}", f"--workdir={workdir}",
             f"--config.data.manual_dir={args.manual_dir}"]
    flags += [f"--config.data.data_dir={args.data_dir}"] if args.data_dir else []
    flags += [f"--config.{override}" for override in args.override]
    row = last_evaluation(workdir)
    if row is None or column.metric not in row:
        for program in ("comm_jax.train", "comm_jax.evaluate"):
            command = [sys.executable, "-m", program, *flags]
            print("+", " ".join(command), flush=True)
            if subprocess.run(command, cwd=ROOT).returncode:
                return None
        row = last_evaluation(workdir)
    return None if row is None or column.metric not in row else row[column.metric] * column.scale


def markdown(results: dict[str, dict[str, float | None]], columns: tuple[Column, ...]) -> str:
    """Our value beside the paper's (`ours / paper`) per method and column."""
    lines = ["| method | " + " | ".join(c.title for c in columns) + " |", "| --- |" + " --- |" * len(columns)]
    for method, values in results.items():
        cells = []
        for column in columns:
            ours = values.get(column.title)
            paper = PAPER.get(method, {}).get(column.title)
            cells.append(f"{'failed' if ours is None else f'{ours:.1f}'} / {'-' if paper is None else paper}")
        lines.append(f"| {METHODS[method]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manual_dir", required=True, help="the folder holding the original MultiBench files")
    parser.add_argument("--data_dir", default=None, help="TFDS data dir (default TFDS's)")
    parser.add_argument("--variant", choices=("cpu", "full"), default="full")
    parser.add_argument("--root", default="workdirs/multibench_table")
    parser.add_argument("--datasets", default=",".join(dict.fromkeys(c.dataset for c in COLUMNS)))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--override", action="append", default=[], help="config override KEY=VALUE (repeatable)")
    args = parser.parse_args(argv)
    datasets = args.datasets.split(",")
    columns = tuple(c for c in COLUMNS if c.dataset in datasets)
    unknown = sorted(set(datasets) - {c.dataset for c in COLUMNS}) + sorted(set(args.methods.split(",")) - set(METHODS))
    if unknown:
        parser.error(f"unknown datasets or methods {unknown}")
    results = {m: {c.title: pretrain_and_probe(args, c, m) for c in columns} for m in args.methods.split(",")}
    table = markdown(results, columns)
    print("MultiBench, linear probe on frozen Z (last checkpoint, test split); ours / paper\n" + table)
    return table


if __name__ == "__main__":
    main()
