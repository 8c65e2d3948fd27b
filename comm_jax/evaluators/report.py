"""Reading `metrics/eval.jsonl` back, the summary table (rows: steps, columns: metrics) and the PNG of
each metric against the training step (one panel per evaluator)."""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Sequence

log = logging.getLogger(__name__)


def read_rows(path: str) -> list[dict[str, Any]]:
    """The rows of a jsonl file that parse and carry a "step" (a line cut short by a crash is
    skipped with a warning)."""
    rows = []
    if not os.path.exists(path):
        return rows
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s:%d is not valid JSON (an interrupted write?); ignoring it", path, number)
                continue
            if isinstance(row, dict) and "step" in row:
                rows.append(row)
    return rows


def metric_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Metric names in first-seen order."""
    return list(dict.fromkeys(k for row in rows for k in row if k != "step"))


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A fixed-width table, one line per step (sorted; a step evaluated again shows its last row), one
    column per metric ('-' where missing)."""
    if not rows:
        return "(no evaluations)"
    columns = metric_columns(rows)
    by_step = {int(r["step"]): r for r in rows}
    cell = lambda v: "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))
    body = [[str(step)] + [cell(by_step[step].get(c)) for c in columns] for step in sorted(by_step)]
    header = ["step"] + columns
    widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header))]
    fmt = lambda line: "  ".join(v.rjust(w) for v, w in zip(line, widths))
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(line) for line in body])


def plot(rows: Sequence[dict[str, Any]], path: str) -> bool:
    """Writes the metrics against the step to `path` (PNG); one panel per metric prefix (`probe`,
    `knn`, ...). Returns False, with a warning, when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed; skipping the plot %s", path)
        return False
    columns = metric_columns(rows)
    panels = list(dict.fromkeys(c.split("/")[0] for c in columns))
    if not panels:
        return False
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 3.6 * nrows), squeeze=False)
    ordered = sorted({r["step"]: r for r in rows}.values(), key=lambda r: r["step"])   # a step's last row
    for ax, panel in zip(axes.flat, panels):
        for column in (c for c in columns if c.split("/")[0] == panel):
            points = [(r["step"], r[column]) for r in ordered if isinstance(r.get(column), (int, float))]
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, marker="o", label=column.partition("/")[2] or column)
        ax.set_title(panel)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
