"""The Trifeatures table driver (launch/trifeatures_table.py): the commands it runs per method, seed and
pretraining, the runs it skips or re-evaluates, and the table it writes, checked with a fake trainer
and evaluator that write the files the real ones write."""

import json
import os
import re
import sys

import numpy as np
import pytest

from comm_jax.checkpoints import COMPLETION_MARKER, CheckpointStore
from comm_jax.models import build_model
from configs import trifeatures
from tests.launch_fakes import fake_runner, load_driver


@pytest.fixture(scope="module")
def driver():
    return load_driver("trifeatures_table")


@pytest.mark.parametrize("variant,res,biased,size,dataset", [
    ("cpu", None, False, 32, "bimodal_trifeatures/32px"),
    ("cpu", 64, True, 64, "bimodal_trifeatures/64px_biased"),
    ("full", None, True, 224, "bimodal_trifeatures/224px_biased"),
])
def test_config_argument_selects_size_and_bias(driver, variant, res, biased, size, dataset):
    arg = driver.config_arg(variant, res, "cross", biased)
    path, tokens = arg.split(":", 1)
    assert path == "configs/trifeatures.py"
    c = trifeatures.get_config(tokens)
    assert c.loss.name == "cross"
    assert c.data.name == dataset
    assert c.evals.probe_data == f"bimodal_trifeatures/{size}px"      # always probed on unbiased pairs
    assert {tuple(e["input_shape"]) for e in c.model.encoders.values()} == {(size, size, 3)}


@pytest.mark.parametrize("method", ["comm", "cross_self", "cross"])
def test_crop_reaches_the_strong_views_only(driver, method):
    tokens = driver.config_arg("cpu", 64, method, False, crop=0.5).split(":", 1)[1]
    views = trifeatures.get_config(tokens).data.views
    default = trifeatures.get_config(driver.config_arg("cpu", 64, method, False).split(":", 1)[1]).data.views
    assert set(views) == set(default) == {"comm": {"view1", "view2"}, "cross": {"weak"},
                                          "cross_self": {"weak", "view1", "view2"}}[method]
    for name in ("image_1", "image_2"):
        for view in views:
            if view == "weak":    # the weak views crop 0.5-1 whatever the token says, no colour ops
                assert views[view][name] == default[view][name] == "random_resized_crop(64, scale=(0.5, 1.0))|normalize"
                continue
            assert views[view][name].startswith("random_resized_crop(64, scale=(0.5, 1.0))")
            # only the crop differs from the config's default (20% at cpu)
            assert default[view][name].startswith("random_resized_crop(64, scale=(0.2, 1.0))")
            assert views[view][name].split("|")[1:] == default[view][name].split("|")[1:]


@pytest.mark.parametrize("method, model, head", [("comm", "MultimodalModel", "ProjectionHead"),
                                                 ("cross", "TowersModel", "LinearProjection"),
                                                 ("cross_self", "TowersModel", None)])
def test_each_method_gets_the_references_model(method, model, head):
    c = trifeatures.get_config(f"cpu,loss={method}")
    built = build_model(c.model)
    assert type(built).__name__ == model
    if head:
        assert type(built.head).__name__ == head
    else:                                 # one MLP head per image
        assert set(built.heads) == {"image_1", "image_2"}


@pytest.mark.parametrize("bad", ["crop=0", "crop=1.5", "crop=half"])
def test_bad_crop_is_named(bad):
    with pytest.raises(ValueError, match="crop="):
        trifeatures.get_config("cpu," + bad)


def test_driver_passes_crop_zero_on_to_be_rejected(driver):
    arg = driver.config_arg("cpu", 64, "comm", False, crop=0.0)
    with pytest.raises(ValueError, match="crop="):
        trifeatures.get_config(arg.split(":", 1)[1])


def metrics_for(method, seed, biased):
    """Made-up probe accuracies, distinct per run so the table's averaging is checked."""
    base = {"comm": 0.9, "cross": 0.8}[method] - 0.01 * seed
    return {"probe/R": base, "probe/U1": base - 0.2, "probe/U2": base - 0.3,
            "probe/S": 0.5 + 0.1 * biased + 0.01 * seed, "probe_bal/S": 0.6 + 0.02 * seed}


