"""Evaluation: the probe, kNN and retrieval against independent references, and the evaluation
process beside a training process (each checkpoint once, deletions and failing evaluators survived,
restarts idempotent, checkpoints never written). One short training run is shared by the module."""

from __future__ import annotations

import collections
import copy
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.preprocessing import StandardScaler

import input_pipeline  # noqa: F401  (registers bimodal_trifeatures)
from comm_jax import evaluate as evaluate_mod
from comm_jax.evaluators import resolve_config
from comm_jax.evaluators.knn import knn_predict
from comm_jax.evaluators.linear_probe import holdout_split, linear_probe
from comm_jax.evaluators.retrieval import retrieval_accuracy

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = '''"""Bimodal Trifeatures 32 px sized for tests: a tiny model, 6 steps, capped evaluation sets."""
from configs import trifeatures


def get_config(arg=None):
    c = trifeatures.get_config("cpu")
    c.model.update(dict(width=32, heads=2, head_hidden=64, head_out=32))
    for m in c.model.modalities:
        c.model.encoders[m].encoder_args.channels = (8, 16, 16)
    c.batch_size, c.num_steps, c.ckpt_every, c.log_every, c.keep_ckpts = 16, 6, 3, 3, 5
    c.evals.task_means = {"U": ("U1", "U2")}
    c.evals.batch_size = 64
    c.evals.train_split, c.evals.test_split = "train[:512]", "test[:256]"
    c.evals.poll_seconds = 0.5
    c.evals.evaluators = {"probe": {"type": "linear_probe", "Cs": (0.01, 1.0, 100.0)},
                          "knn": {"type": "knn", "k": 10}, "retrieval": {"type": "retrieval"}}
    return c
'''
PROCESS_TIMEOUT = 240


# ---------------------------------------------------------------- probes on synthetic features

def blobs(n, dim=16, classes=4, spread=4.0, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(classes, dim)) * spread
    y = rng.integers(0, classes, n)
    return (centers[y] + rng.normal(size=(n, dim))).astype(np.float32), y


def test_probe_on_separable_features_agrees_with_sklearn_balanced_accuracy():
    x, y = blobs(600)
    result = linear_probe(x[:400], y[:400], x[400:], y[400:], Cs=(0.01, 1.0, 100.0))
    assert result.kind == "multiclass" and result.metrics[""] > 0.95
    scaler = StandardScaler().fit(x[:400])        # independent refit with the chosen C
    clf = LogisticRegression(C=result.C, max_iter=1000).fit(scaler.transform(x[:400]), y[:400])
    predicted = clf.predict(scaler.transform(x[400:]))
    np.testing.assert_array_equal(predicted, result.predictions)
    assert result.metrics[""] == pytest.approx(balanced_accuracy_score(y[400:], predicted))


def test_c_sweep_is_chosen_on_held_out_training_features_never_on_test():
    x, y = blobs(240, dim=40, classes=3, spread=0.6, seed=1)     # overlapping: C matters
    train_x, train_y, test_x, test_y = x[:160], y[:160], x[160:], y[160:]
    Cs = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
    result = linear_probe(train_x, train_y, test_x, test_y, Cs=Cs, holdout_fraction=0.25, seed=3)
    fit, held = holdout_split(train_y, 0.25, seed=3)
    assert not set(fit) & set(held) and len(fit) + len(held) == 160
    assert np.bincount(train_y[held]).min() > 0                   # stratified
    expected = {}
    for C in Cs:
        scaler = StandardScaler().fit(train_x[fit])
        clf = LogisticRegression(C=C, max_iter=1000).fit(scaler.transform(train_x[fit]), train_y[fit])
        expected[C] = balanced_accuracy_score(train_y[held], clf.predict(scaler.transform(train_x[held])))
    assert result.sweep == pytest.approx(expected)
    assert result.C == max(Cs, key=lambda c: (expected[c], -c))
    shuffled = linear_probe(train_x, train_y, test_x, np.random.default_rng(0).permutation(test_y), Cs=Cs,
                            holdout_fraction=0.25, seed=3)
    assert shuffled.C == result.C and shuffled.sweep == result.sweep


