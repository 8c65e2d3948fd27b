"""The watcher-overhead benchmark's arithmetic (launch/watcher_overhead.py): the training speed read from a
train.jsonl, and the slowdown of each watcher variant against training alone, on hand-made rows."""

import json

import pytest

from tests.launch_fakes import load_driver


@pytest.fixture
def bench():
    return load_driver("watcher_overhead")


def test_training_speed_skips_the_first_interval_and_weights_by_steps(bench, tmp_path):
    (tmp_path / "metrics").mkdir()
    rows = [{"step": 10, "step_time": 9.0}, {"step": 20, "step_time": 0.2}, {"step": 50, "step_time": 0.4}]
    (tmp_path / "metrics" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    speed = bench.training_speed(str(tmp_path))
    assert speed["steps_timed"] == 40
    assert speed["seconds_per_step"] == pytest.approx((10 * 0.2 + 30 * 0.4) / 40)


def test_slowdown_is_against_the_median_of_training_alone(bench):
    runs = [{"processes": 1, "watcher": None, "seconds_per_step": s, "checkpoints_evaluated_during_training": 0}
            for s in (0.10, 0.30, 0.20)]
    runs += [{"processes": 1, "watcher": "nice10", "seconds_per_step": s, "checkpoints_evaluated_during_training": 2}
             for s in (0.22, 0.21, 0.26)]
    rows = bench.summarise(runs)
    assert [r["watcher"] for r in rows] == ["none", "nice10"]
    assert rows[0]["slowdown_percent"] == pytest.approx(0.0)
    assert rows[1]["ms_per_step"] == pytest.approx(220.0)
    assert rows[1]["slowdown_percent"] == pytest.approx(10.0)
    assert "| 1 | nice10 | 220 | +10.0% | 2 |" in bench.markdown(rows, {
        "steps": 9, "ckpt_every": 3, "host_cores": 2, "load_at_start": "0", "date": "d", "repeats": 3})
