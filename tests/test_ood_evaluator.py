"""The `ood` evaluator: on synthetic features its metrics equal direct calls of `comm_jax.uncertainty`
and of scikit-learn on the same rows; its arguments are checked; it caps what is extracted; and it
runs inside the watcher (`python -m comm_jax.evaluate --step=N`) on a tiny run of `ood=true`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.preprocessing import StandardScaler

from comm_jax.evaluators import build_evaluators, extraction_limit, resolve_config
from comm_jax.uncertainty.metrics import failure_metrics, ood_metrics
from comm_jax.uncertainty.scores import KNN, InteractionResidual, Mahalanobis

REPO = Path(__file__).resolve().parents[1]
MODALITIES = ("image_1", "image_2")
CLASSES = 4


class SyntheticContext:
    """What an EvalContext gives evaluators, from arrays: `z(source, subset)` and `labels(source, key)`."""

    def __init__(self, z: dict, labels: dict):
        self.modalities = MODALITIES
        self._z, self._labels = z, labels

    def z(self, source, subset):
        return self._z[source][tuple(subset)]

    def labels(self, source, key):
        return self._labels[source][key]


def _split(rng, n, shift_first=0.0):
    """Per-modality Z from class blobs (image 1 moved by `shift_first` for a shifted split) and a fused
    Z that mixes them non-linearly; labels of task "label"."""
    y = rng.integers(0, CLASSES, n)
    centres = np.eye(CLASSES, 6) * 3.0
    first = centres[y] + rng.normal(size=(n, 6))
    first[:, CLASSES:] += shift_first           # along directions no class uses
    second = centres[y] + rng.normal(size=(n, 6))
    fused = np.concatenate([first + second, np.tanh(first * second)], axis=1) + 0.1 * rng.normal(size=(n, 12))
    z = {MODALITIES: fused, ("image_1",): first, ("image_2",): second}
    return {k: v.astype(np.float32) for k, v in z.items()}, {"label": y}


@pytest.fixture(scope="module")
def synthetic():
    rng = np.random.default_rng(0)
    z, labels = {}, {}
    for source, n, shift in ((("default", "train"), 300, 0.0), (("default", "test"), 150, 0.0),
                             (("moved", "test"), 120, 6.0)):
        z[source], labels[source] = _split(rng, n, shift)
    evals = resolve_config({"datasets": {"moved": "unused"}, "tasks": {"T": "label"},
                            "evaluators": {"ood": {"type": "ood", "shifts": ("moved",), "knn_k": 5,
                                                   "scores": ("msp", "knn", "mahalanobis", "interaction"),
                                                   "train_examples": 250, "test_examples": 100}}})
    evaluator = build_evaluators(evals)[0]
    metrics = evaluator.evaluate(SyntheticContext(z, labels))
    return z, labels, metrics


def test_keys_are_flat_floats_for_every_shift_score_and_feature_set(synthetic):
    *_, metrics = synthetic
    assert all(isinstance(v, float) for v in metrics.values())
    for feature in ("z", "z_image_1", "z_image_2", "concat"):
        for score in ("msp", "knn", "mahalanobis"):
            for metric in ("auroc", "aupr_in", "aupr_out", "fpr95"):
                assert f"ood/moved/{score}/{feature}/{metric}" in metrics
            for metric in ("auroc", "aurc", "eaurc", "augrc", "accuracy"):
                assert f"ood/failure/{score}/{feature}/{metric}" in metrics
    assert "ood/moved/interaction/z+z_image_1+z_image_2/auroc" in metrics


def test_feature_scores_equal_direct_library_calls_on_the_first_rows(synthetic):
    z, labels, metrics = synthetic
    train, test, moved = z["default", "train"], z["default", "test"], z["moved", "test"]
    train_y = labels["default", "train"]["label"][:250]
    first = ("image_1",)
    knn = KNN(k=5).fit(train[first][:250])
    expected = ood_metrics(knn.score(test[first][:100]), knn.score(moved[first][:100]))
    for metric, value in expected.items():
        assert metrics[f"ood/moved/knn/z_image_1/{metric}"] == pytest.approx(value, abs=1e-9)
    concat = lambda split: np.concatenate([split[("image_1",)], split[("image_2",)]], axis=1)
    maha = Mahalanobis().fit(concat(train)[:250], train_y)
    expected = ood_metrics(maha.score(concat(test)[:100]), maha.score(concat(moved)[:100]))
    assert metrics["ood/moved/mahalanobis/concat/auroc"] == pytest.approx(expected["auroc"], abs=1e-9)
    sets = lambda split, n: {"z": split[MODALITIES][:n], "z_image_1": split[first][:n],
                             "z_image_2": split[("image_2",)][:n]}
    residual = InteractionResidual().fit(sets(train, 250))
    expected = ood_metrics(residual.score(sets(test, 100)), residual.score(sets(moved, 100)))
    assert metrics["ood/moved/interaction/z+z_image_1+z_image_2/fpr95"] == pytest.approx(expected["fpr95"], abs=1e-9)


def test_msp_and_failure_metrics_match_an_independent_sklearn_probe(synthetic):
    z, labels, metrics = synthetic
    train_x, train_y = z["default", "train"][MODALITIES][:250], labels["default", "train"]["label"][:250]
    test_x, test_y = z["default", "test"][MODALITIES][:100], labels["default", "test"]["label"][:100]
    moved_x = z["moved", "test"][MODALITIES][:100]
    scaler = StandardScaler().fit(train_x)
    probe = LogisticRegression(C=1.0, max_iter=200).fit(scaler.transform(train_x), train_y)
    msp_in = probe.predict_proba(scaler.transform(test_x)).max(axis=1)
    msp_out = probe.predict_proba(scaler.transform(moved_x)).max(axis=1)
    is_in = np.r_[np.ones(len(msp_in)), np.zeros(len(msp_out))]
    assert metrics["ood/moved/msp/z/auroc"] == pytest.approx(roc_auc_score(is_in, np.r_[msp_in, msp_out]), abs=1e-5)
    assert metrics["ood/moved/msp/z/aupr_out"] == pytest.approx(
        average_precision_score(1 - is_in, -np.r_[msp_in, msp_out]), abs=1e-5)
    correct = probe.predict(scaler.transform(test_x)) == test_y
    assert metrics["ood/failure/msp/z/accuracy"] == pytest.approx(correct.mean())
    assert metrics["ood/failure/msp/z/auroc"] == pytest.approx(roc_auc_score(correct, msp_in), abs=1e-5)
    assert metrics["ood/failure/msp/z/aurc"] == pytest.approx(failure_metrics(msp_in, correct)["aurc"], abs=1e-5)


def test_a_shift_of_image_1_is_detected_on_image_1_and_not_on_image_2(synthetic):
    *_, metrics = synthetic
    assert metrics["ood/moved/knn/z_image_1/auroc"] > 0.9
    assert 0.35 < metrics["ood/moved/knn/z_image_2/auroc"] < 0.65


def test_arguments_are_checked_with_messages_naming_them():
    def build(**args):
        evals = resolve_config({"datasets": {"moved": "x"}, "tasks": {"T": "label"},
                                "evaluators": {"ood": {"type": "ood", **args}}})
        return build_evaluators(evals)[0]
    with pytest.raises(ValueError, match="ood.shifts names \\['gone'\\]"):
        build(shifts=("gone",))
    with pytest.raises(ValueError, match="ood.scores names \\['odin'\\]"):
        build(scores=("odin",))
    with pytest.raises(ValueError, match="ood.feature_sets"):
        build(feature_sets=("fused",))
    with pytest.raises(ValueError, match="ood.task='S'"):
        build(task="S")


def test_extraction_is_capped_by_the_largest_limit_of_the_evaluators_reading_a_split():
    evals = resolve_config({"datasets": {"moved": "x"}, "tasks": {"T": "label"}, "train_examples": 800,
                            "evaluators": {"ood": {"type": "ood", "shifts": ("moved",), "test_examples": 300},
                                           "probe": {"type": "linear_probe"}}})
    by_name = {e.name: e for e in build_evaluators(evals)}
    ood, probe = by_name["ood"], by_name["probe"]
    assert extraction_limit(("moved", "test"), [ood], evals) == 300
    assert extraction_limit(("default", "test"), [ood, probe], evals) == 0      # the probe reads all
    assert extraction_limit(("default", "train"), [ood], evals) == 800         # within train_examples
    assert extraction_limit(("default", "train"), [probe], evals) == 800


TINY_OOD_CONFIG = '''"""Bimodal Trifeatures 32 px with ood=true, sized for tests."""
from configs import trifeatures


def get_config(arg=None):
    c = trifeatures.get_config("cpu,ood=true")
    c.model.update(dict(width=32, heads=2, head_hidden=64, head_out=32))
    for m in c.model.modalities:
        c.model.encoders[m].encoder_args.channels = (8, 16, 16)
    c.batch_size, c.num_steps, c.ckpt_every, c.log_every = 16, 2, 2, 1
    c.evals.batch_size = 64
    c.evals.evaluators = {"ood": dict(c.evals.evaluators["ood"], scores=("msp", "knn", "interaction"),
                                      knn_k=10, train_examples=256, test_examples=128)}
    return c
'''


def test_ood_evaluator_runs_in_the_watcher_on_a_tiny_run(tmp_path):
    config_file = tmp_path / "tiny_ood.py"
    config_file.write_text(TINY_OOD_CONFIG)
    workdir, data_dir = tmp_path / "run", tmp_path / "tfds"
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO))
    common = [f"--config={config_file}", f"--workdir={workdir}", f"--config.data.data_dir={data_dir}"]
    for module, extra in (("comm_jax.train", []), ("comm_jax.evaluate", ["--step=2"])):
        done = subprocess.run([sys.executable, "-m", module, *common, *extra], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [json.loads(line) for line in open(workdir / "metrics" / "eval.jsonl")]
    assert [row["step"] for row in rows] == [2]
    row = rows[0]
    for shift in ("texture_1", "color_both", "shape_both", "blank_1", "noise_1", "blur_1"):
        for feature in ("z", "z_image_1", "z_image_2", "concat"):
            assert 0.0 <= row[f"ood/{shift}/knn/{feature}/auroc"] <= 1.0
        assert 0.0 <= row[f"ood/{shift}/interaction/z+z_image_1+z_image_2/fpr95"] <= 1.0
    assert 0.0 <= row["ood/failure/msp/z/accuracy"] <= 1.0