def finish_fake_run(workdir, tokens, seed, steps, without_chunk=False):
    """What training leaves: a final checkpoint holding the run's config, and the completion marker
    (`without_chunk`: a config written before `loss.column_chunk` existed)."""
    c = trifeatures.get_config(tokens)
    c.seed, c.num_steps = seed, steps
    if without_chunk:
        del c.loss["column_chunk"]
    store = CheckpointStore(str(workdir), async_save=False)
    store.save(steps, {"w": np.zeros(2, np.float32)}, {"position": steps}, c.to_json(), force=True)
    store.close()
    with open(os.path.join(workdir, COMPLETION_MARKER), "w") as f:
        json.dump({"step": steps}, f)


def fake_runs(driver, monkeypatch) -> list:
    """Points the driver at the fake trainer and evaluator (no chart drawn); the list collects their commands."""
    def finish(workdir, flags):
        finish_fake_run(workdir, flags["--config"].split(":", 1)[1], int(flags["--config.seed"]),
                        int(flags["--config.num_steps"]))

    fake_run, calls = fake_runner(metrics_for, finish)
    monkeypatch.setattr(driver.runs, "run", fake_run)
    monkeypatch.setattr(driver, "bar_chart", lambda table, path: open(path, "w").close())
    return calls


def test_table_from_fake_runs(driver, tmp_path, monkeypatch):
    calls = fake_runs(driver, monkeypatch)
    # One run finished and evaluated before `probe_bal` and `loss.column_chunk` existed: it must be evaluated
    # again, not retrained.
    old = tmp_path / "comm-seed1-biased"
    (old / "metrics").mkdir(parents=True)
    finish_fake_run(old, "cpu,res=64,loss=comm,bias=true", seed=1, steps=30, without_chunk=True)
    stale = {k: v for k, v in metrics_for("comm", 1, True).items() if k != "probe_bal/S"}
    (old / "metrics" / "eval.jsonl").write_text(json.dumps({"step": 30, **stale}) + "\n")

    argv = ["trifeatures_table.py", "--variant=cpu", "--res=64", f"--root={tmp_path}", "--seeds=2",
            "--methods=comm,cross", "--override", "num_steps=30"]
    monkeypatch.setattr(sys, "argv", argv)
    driver.main()

    trains = [c for c in calls if c[2] == "comm_jax.train"]
    evals = [c for c in calls if c[2] == "comm_jax.evaluate"]
    assert len(trains) == 7 and len(evals) == 8          # 2 methods x 2 seeds x 2 pretrainings, one trained before
    assert all("--config.num_steps=30" in c and any(a.startswith("--config=configs/trifeatures.py:cpu,res=64,")
                                                    for a in c) for c in calls)
    assert [c for c in evals if "--again" in c] == [c for c in evals if f"--workdir={old}" in c]

    out = json.loads((tmp_path / "table.json").read_text())
    assert out["res"] == 64 and out["seeds"] == 2
    for method in ("comm", "cross"):
        per_seed = []
        for seed in range(2):
            unbiased, biased = metrics_for(method, seed, False), metrics_for(method, seed, True)
            per_seed.append([100 * unbiased["probe/R"], 50 * (unbiased["probe/U1"] + unbiased["probe/U2"]),
                             100 * biased["probe/S"], 100 * biased["probe_bal/S"]])
        per_seed = np.array(per_seed)
        for i, task in enumerate(driver.TASKS):
            assert out["table"][method][task]["mean"] == pytest.approx(per_seed[:, i].mean())
            assert out["table"][method][task]["std"] == pytest.approx(per_seed[:, i].std(ddof=1))
    # CoMM: R 89.5 misses 95; U 64.5 misses 70; S 60.5 misses 65. Cross: U 54.5 misses 30; S 60.5 misses 55.
    assert out["targets"]["comm"] == {"R >= 95": False, "U >= 70": False, "S >= 65": False}
    assert out["targets"]["cross"] == {"R >= 95": False, "U <= 30": False, "S <= 55": False}
    text = (tmp_path / "table.md").read_text()
    assert "at 64 px" in text and "CoMM U >= 70 MISSED" in text and "crops" not in text

    # A second call finds every run done and evaluated: nothing runs, the same table comes out.
    calls.clear()
    driver.main()
    assert calls == []
    assert json.loads((tmp_path / "table.json").read_text())["table"] == out["table"]
    # How the loss is computed (checkpoints.HOW_NOT_WHAT) is no difference: the same runs serve.
    monkeypatch.setattr(sys, "argv", argv + ["--override", "loss.column_chunk=2"])
    driver.main()
    assert calls == []
    monkeypatch.setattr(sys, "argv", argv)

    # The same root asked for other crops, or more steps, stops on the first run it would reuse, naming
    # what differs, and runs nothing: its runs were trained otherwise (work directories don't say).
    for extra, named in (["--crop=0.5"], "data.views.view1.image_1 = 'random_resized_crop(64, scale=(0.2, 1.0))"), \
                         (["--override", "num_steps=40"], "num_steps = 30, this table asks for 40"):
        monkeypatch.setattr(sys, "argv", argv + extra)
        with pytest.raises(SystemExit, match=re.escape(named)) as stopped:
            driver.main()
        assert "comm-seed0-unbiased" in str(stopped.value) and calls == []


