"""The OOD table driver (launch/ood_table.py): the pretrainings it runs per method and seed, the runs it
reuses, and the table it writes, checked with a fake trainer and evaluator that write the files the
real ones write (the real evaluator is run on a tiny run in test_ood_evaluator.py)."""

import json
import sys

import pytest

from comm_jax.checkpoints import mark_complete
from configs import trifeatures
from tests.launch_fakes import fake_runner, load_driver


@pytest.fixture
def driver():
    return load_driver("ood_table")


def fake_metrics(method: str, seed: int, biased: bool) -> dict[str, float]:
    value = {"comm": 0.8, "cross": 0.6}[method] + 0.01 * seed
    shifts = ("synergy",) if biased else trifeatures.UNBIASED_SHIFTS
    row = {f"ood/{s}/knn/{f}/auroc": value for s in shifts for f in ("z", "z_image_1", "z_image_2")}
    # Failure prediction on the biased pretraining's own test pairs: not the table's (in-distribution) column.
    row.update({"ood/failure/knn/z/auroc": 0.99 if biased else value - 0.1, "ood/failure/knn/z/aurc": 0.2,
                "probe/R": 0.9})
    return row


def test_table_from_fake_runs(driver, tmp_path, monkeypatch):
    fake_run, calls = fake_runner(fake_metrics)
    monkeypatch.setattr(driver.runs, "run", fake_run)
    monkeypatch.setattr(driver.runs, "check_same_run", lambda *a: None)   # fake runs have no checkpoints
    monkeypatch.setattr(driver, "bar_chart", lambda table, score, path: open(path, "w").close())
    monkeypatch.setattr(sys, "argv", ["ood_table.py", f"--root={tmp_path}", "--seeds=2", "--methods=comm,cross",
                                      "--override", "num_steps=30"])
    driver.main()

    trains = [c for c in calls if c[2] == "comm_jax.train"]
    assert len(trains) == 8 and len([c for c in calls if c[2] == "comm_jax.evaluate"]) == 8
    configs = {a.split("=", 1)[1] for c in trains for a in c if a.startswith("--config=")}
    assert configs == {f"configs/trifeatures.py:cpu,res=64,loss={m},ood=true{b}"
                       for m in ("comm", "cross") for b in ("", ",bias=true")}
    out = json.loads((tmp_path / "table.json").read_text())
    assert out["table"]["comm"]["texture_1"]["mean"] == pytest.approx(0.805)
    assert out["table"]["cross"]["synergy"]["std"] == pytest.approx(0.00707, abs=1e-4)
    assert out["table"]["comm"]["texture_1 @z_image_2"]["mean"] == pytest.approx(0.805)
    assert out["table"]["comm"]["failure AUROC"]["mean"] == pytest.approx(0.705)     # the unbiased run's
    assert "probe/R" not in out["per_seed"]["comm"][0]
    text = (tmp_path / "table.md").read_text()
    assert "| CoMM | 2 | 0.805 ± 0.007 |" in text and "64 px" in text
    assert not any("(n=" in line for line in text.splitlines() if line.startswith("| C"))   # every seed has every cell

    calls.clear()
    driver.main()             # every run done and evaluated: nothing runs again
    assert calls == []



def test_crop_reaches_the_pretraining_config(driver):
    arg = driver.config_arg(64, "comm", True, crop=0.5)
    config = trifeatures.get_config(arg.split(":", 1)[1])
    default = trifeatures.get_config(driver.config_arg(64, "comm", True).split(":", 1)[1])
    assert "crop=0.5" in arg and "crop" not in driver.config_arg(64, "comm", True)
    assert config.data.views != default.data.views     # the SimCLR views' crop scale follows the flag
    assert config.evals.evaluators.ood == default.evals.evaluators.ood


def test_finished_only_tables_what_is_evaluated_and_runs_nothing(driver, tmp_path, monkeypatch):
    for method, seed, biased in (("comm", 0, False), ("comm", 0, True), ("comm", 1, False), ("cross", 0, False)):
        workdir = tmp_path / f"{method}-seed{seed}-{'biased' if biased else 'unbiased'}"
        (workdir / "metrics").mkdir(parents=True)
        mark_complete(str(workdir), 30)
        (workdir / "metrics" / "eval.jsonl").write_text(
            json.dumps({"step": 30, **fake_metrics(method, seed, biased)}) + "\n")
    monkeypatch.setattr(driver.runs, "run", lambda cmd: pytest.fail(f"ran {cmd}"))
    monkeypatch.setattr(driver.runs, "check_same_run", lambda *a: None)
    monkeypatch.setattr(driver, "bar_chart", lambda table, score, path: open(path, "w").close())
    monkeypatch.setattr(sys, "argv", ["ood_table.py", f"--root={tmp_path}", "--methods=comm,cross,cross_self",
                                      "--seeds=2", "--finished_only"])
    driver.main()
    table = json.loads((tmp_path / "table.json").read_text())["table"]
    assert set(table) == {"comm", "cross"}                       # cross_self has no finished run
    assert "synergy" not in table["cross"]
    # Each cell is over the seeds that have it: seed 1's biased run is not done, so synergy has seed 0 only.
    assert table["comm"]["texture_1"] == {"mean": pytest.approx(0.805), "std": pytest.approx(0.00707, abs=1e-4),
                                          "seeds": 2}
    assert table["comm"]["synergy"] == {"mean": pytest.approx(0.8), "std": 0.0, "seeds": 1}
    assert table["cross"]["texture_1"] == {"mean": pytest.approx(0.6), "std": 0.0, "seeds": 1}
    text = (tmp_path / "table.md").read_text()
    comm_line = next(line for line in text.splitlines() if line.startswith("| CoMM | 2 |"))
    assert "| 0.805 ± 0.007 |" in comm_line and "| 0.800 (n=1) |" in comm_line
    assert "| Cross (CLIP-style) | 1 | 0.600 |" in text


def test_best_score_per_shift_is_the_highest_mean_auroc_on_z(driver):
    per_seed = {"comm": [{"ood/blank_1/knn/z/auroc": 0.9, "ood/blank_1/msp/z/auroc": 0.2,
                          "ood/blank_1/msp/z_image_1/auroc": 1.0, "ood/failure/msp/z/auroc": 0.99},
                         {"ood/blank_1/knn/z/auroc": 0.7, "ood/blank_1/msp/z/auroc": 0.95,
                          "ood/blank_1/msp/z_image_1/auroc": 1.0, "ood/failure/msp/z/auroc": 0.99}]}
    best = driver.best_scores(per_seed)
    assert best == {"comm": {"blank_1": ("knn", pytest.approx(0.8))}}     # 0.8 > (0.2 + 0.95) / 2
    assert "| CoMM | 0.800 (knn) |" in driver.best_markdown(best)
