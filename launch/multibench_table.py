"""The paper's MultiBench table from the user's original files: CoMM, Cross, Cross+Self and CMC with 2 and
3 modalities, each pretrained with `configs/multibench.py`, evaluated on its last checkpoint (linear
probe on frozen Z fit on the train split, scored on the test split), printed beside the paper's numbers.

Columns: V&T next end-effector pose (MSE x 1e-4, lower is better), V&T contact prediction, MIMIC, MOSI,
UR-FUNNY, MUsTARD (accuracy %, 2 modalities), then V&T contact prediction and UR-FUNNY with 3 modalities.
Each method has a row of ours and a row of the paper's numbers (`PAPER`; empty where the paper has none),
and FactorCL's paper row follows. A run whose work directory already holds an evaluation of its final step
is read, not trained again; a run that fails is reported as such and the others go on.

    python launch/multibench_table.py --manual_dir=DIR [--variant=cpu] [--root=workdirs/multibench_table]
        [--datasets=mosi,mimic] [--methods=comm,cross] [--override num_steps=1000]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import runs  # noqa: E402  (puts ROOT on sys.path)


@dataclasses.dataclass(frozen=True)
class Column:
    title: str
    dataset: str
    modalities: int
    metric: str
    scale: float          # metric -> the table's unit


COLUMNS = (
    Column("V&T MSE x1e-4", "vision_touch", 2, "probe/regression/mse", 1e4),
    Column("V&T CP", "vision_touch", 2, "probe/label/accuracy", 100.0),
    Column("MIMIC", "mimic", 2, "probe/label/accuracy", 100.0),
    Column("MOSI", "mosi", 2, "probe/label/accuracy", 100.0),
    Column("UR-FUNNY", "ur_funny", 2, "probe/label/accuracy", 100.0),
    Column("MUsTARD", "mustard", 2, "probe/label/accuracy", 100.0),
    Column("V&T CP (3 mod.)", "vision_touch", 3, "probe/label/accuracy", 100.0),
    Column("UR-FUNNY (3 mod.)", "ur_funny", 3, "probe/label/accuracy", 100.0),
)
METHODS = {"comm": "CoMM", "cross": "Cross", "cross_self": "Cross+Self", "cmc": "CMC"}
# Rows of the paper that this driver prints without running them (no MultiBench config trains them).
PAPER_ONLY = {"factorcl": "FactorCL"}
# The paper's MultiBench numbers (linear probe on frozen Z; MSE x 1e-4, accuracy %), as the authors list them
# in their repository's README (github.com/Duplums/CoMM, README.md): "Experiments on MultiBench" (mean of 5
# runs, 100 epochs): V&T Reg, MIMIC, MOSI, UR-FUNNY, MUsTARD for Cross, Cross+Self, FactorCL and CoMM;
# "Experiments with 3 modalities": V&T CP and UR-FUNNY for Cross, Cross+Self and CoMM with 2 modalities, CMC
# and CoMM with 3. A cell the paper leaves empty (CMC with 2 modalities; Cross, Cross+Self and FactorCL with 3;
# FactorCL's V&T CP) has no entry.
PAPER = {
    "comm": {"V&T MSE x1e-4": 4.55, "V&T CP": 88.1, "MIMIC": 66.4, "MOSI": 67.5, "UR-FUNNY": 63.1,
             "MUsTARD": 63.9, "V&T CP (3 mod.)": 94.2, "UR-FUNNY (3 mod.)": 64.6},
    "cross": {"V&T MSE x1e-4": 33.09, "V&T CP": 84.4, "MIMIC": 66.7, "MOSI": 47.8, "UR-FUNNY": 50.1,
              "MUsTARD": 53.5},
    "cross_self": {"V&T MSE x1e-4": 7.56, "V&T CP": 86.8, "MIMIC": 65.49, "MOSI": 49.0, "UR-FUNNY": 59.9,
                   "MUsTARD": 53.9},
    "factorcl": {"V&T MSE x1e-4": 10.82, "MIMIC": 67.3, "MOSI": 51.2, "UR-FUNNY": 60.5, "MUsTARD": 55.80},
    "cmc": {"V&T CP (3 mod.)": 94.1, "UR-FUNNY (3 mod.)": 59.2},
}


def config_arg(column: Column, method: str, variant: str) -> str:
    arg = f"{column.dataset},loss={method},modalities={column.modalities}"
    return arg + (",cpu" if variant == "cpu" else "")


def pretrain_and_probe(args, column: Column, method: str) -> float | None:
    """The column's metric of `method` in the table's unit, training and evaluating when needed."""
    workdir = os.path.join(args.root, f"{column.dataset}_{column.modalities}mod_{method}")
    flags = [f"--config=configs/multibench.py:{config_arg(column, method, args.variant)}", f"--workdir={workdir}",
             f"--config.data.manual_dir={args.manual_dir}"]
    flags += [f"--config.data.data_dir={args.data_dir}"] if args.data_dir else []
    flags += [f"--config.{override}" for override in args.override]
    row = runs.last_evaluation(workdir)
    if row is None or column.metric not in row:
        if not runs.train_and_evaluate(flags):
            return None
        row = runs.last_evaluation(workdir)
    return None if row is None or column.metric not in row else row[column.metric] * column.scale


def markdown(results: dict[str, dict[str, float | None]], columns: tuple[Column, ...]) -> str:
    """Per method a row of ours (`failed` where a run failed) and a row of the paper's numbers (empty
    where the paper has none); the paper's rows of methods not run (FactorCL) follow."""
    lines = ["| method | source | " + " | ".join(c.title for c in columns) + " |",
             "| --- | --- |" + " --- |" * len(columns)]
    names = METHODS | PAPER_ONLY
    for method in (*results, *PAPER_ONLY):
        if method in results:
            cells = ["failed" if results[method].get(c.title) is None else f"{results[method][c.title]:.2f}"
                     for c in columns]
            lines.append(f"| {names[method]} | ours | " + " | ".join(cells) + " |")
        paper = PAPER.get(method, {})
        if method in results or any(c.title in paper for c in columns):
            cells = [f"{paper[c.title]:g}" if c.title in paper else "" for c in columns]
            lines.append(f"| {names[method]} | paper | " + " | ".join(cells) + " |")
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
    print("MultiBench, linear probe on frozen Z (last checkpoint, test split); ours beside the paper's\n" + table)
    return table


if __name__ == "__main__":
    main()