def test_multilabel_probe_reports_f1_and_regression_probe_reports_mse():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(500, 10)).astype(np.float32)
    indicators = (x[:, :3] > 0).astype(np.int64)                  # [N, 3] multi-label
    multi = linear_probe(x[:350], indicators[:350], x[350:], indicators[350:], Cs=(1.0, 100.0))
    assert multi.kind == "multilabel" and multi.metrics["f1_macro"] > 0.9 and "f1_weighted" in multi.metrics
    target = x @ rng.normal(size=10) + 0.05 * rng.normal(size=500)
    reg = linear_probe(x[:350], target[:350], x[350:], target[350:], Cs=(1.0, 100.0))
    assert reg.kind == "regression" and reg.metrics["mse"] < 0.05 * target.var()


def test_knn_matches_a_brute_force_reference():
    rng = np.random.default_rng(4)
    bank, queries = rng.normal(size=(120, 6)), rng.normal(size=(40, 6))
    labels = rng.integers(0, 4, 120)
    k = 7
    expected = []
    for q in queries:
        sims = [q @ b / np.linalg.norm(q) / np.linalg.norm(b) for b in bank]
        votes = collections.Counter(labels[j] for j in sorted(range(len(bank)), key=lambda j: -sims[j])[:k])
        expected.append(min(c for c in votes if votes[c] == max(votes.values())))
    np.testing.assert_array_equal(knn_predict(bank, labels, queries, k), expected)


def test_retrieval_matches_a_brute_force_reference():
    rng = np.random.default_rng(5)
    a = rng.normal(size=(50, 4))
    b = a + rng.normal(size=(50, 4)) * 0.8
    for top_k in (1, 3):
        hits = 0
        for i in range(50):
            sims = [a[i] @ b[j] / np.linalg.norm(a[i]) / np.linalg.norm(b[j]) for j in range(50)]
            hits += i in sorted(range(50), key=lambda j: -sims[j])[:top_k]
        assert retrieval_accuracy(a, b, top_k, chunk=16) == pytest.approx(hits / 50)


def test_class_balanced_probe_finds_a_rare_class_the_unweighted_probe_misses():
    rng = np.random.default_rng(6)
    n = 4000
    y = (rng.random(n) < 0.08).astype(np.int64)                    # 8% positives, weakly separated
    x = rng.normal(size=(n, 8)).astype(np.float32)
    x[:, 0] += 1.2 * y
    train, test = slice(0, 3000), slice(3000, None)
    Cs = (0.01, 1.0)
    plain = linear_probe(x[train], y[train], x[test], y[test], Cs=Cs)
    balanced = linear_probe(x[train], y[train], x[test], y[test], Cs=Cs, class_weight="balanced")
    assert plain.metrics[""] < 0.56 < 0.65 < balanced.metrics[""]
    scaler = StandardScaler().fit(x[train])        # independent refit: the weights are sklearn's "balanced"
    clf = LogisticRegression(C=balanced.C, max_iter=1000, class_weight="balanced").fit(
        scaler.transform(x[train]), y[train])
    np.testing.assert_array_equal(clf.predict(scaler.transform(x[test])), balanced.predictions)
    with pytest.raises(ValueError, match="class_weight"):
        linear_probe(x[train], y[train], x[test], y[test], class_weight="inverse")


class _FakeContext:
    """Features of two modalities of the `default` dataset: each alone, and a fused Z that differs
    from their concatenation. Sources are (dataset, split) pairs."""

    modalities = ("a", "b")

    def __init__(self, labels):
        rng = np.random.default_rng(7)
        n = len(next(iter(labels["train"].values())))
        self._z = {(("default", split), subset): rng.normal(size=(n, 3)).astype(np.float32)
                   for split in ("train", "test") for subset in (("a",), ("b",), ("a", "b"))}
        self._labels = labels
        self.read = []

    def z(self, source, subset):
        self.read.append((source[1], tuple(subset)))
        return self._z[source, tuple(subset)]

    def labels(self, source, key):
        assert source[0] == "default"
        return self._labels[source[1]][key]


