"""The MultiBench table driver: every paper number of `PAPER` is printed in its method's paper row and
column, beside the user's numbers; on tiny files in the original format it trains, evaluates the last
checkpoint and prints our number beside the paper's, and reads a finished run instead of training it again."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "launch"))

import multibench_table  # noqa: E402
from tests import multibench_fakes as fakes  # noqa: E402


def table_cells(table: str) -> dict[tuple[str, str], dict[str, str]]:
    """{(method, source): {column title: cell}} of the printed markdown table."""
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in table.splitlines()]
    header = rows[0]
    assert header[:2] == ["method", "source"] and set(rows[1]) == {"---"}
    return {(row[0], row[1]): dict(zip(header[2:], row[2:])) for row in rows[2:]}


def test_every_paper_number_is_printed_in_its_row_and_column_beside_ours():
    columns = multibench_table.COLUMNS
    titles = [c.title for c in columns]
    assert {t for numbers in multibench_table.PAPER.values() for t in numbers} <= set(titles)
    ours = {m: {t: 10.0 * i + j for j, t in enumerate(titles)} for i, m in enumerate(multibench_table.METHODS)}
    ours["cmc"]["MOSI"] = None                                          # a failed run
    cells = table_cells(multibench_table.markdown(ours, columns))
    names = multibench_table.METHODS | multibench_table.PAPER_ONLY
    for method, paper in multibench_table.PAPER.items():
        printed = cells[names[method], "paper"]
        for title in titles:
            if title in paper:
                assert float(printed[title]) == paper[title], (method, title)
            else:
                assert printed[title] == "", (method, title)           # the paper has no number there
    for method, values in ours.items():
        printed = cells[names[method], "ours"]
        for title, value in values.items():
            assert printed[title] == ("failed" if value is None else f"{value:.2f}")
    assert ("FactorCL", "ours") not in cells and ("FactorCL", "paper") in cells
    assert cells["CoMM", "paper"]["V&T MSE x1e-4"] == "4.55" and cells["CMC", "paper"]["V&T CP (3 mod.)"] == "94.1"


def test_table_trains_evaluates_and_reads_finished_runs(tmp_path, capsys):
    manual = str(tmp_path / "manual")
    fakes.write_affect(manual, "mustard")
    argv = [f"--manual_dir={manual}", f"--data_dir={tmp_path / 'tfds'}", f"--root={tmp_path / 'runs'}",
            "--variant=cpu", "--datasets=mustard", "--methods=comm",
            "--override", "num_steps=2", "--override", "batch_size=8", "--override", "evals.batch_size=8",
            "--override", "ckpt_every=2"]
    table = multibench_table.main(argv)
    cells = table_cells(table)
    assert set(cells) == {("CoMM", "ours"), ("CoMM", "paper"), ("FactorCL", "paper")}
    assert 0.0 <= float(cells["CoMM", "ours"]["MUsTARD"]) <= 100.0
    assert float(cells["CoMM", "paper"]["MUsTARD"]) == multibench_table.PAPER["comm"]["MUsTARD"]
    assert table in capsys.readouterr().out
    assert multibench_table.main(argv) == table           # read back, not retrained
    assert "+ " not in capsys.readouterr().out
