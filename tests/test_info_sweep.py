"""The information-sweep driver (launch/info_sweep.py): one pretraining per method and seed, the metrics it
needs of each mix, the runs it reuses or evaluates again, the ground truth and table it writes, checked
with a fake trainer and evaluator that write the files the real ones write; and the config it relies on
(every sweep mix has the same vectors, only its label differs)."""

import json
import os
import sys

import numpy as np
import pytest

from comm_jax.checkpoints import mark_complete
from configs import synthetic_info as config
from input_pipeline import synthetic_info
from tests.launch_fakes import fake_runner, load_driver


@pytest.fixture
def driver():
    return load_driver("info_sweep")


def test_sweep_mixes_share_their_vectors():
    # Why one pretraining serves every mix: the vectors (and tasks) are the same, only `label` differs.
    first = synthetic_info.generate_split("test", synthetic_info.LABELS[config.SWEEP_MIXES[0]], 0.0, size=64)
    for mix in config.SWEEP_MIXES[1:]:
        other = synthetic_info.generate_split("test", synthetic_info.LABELS[mix], 0.0, size=64)
        for key in ("x1", "x2", "redundant", "unique1", "unique2", "synergy"):
            np.testing.assert_array_equal(first[key], other[key])
    assert len({synthetic_info.LABELS[m] for m in config.SWEEP_MIXES}) == len(config.SWEEP_MIXES)


def test_sweep_token_probes_and_decomposes_every_mix():
    c = config.get_config("cpu,loss=comm,sweep=true")
    plain = config.get_config("cpu,loss=comm")
    assert c.data.to_dict() == plain.data.to_dict() and c.model.to_dict() == plain.model.to_dict()
    assert dict(c.evals.datasets) == {m: f"synthetic_info/{m}" for m in config.SWEEP_MIXES}
    for mix in config.SWEEP_MIXES:
        assert c.evals.evaluators[f"probe_{mix}"].to_dict() == {"type": "linear_probe", "dataset": mix, "tasks": ("label",)}
        assert c.evals.evaluators[f"pid_{mix}"]["dataset"] == mix


def fake_metrics(method: str, seed: int) -> dict[str, float]:
    """Distinct made-up values per method, seed and mix, so averaging and placement are checked."""
    base = {"comm": 0.9, "cross": 0.7}[method] + 0.01 * seed
    row = {"probe/U2": base - 0.1, "probe/R": 0.5}
    for i, mix in enumerate(config.SWEEP_MIXES):
        row[f"probe_{mix}/label"] = base - 0.02 * i
        row.update({f"pid_{mix}/label/{p}": 0.1 * j + 0.01 * i + 0.001 * seed for j, p in enumerate(("R", "U1", "U2", "S"))})
    return row