def test_probe_features_concat_reads_each_modality_alone_and_tasks_selects_metrics():
    from comm_jax.evaluators import build_evaluators
    rng = np.random.default_rng(8)
    labels = {split: {"k": rng.integers(0, 3, 60), "s": rng.integers(0, 2, 60)} for split in ("train", "test")}
    evals = resolve_config({"tasks": {"K": "k", "S": "s"}, "evaluators": {
        "p": {"type": "linear_probe", "features": "concat", "tasks": ("S",), "Cs": (1.0,)},
        "q": {"type": "linear_probe", "Cs": (1.0,), "accuracy": True}}})
    concat, joint = build_evaluators(evals)
    train, test = ("default", "train"), ("default", "test")
    assert concat.requests(("a", "b")) == [(train, ("a",)), (train, ("b",)), (test, ("a",)), (test, ("b",))]
    assert joint.requests(("a", "b")) == [(train, ("a", "b")), (test, ("a", "b"))]
    ctx = _FakeContext(labels)
    np.testing.assert_array_equal(concat.features(ctx, "test"),
                                  np.concatenate([ctx.z(test, ("a",)), ctx.z(test, ("b",))], axis=1))
    ctx.read.clear()
    metrics = concat.evaluate(ctx)
    assert set(metrics) == {"p/S"} and ("train", ("a", "b")) not in ctx.read      # plain accuracy: opt-in
    x_train = np.concatenate([ctx.z(train, ("a",)), ctx.z(train, ("b",))], 1)
    x_test = np.concatenate([ctx.z(test, ("a",)), ctx.z(test, ("b",))], 1)
    expected = linear_probe(x_train, labels["train"]["s"], x_test, labels["test"]["s"], Cs=(1.0,))
    assert metrics["p/S"] == pytest.approx(expected.metrics[""])
    assert set(joint.evaluate(ctx)) == {"q/K", "q/S", "q/K/accuracy", "q/S/accuracy"}
    for bad, match in (({"features": "sum"}, "evaluators.p.features"), ({"tasks": ("U",)}, "evaluators.p.tasks"),
                       ({"class_weight": "auto"}, "evaluators.p.class_weight")):
        with pytest.raises(ValueError, match=match):
            build_evaluators(resolve_config({"tasks": {"S": "s"}, "evaluators": {"p": {"type": "linear_probe", **bad}}}))


def test_evaluators_read_the_dataset_they_name():
    from comm_jax.evaluators import build_evaluators
    evals = resolve_config({"probe_data": "probe_set", "datasets": {"shifted": "other_set"}, "tasks": {"K": "k"},
                            "evaluators": {"p": {"type": "linear_probe"},
                                           "q": {"type": "knn", "dataset": "shifted"}}})
    assert dict(evals.datasets) == {"default": "probe_set", "shifted": "other_set"}
    p, q = build_evaluators(evals)
    assert p.sources() == [("default", "train"), ("default", "test")]
    assert q.requests(("a",)) == [(("shifted", "train"), ("a",)), (("shifted", "test"), ("a",))]
    with pytest.raises(ValueError, match=r"evaluators.q.dataset='nowhere' is not a key of config.evals.datasets"):
        build_evaluators(resolve_config({"evaluators": {"q": {"type": "knn", "dataset": "nowhere"}}}))


def test_evals_config_errors_name_the_key():
    with pytest.raises(ValueError, match="knn_kk"):
        resolve_config({"knn_kk": 3})
    with pytest.raises(ValueError, match="evaluators.knn.kk"):
        from comm_jax.evaluators import build_evaluators
        build_evaluators(resolve_config({"evaluators": {"knn": {"type": "knn", "kk": 3}}}))


# ---------------------------------------------------------------- the evaluation process

