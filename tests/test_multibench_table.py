"""The MultiBench table driver on tiny files in the original format: it trains, evaluates the last
checkpoint and prints our number beside the paper's, and reads a finished run instead of training it again."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "launch"))

import multibench_table  # noqa: E402
from tests import multibench_fakes as fakes  # noqa: E402


def test_table_trains_evaluates_and_reads_finished_runs(tmp_path, capsys):
    manual = str(tmp_path / "manual")
    fakes.write_affect(manual, "mustard")
    argv = [f"--manual_dir={manual}", f"--data_dir={tmp_path / 'tfds'}", f"--root={tmp_path / 'runs'}",
            "--variant=cpu", "--datasets=mustard", "--methods=comm",
            "--override", "num_steps=2", "--override", "batch_size=8", "--override", "evals.batch_size=8",
            "--override", "ckpt_every=2"]
    table = multibench_table.main(argv)
    row = next(line for line in table.splitlines() if line.startswith("| CoMM"))
    ours, paper = row.split("|")[2].split("/")
    assert 0.0 <= float(ours) <= 100.0 and float(paper) == 63.9
    capsys.readouterr()
    assert multibench_table.main(argv) == table           # read back, not retrained
    assert "+ " not in capsys.readouterr().out