def test_included_seeds_of_a_trained_method_are_kept_and_the_rest_trained(driver, tmp_path, monkeypatch):
    calls = fake_runs(driver, monkeypatch)
    seed0 = {"R": 97.0, "U": 41.0, "S": 50.0, "S_bal": 52.0}     # measured elsewhere; no work directory here
    other = {"R": 11.0, "U": 12.0, "S": 13.0, "S_bal": 14.0}
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps({"variant": "cpu", "res": 64, "crop": None, "overrides": ["num_steps=30"],
                                   "per_seed": {"cross": [seed0], "comm": [other, other]}}))
    root = tmp_path / "root"
    argv = ["trifeatures_table.py", "--variant=cpu", "--res=64", f"--root={root}", "--seeds=2", "--methods=cross",
            "--override", "num_steps=30", f"--include={earlier}"]
    monkeypatch.setattr(sys, "argv", argv)
    driver.main()

    trained = sorted(os.path.basename(a.split("=", 1)[1]) for c in calls if c[2] == "comm_jax.train"
                     for a in c if a.startswith("--workdir="))
    assert trained == ["cross-seed1-biased", "cross-seed1-unbiased"]
    out = json.loads((root / "table.json").read_text())
    unbiased, biased = metrics_for("cross", 1, False), metrics_for("cross", 1, True)
    seed1 = [100 * unbiased["probe/R"], 50 * (unbiased["probe/U1"] + unbiased["probe/U2"]),
             100 * biased["probe/S"], 100 * biased["probe_bal/S"]]
    assert out["per_seed"]["cross"][0] == seed0
    assert [out["per_seed"]["cross"][1][t] for t in driver.TASKS] == pytest.approx(seed1)
    for i, task in enumerate(driver.TASKS):
        assert out["table"]["cross"][task]["mean"] == pytest.approx((seed0[task] + seed1[i]) / 2)
    assert out["per_seed"]["comm"] == [other, other] and out["overrides"] == ["num_steps=30"]

    # Rows trained for another number of steps do not join.
    calls.clear()
    monkeypatch.setattr(sys, "argv", [a.replace("num_steps=30", "num_steps=40") for a in argv])
    with pytest.raises(SystemExit, match=re.escape(f"{earlier}: its overrides are ['num_steps=30']")):
        driver.main()
    assert calls == []


def test_target_checks_at_the_boundaries(driver):
    table = {"comm": {"R": (95.0, 0.0), "U": (69.99, 0.0), "S": (65.0, 1.0)},
             "cross": {"R": (99.0, 0.0), "U": (30.0, 0.0), "S": (55.01, 0.0)}}
    assert driver.target_checks(table) == {
        "comm": {"R >= 95": True, "U >= 70": False, "S >= 65": True},
        "cross": {"R >= 95": True, "U <= 30": True, "S <= 55": False},
    }