@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Data, a config file for the subprocesses and the same config in-process."""
    root = tmp_path_factory.mktemp("evaluate")
    data_dir = str(root / "tfds")
    tfds.builder("bimodal_trifeatures/32px", data_dir=data_dir).download_and_prepare()
    config_file = root / "tiny_config.py"
    config_file.write_text(TINY_CONFIG)
    spec = importlib.util.spec_from_file_location("tiny_config", config_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config()
    cfg.data.data_dir = data_dir
    return root, str(config_file), data_dir, cfg


def _launch(module: str, config_file: str, data_dir: str, workdir: str, log_path: Path, *flags: str):
    cmd = [sys.executable, "-m", module, f"--config={config_file}", f"--workdir={workdir}",
           f"--config.data.data_dir={data_dir}", *flags]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def run(setup):
    """Training and evaluation started side by side as two processes on one workdir."""
    root, config_file, data_dir, _ = setup
    workdir = str(root / "run")
    os.makedirs(workdir)                # as launch/local.sh: the watcher refuses a workdir that does not exist
    # Normal scheduling: beside the other test worker's load an idle-priority watcher would wait for it.
    evaluator = _launch("comm_jax.evaluate", config_file, data_dir, workdir, root / "eval.log", "--noidle")
    trainer = _launch("comm_jax.train", config_file, data_dir, workdir, root / "train.log")
    codes = trainer.wait(PROCESS_TIMEOUT), evaluator.wait(PROCESS_TIMEOUT)
    return workdir, codes, (root / "train.log").read_text(), (root / "eval.log").read_text()


def _eval_steps(workdir) -> list[int]:
    with open(os.path.join(workdir, "metrics", "eval.jsonl")) as f:
        return [json.loads(line)["step"] for line in f if line.strip()]


def test_training_and_evaluation_processes_evaluate_each_checkpoint_once(run):
    workdir, (train_code, eval_code), train_log, eval_log = run
    assert train_code == 0, train_log[-3000:]
    assert eval_code == 0, eval_log[-3000:]
    assert _eval_steps(workdir) == [3, 6]
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics", "eval.jsonl"))]
    for key in ("probe/R", "probe/U1", "probe/U2", "probe/S", "probe/U", "knn/R", "retrieval/mean"):
        assert all(0.0 <= row[key] <= 1.0 for row in rows), key
    assert rows[0]["probe/U"] == pytest.approx((rows[0]["probe/U1"] + rows[0]["probe/U2"]) / 2)
    lines = eval_log.splitlines()
    assert [sum(line.startswith(f"step {s}:") for line in lines) for s in (3, 6)] == [1, 1]
    assert any(line.split()[:2] == ["step", "knn/R"] for line in lines)     # the summary table
    assert os.path.getsize(os.path.join(workdir, "metrics", "eval.png")) > 0
    assert os.path.isdir(os.path.join(workdir, "metrics", "eval"))      # TensorBoard events


@pytest.fixture(scope="module")
def sources(setup):
    cfg = setup[3]
    evals = resolve_config(cfg.evals)
    return evaluate_mod.evaluation_data(cfg, evals, [("default", evals.train_split), ("default", evals.test_split)])


@pytest.fixture
def copy_of_run(run, sources, tmp_path, setup, monkeypatch):
    """A private copy of the trained workdir without evaluation results (splits loaded once)."""
    workdir = str(tmp_path / "run")
    shutil.copytree(run[0], workdir, ignore=shutil.ignore_patterns("eval*"))
    monkeypatch.setattr(evaluate_mod, "evaluation_data", lambda *_: sources)
    return workdir, setup[3]


def _snapshot(directory: str) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in Path(directory).rglob("*")}


def test_restart_does_not_reevaluate_and_checkpoints_stay_untouched(copy_of_run, monkeypatch):
    workdir, cfg = copy_of_run
    before = _snapshot(os.path.join(workdir, "checkpoints"))
    first = evaluate_mod.evaluate(cfg, workdir)
    assert [r["step"] for r in first] == [3, 6]

    def must_not_restore(*args):
        raise AssertionError("a restarted evaluator restored an evaluated checkpoint")

    monkeypatch.setattr(evaluate_mod, "restore_frozen_model", must_not_restore)
    second = evaluate_mod.evaluate(cfg, workdir)                    # a restarted process
    assert second == first and _eval_steps(workdir) == [3, 6]
    assert _snapshot(os.path.join(workdir, "checkpoints")) == before


def test_checkpoint_deleted_under_the_evaluator_is_skipped_with_a_warning(copy_of_run, monkeypatch, caplog):
    workdir, cfg = copy_of_run
    restore = evaluate_mod.restore_frozen_model

    def delete_then_restore(store, step, mesh):
        if step == 3:
            shutil.rmtree(os.path.join(workdir, "checkpoints", "3"))
        return restore(store, step, mesh)

    monkeypatch.setattr(evaluate_mod, "restore_frozen_model", delete_then_restore)
    with caplog.at_level(logging.WARNING, logger="comm_jax.evaluate"):
        rows = evaluate_mod.evaluate(cfg, workdir)
    assert [r["step"] for r in rows] == [6]
    assert any("step 3" in r.message and "deleted" in r.message for r in caplog.records)


def test_half_written_checkpoint_is_retried_then_skipped_with_a_warning(copy_of_run, caplog):
    workdir, cfg = copy_of_run
    broken = Path(workdir, "checkpoints", "9", "state")      # listed, but its items are unreadable
    broken.mkdir(parents=True)
    (broken / "_METADATA").write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="comm_jax.evaluate"):
        rows = evaluate_mod.evaluate(cfg, workdir)
    assert [r["step"] for r in rows] == [3, 6]
    messages = [r.message for r in caplog.records if "step 9" in r.message]
    assert messages and "skipping" in messages[-1]


def test_failing_evaluator_is_reported_and_the_others_still_run(copy_of_run, monkeypatch, caplog):
    workdir, cfg = copy_of_run

    def broken(*args, **kwargs):
        raise RuntimeError("neighbour search exploded")

    monkeypatch.setattr("comm_jax.evaluators.knn.nearest_neighbours", broken)
    with caplog.at_level(logging.ERROR, logger="comm_jax.evaluate"):
        rows = evaluate_mod.evaluate(cfg, workdir, step=6)
    assert [r["step"] for r in rows] == [6]
    assert "probe/S" in rows[0] and "retrieval/mean" in rows[0]
    assert not any(k.startswith("knn/") for k in rows[0])
    assert any("'knn'" in r.message and "exploded" in r.message for r in caplog.records)
    with pytest.raises(ValueError, match="no checkpoint at step 5"):
        evaluate_mod.evaluate(cfg, workdir, step=5)


def test_step_evaluated_again_appends_a_row_that_readers_take(copy_of_run, caplog):
    workdir, cfg = copy_of_run
    before = _snapshot(os.path.join(workdir, "checkpoints"))
    evaluate_mod.evaluate(cfg, workdir, step=6)
    evaluate_mod.evaluate(cfg, workdir, step=6)                      # already there: skipped
    assert _eval_steps(workdir) == [6]
    cfg = copy.deepcopy(cfg)
    with cfg.unlocked():
        cfg.evals.evaluators = {"probe": {"type": "linear_probe", "Cs": (1.0,)},
                                "probe_bal": {"type": "linear_probe", "Cs": (1.0,), "class_weight": "balanced",
                                              "tasks": ("S",)}}
    rows = evaluate_mod.evaluate(cfg, workdir, step=6, again=True)
    assert [r["step"] for r in rows] == [6, 6] and "probe_bal/S" in rows[-1] and "probe_bal/S" not in rows[0]
    body = evaluate_mod.format_table(rows).splitlines()[2:]          # one line per step: the last row
    assert len(body) == 1 and f"{rows[-1]['probe_bal/S']:.4f}" in body[0]
    assert _snapshot(os.path.join(workdir, "checkpoints")) == before
