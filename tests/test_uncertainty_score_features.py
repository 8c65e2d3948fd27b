"""The score_features command writes, for tiny saved feature files, the same metrics as direct library
calls, and stops with a one-line error naming the file and key when an input is wrong."""

import json

import numpy as np
import pytest

from comm_jax.uncertainty.metrics import failure_metrics, ood_metrics
from comm_jax.uncertainty.score_features import main
from comm_jax.uncertainty.scores import (KNN, MSP, CrossModalDisagreement, Energy, InteractionResidual,
                                         Mahalanobis)

WIDTHS = {"z": 6, "z_image_1": 4, "z_image_2": 3}


def _arrays(seed, n, shift=0.0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    arrays = {f"features/{name}": rng.normal(size=(n, width)) + labels[:, None] for name, width in WIDTHS.items()}
    arrays["features/z_image_1"] += shift
    arrays["logits/z"] = np.eye(3)[labels] * 2 + rng.normal(size=(n, 3))
    arrays["logits/z_image_1"] = np.eye(3)[labels] + rng.normal(size=(n, 3)) + shift
    arrays["labels"] = labels
    return arrays


@pytest.fixture
def files(tmp_path):
    paths = {}
    for name, (seed, n, shift) in {"train": (0, 60, 0.0), "test": (1, 40, 0.0), "shifted": (2, 30, 3.0)}.items():
        paths[name] = str(tmp_path / f"{name}.npz")
        np.savez(paths[name], **_arrays(seed, n, shift))
    paths["output"] = str(tmp_path / "out.json")
    return paths


def _load(path):
    with np.load(path) as archive:
        return {key: archive[key] for key in archive.files}


def _row(rows, **keys):
    [match] = [row for row in rows if all(row[k] == v for k, v in keys.items())]
    return match


def _assert_metrics_equal(row, expected):
    for name, value in expected.items():
        if name == "intervals":
            for metric, bounds in value.items():
                assert row["intervals"][metric] == pytest.approx(list(bounds), abs=1e-9)
        elif np.isnan(value):
            assert row[name] is None
        else:
            assert row[name] == pytest.approx(value, abs=1e-9), name


def test_command_matches_direct_library_calls(files):
    report = main([f"--train={files['train']}", f"--test={files['test']}", f"--ood=shifted={files['shifted']}",
                   f"--output={files['output']}", "--knn_k=5", "--ssd_clusters=3", "--bootstrap=20"])
    with open(files["output"]) as handle:
        assert json.load(handle) == report
    train, test, shifted = _load(files["train"]), _load(files["test"]), _load(files["shifted"])
    assert set(report["scores"]) == {"msp", "max_logit", "energy", "gen", "mahalanobis", "relative_mahalanobis",
                                     "knn", "ssd", "disagreement", "interaction"}
    # 4 logit scores x 2 probes + 4 feature scores x 3 sets + 2 multimodal scores
    assert len(report["ood"]) == 8 + 12 + 2
    assert len(report["failure"]) == 2 * len(report["ood"])
    bootstrap = dict(bootstrap=20, alpha=0.05, seed=0)

    def sets(arrays, kind):
        return {key.split("/")[1]: value for key, value in arrays.items() if key.startswith(kind + "/")}

    direct = {
        ("knn", "z_image_1"): KNN(k=5).fit(train["features/z_image_1"]),
        ("mahalanobis", "z"): Mahalanobis().fit(train["features/z"], train["labels"]),
    }
    for (name, set_name), score in direct.items():
        expected = ood_metrics(score.score(test[f"features/{set_name}"]),
                               score.score(shifted[f"features/{set_name}"]), **bootstrap)
        _assert_metrics_equal(_row(report["ood"], ood="shifted", score=name, set=set_name), expected)

    energy = Energy()
    expected = ood_metrics(energy.score(test["logits/z_image_1"]), energy.score(shifted["logits/z_image_1"]),
                           **bootstrap)
    _assert_metrics_equal(_row(report["ood"], score="energy", input="logits", set="z_image_1"), expected)

    disagreement = CrossModalDisagreement(fused="z", divergence="js")
    expected = ood_metrics(disagreement.score(sets(test, "logits")), disagreement.score(sets(shifted, "logits")),
                           **bootstrap)
    _assert_metrics_equal(_row(report["ood"], score="disagreement", set="z+z_image_1"), expected)

    interaction = InteractionResidual(fused="z").fit(sets(train, "features"))
    expected = ood_metrics(interaction.score(sets(test, "features")), interaction.score(sets(shifted, "features")),
                           **bootstrap)
    _assert_metrics_equal(_row(report["ood"], score="interaction", set="z+z_image_1+z_image_2"), expected)

    correct = np.argmax(test["logits/z"], axis=1) == test["labels"]
    expected = failure_metrics(MSP().score(test["logits/z"]), correct, **bootstrap)
    _assert_metrics_equal(_row(report["failure"], probe="z", score="msp", set="z"), expected)
    knn_confidence = direct[("knn", "z_image_1")].score(test["features/z_image_1"])
    _assert_metrics_equal(_row(report["failure"], probe="z", score="knn", set="z_image_1"),
                          failure_metrics(knn_confidence, correct, **bootstrap))


def test_chosen_scores_and_label_free_files(files, tmp_path):
    arrays = {k: v for k, v in _load(files["train"]).items() if k.startswith("features/")}
    unlabelled = str(tmp_path / "unlabelled.npz")
    np.savez(unlabelled, **arrays)
    report = main([f"--train={unlabelled}", f"--test={files['test']}", f"--ood=shifted={files['shifted']}",
                   f"--output={files['output']}", "--scores=knn", "--knn_k=3"])
    assert {(row["score"], row["set"]) for row in report["ood"]} == {("knn", name) for name in WIDTHS}
    assert "intervals" not in report["ood"][0]


def _error(argv):
    with pytest.raises(SystemExit) as raised:
        main(argv)
    message = str(raised.value.code)
    assert "\n" not in message
    return message


def test_wrong_inputs_stop_with_a_one_line_error_naming_file_and_key(files, tmp_path):
    base = [f"--train={files['train']}", f"--test={files['test']}", f"--output={files['output']}", "--knn_k=3"]
    missing = str(tmp_path / "absent.npz")
    assert missing in _error([f"--train={missing}", *base[1:]])

    ood = {k: v for k, v in _arrays(3, 10).items() if k != "features/z_image_2"}
    lacking = str(tmp_path / "lacking.npz")
    np.savez(lacking, **ood)
    message = _error([*base, f"--ood=lacking={lacking}"])
    assert lacking in message and "'features/z_image_2'" in message

    narrow = _arrays(4, 10)
    narrow["features/z"] = narrow["features/z"][:, :2]
    narrow_path = str(tmp_path / "narrow.npz")
    np.savez(narrow_path, **narrow)
    message = _error([*base, f"--ood=narrow={narrow_path}"])
    assert narrow_path in message and "'features/z'" in message and "width 2" in message

    unlabelled = {k: v for k, v in _arrays(5, 20).items() if k != "labels"}
    unlabelled_path = str(tmp_path / "unlabelled.npz")
    np.savez(unlabelled_path, **unlabelled)
    message = _error([f"--train={unlabelled_path}", *base[1:], "--scores=mahalanobis"])
    assert unlabelled_path in message and "'labels'" in message

    odd = str(tmp_path / "odd.npz")
    np.savez(odd, **{**_arrays(6, 10), "embedding": np.zeros((10, 2))})
    assert "'embedding'" in _error([*base, f"--ood=odd={odd}"])

    ragged = str(tmp_path / "ragged.npz")
    np.savez(ragged, **{**_arrays(7, 10), "labels": np.zeros(9, int)})
    assert ragged in _error([*base, f"--ood=ragged={ragged}"])