def test_table_from_fake_runs(driver, tmp_path, monkeypatch):
    fake_run, calls = fake_runner(lambda method, seed, biased: fake_metrics(method, seed))
    monkeypatch.setattr(driver.runs, "run", fake_run)
    monkeypatch.setattr(driver.runs, "check_same_run", lambda *a: None)   # fake runs have no checkpoints
    monkeypatch.setattr(driver, "chart", lambda table, truth, path: open(path, "w").close())
    # A run evaluated before the sweep's metrics existed is evaluated again, not retrained.
    old = tmp_path / "comm-seed1"
    (old / "metrics").mkdir(parents=True)
    mark_complete(str(old), 30)
    (old / "metrics" / "eval.jsonl").write_text(json.dumps({"step": 30, "probe/R": 0.5}) + "\n")

    argv = ["info_sweep.py", f"--root={tmp_path}", "--seeds=2", "--methods=cross,comm", "--override", "num_steps=30",
            "--no-batch_pid"]
    monkeypatch.setattr(sys, "argv", argv)
    driver.main()

    trains = [c for c in calls if c[2] == "comm_jax.train"]
    evals = [c for c in calls if c[2] == "comm_jax.evaluate"]
    assert len(trains) == 3 and len(evals) == 4               # 2 methods x 2 seeds, one trained before
    assert [c for c in evals if "--again" in c] == [c for c in evals if f"--workdir={old}" in c]
    assert {a for c in trains for a in c if a.startswith("--config=")} == {
        f"--config=configs/synthetic_info.py:cpu,loss={m},sweep=true" for m in ("cross", "comm")}
    assert all("--config.num_steps=30" in c for c in calls)

    out = json.loads((tmp_path / "table.json").read_text())
    for method in ("cross", "comm"):
        for i, mix in enumerate(config.SWEEP_MIXES):
            values = [fake_metrics(method, s)[f"probe_{mix}/label"] for s in range(2)]
            assert out["table"][method][mix]["mean"] == pytest.approx(np.mean(values))
            assert out["table"][method][mix]["std"] == pytest.approx(np.std(values, ddof=1))
            assert out["table"][method][mix]["pid"]["S"]["mean"] == pytest.approx(0.3 + 0.01 * i + 0.0005)
        assert out["table"][method]["tasks"]["R"]["mean"] == out["table"][method]["redundant"]["mean"]
        assert out["table"][method]["tasks"]["U2"]["mean"] == pytest.approx(
            np.mean([fake_metrics(method, s)["probe/U2"] for s in range(2)]))
    # The ground truth is the generator's: R = U1 = S = 1 bit for the full mix, all unique for unique1.
    assert out["truth"]["redundant_unique1_synergy"]["pid"] == pytest.approx({"R": 1, "U1": 1, "U2": 0, "S": 1}, abs=1e-5)
    assert out["truth"]["redundant_unique1_synergy"]["unique_share"] == pytest.approx(1 / 3, abs=1e-5)
    assert out["truth"]["unique1"]["unique_share"] == pytest.approx(1.0, abs=1e-5)
    assert out["truth"]["unique1_synergy"]["classes"] == 4
    text = (tmp_path / "table.md").read_text()
    assert "| unique1 | 2 | 0.00 / 1.00 / 0.00 / 0.00 | 1.00 |" in text and "30 steps" in text

    calls.clear()
    driver.main()             # every run done and evaluated: nothing runs again
    assert calls == []

    # METHOD:N runs N seeds of that method; the continuous estimator's PIDs join the table, from each
    # run's exported embeddings (cached), beside the estimator on the inputs.
    exported, estimated = [], []

    def fake_export(workdir, config_arg, overrides):
        exported.append(workdir)
        path = os.path.join(workdir, "fake.npz")
        bits = {f"label_{t}": np.arange(8) % 2 for t in ("redundant", "unique1", "unique2", "synergy")}
        np.savez(path, z_x1=np.zeros((8, 3)), z_x2=np.ones((8, 3)), **bits)
        return path

    def fake_batch_pids(x1, x2, bits, seed):
        estimated.append(x1.shape)
        return {mix: {"parts": {"R": 0.5 + seed, "U1": 0.1, "U2": 0.0, "S": 0.2}, "stderr": {}} for mix in config.SWEEP_MIXES}

    monkeypatch.setattr(driver, "export_embeddings", fake_export)
    monkeypatch.setattr(driver, "batch_pids", fake_batch_pids)
    monkeypatch.setattr(sys, "argv", argv[:-1] + ["--methods=cross,comm:1"])
    driver.main()
    assert calls == [] and sorted(exported) == sorted(str(tmp_path / r) for r in ("cross-seed0", "cross-seed1", "comm-seed0"))
    assert estimated[:3] == [(8, 3)] * 3 and len(estimated) == 4          # three runs, then the inputs (train split)
    out = json.loads((tmp_path / "table.json").read_text())
    assert out["seeds"] == {"cross": 2, "comm": 1}
    assert out["table"]["cross"]["unique1"]["batch_pid"]["R"] == {"mean": 1.0, "std": pytest.approx(0.7071, abs=1e-4)}
    assert "| unique1 | 0.00 / 1.00 / 0.00 / 0.00 | 0.50 / 0.10 / 0.00 / 0.20 |" in (tmp_path / "table.md").read_text()
    exported.clear()
    driver.main()             # cached: nothing exported or estimated again
    assert exported == [] and len(estimated) == 4


def test_mix_labels_composed_from_task_bits_match_the_generator(driver):
    arrays = synthetic_info.generate_split("test", synthetic_info.LABELS["redundant"], 0.0, size=256)
    bits = {task: arrays[task] for task in synthetic_info.TASKS}
    for mix in config.SWEEP_MIXES:
        generated = synthetic_info.generate_split("test", synthetic_info.LABELS[mix], 0.0, size=256)["label"]
        np.testing.assert_array_equal(driver.mix_label(bits, mix), generated)


def test_above_chance_scale(driver):
    assert driver.above_chance(0.5, 2) == 0.0
    assert driver.above_chance(1.0, 8) == 1.0
    assert driver.above_chance(0.625, 4) == pytest.approx(0.5)


def test_chart_draws_from_a_table(driver, tmp_path):
    truth = driver.ground_truth()
    table = {m: {mix: {"accuracy": (0.6, 0.01), "pid": {p: (0.2, 0.0) for p in ("R", "U1", "U2", "S")}}
                 for mix in config.SWEEP_MIXES} for m in ("cross", "comm")}
    driver.chart(table, truth, str(tmp_path / "chart.png"))
    assert (tmp_path / "chart.png").stat().st_size > 10_000
