"""OOD and failure-prediction metrics agree with scikit-learn and with naive loop transcriptions of
their definitions, with and without ties, and give the documented values on edge cases."""

import itertools

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from comm_jax.uncertainty.metrics import failure_metrics, ood_metrics, risk_coverage


def _naive_auroc(positive_scores, negative_scores):
    wins = 0.0
    for p in positive_scores:
        for q in negative_scores:
            wins += 1.0 if p > q else 0.5 if p == q else 0.0
    return wins / (len(positive_scores) * len(negative_scores))


def _naive_average_precision(scores, positive):
    total, previous_recall = 0.0, 0.0
    for threshold in sorted(set(scores.tolist()), reverse=True):
        kept = scores >= threshold
        true_positives = np.sum(kept & positive)
        recall = true_positives / positive.sum()
        total += (recall - previous_recall) * true_positives / kept.sum()
        previous_recall = recall
    return total


def _naive_fpr95(in_scores, out_scores):
    ordered = sorted(in_scores.tolist())
    position = 0.05 * (len(ordered) - 1)
    low = int(np.floor(position))
    high = min(low + 1, len(ordered) - 1)
    threshold = ordered[low] + (position - low) * (ordered[high] - ordered[low])
    return sum(1 for s in out_scores if s >= threshold) / len(out_scores)


def _naive_errors_at(confidence, correct, k):
    """Errors among the k most confident; a tie group straddling k contributes its error rate."""
    errors, taken = 0.0, 0
    for value in sorted(set(confidence.tolist()), reverse=True):
        group = confidence == value
        size, group_errors = group.sum(), np.sum(group & ~correct)
        if taken + size <= k:
            errors, taken = errors + group_errors, taken + size
        else:
            return errors + (k - taken) * group_errors / size
    return errors


def _naive_failure(confidence, correct):
    n = len(confidence)
    errors = [_naive_errors_at(confidence, correct, k) for k in range(1, n + 1)]
    oracle = [max(0, k - correct.sum()) / k for k in range(1, n + 1)]
    aurc = sum(e / k for k, e in zip(range(1, n + 1), errors)) / n
    return {
        "aurc": aurc,
        "eaurc": aurc - sum(oracle) / n,
        "augrc": sum(e / n for e in errors) / n,
        "accuracy": correct.mean(),
    }


def _scores(rng, n, shift, ties):
    values = rng.normal(shift, 1.0, n)
    return np.round(values, 1) if ties else values


@pytest.mark.parametrize("ties", [False, True])
def test_ood_metrics_match_sklearn_and_naive_definitions(ties):
    rng = np.random.default_rng(1 + ties)
    in_scores, out_scores = _scores(rng, 150, 1.0, ties), _scores(rng, 90, 0.0, ties)
    got = ood_metrics(in_scores, out_scores)
    scores = np.concatenate([in_scores, out_scores])
    is_in = np.r_[np.ones(150, bool), np.zeros(90, bool)]
    np.testing.assert_allclose(got["auroc"], roc_auc_score(is_in, scores), atol=1e-6)
    np.testing.assert_allclose(got["auroc"], _naive_auroc(in_scores, out_scores), atol=1e-6)
    np.testing.assert_allclose(got["aupr_in"], average_precision_score(is_in, scores), atol=1e-6)
    np.testing.assert_allclose(got["aupr_in"], _naive_average_precision(scores, is_in), atol=1e-6)
    np.testing.assert_allclose(got["aupr_out"], average_precision_score(~is_in, -scores), atol=1e-6)
    np.testing.assert_allclose(got["aupr_out"], _naive_average_precision(-scores, ~is_in), atol=1e-6)
    np.testing.assert_allclose(got["fpr95"], _naive_fpr95(in_scores, out_scores), atol=1e-6)
    threshold = np.percentile(in_scores, 5)  # NumPy's default: linear interpolation
    np.testing.assert_allclose(got["fpr95"], np.mean(out_scores >= threshold), atol=1e-6)


def test_fpr95_threshold_is_the_linearly_interpolated_fifth_percentile():
    # 21 ID scores 0..20: position 0.05 * 20 = 1, the threshold is exactly 1.0.
    assert ood_metrics(np.arange(21.0), [0.5, 1.0, 1.5])["fpr95"] == pytest.approx(2 / 3)
    # 11 ID scores 0..10: position 0.5, threshold halfway between 0 and 1; "at or above" counts 0.5.
    assert ood_metrics(np.arange(11.0), [0.4, 0.5, 0.6, 0.49])["fpr95"] == pytest.approx(2 / 4)


@pytest.mark.parametrize("ties", [False, True])
def test_failure_metrics_match_sklearn_and_naive_definitions(ties):
    rng = np.random.default_rng(3 + ties)
    confidence = _scores(rng, 200, 0.0, ties)
    correct = rng.random(200) < 1 / (1 + np.exp(-2 * confidence))
    got = failure_metrics(confidence, correct)
    np.testing.assert_allclose(got["auroc"], roc_auc_score(correct, confidence), atol=1e-6)
    for name, value in _naive_failure(confidence, correct).items():
        np.testing.assert_allclose(got[name], value, atol=1e-6, err_msg=name)


def test_ties_equal_the_mean_over_every_ordering_of_tied_samples():
    confidence = np.array([0.9, 0.7, 0.7, 0.7, 0.4, 0.4, 0.2, 0.9])
    correct = np.array([True, False, True, False, True, False, False, True])
    n = len(confidence)
    groups = [np.flatnonzero(confidence == v) for v in sorted(set(confidence), reverse=True)]
    aurcs, augrcs = [], []
    for orders in itertools.product(*(itertools.permutations(g) for g in groups)):
        wrong = ~correct[np.concatenate(orders)]
        errors = np.cumsum(wrong)
        aurcs.append(np.mean(errors / np.arange(1, n + 1)))
        augrcs.append(np.mean(errors / n))
    got = failure_metrics(confidence, correct)
    np.testing.assert_allclose(got["aurc"], np.mean(aurcs), atol=1e-12)
    np.testing.assert_allclose(got["augrc"], np.mean(augrcs), atol=1e-12)
    shuffled = np.random.default_rng(0).permutation(n)
    assert failure_metrics(confidence[shuffled], correct[shuffled]) == got


def test_risk_coverage_curve_is_what_the_metrics_average():
    rng = np.random.default_rng(5)
    confidence, correct = rng.random(50), rng.random(50) < 0.7
    stats = risk_coverage(confidence, correct)
    order = np.argsort(-confidence)
    errors = np.cumsum(~correct[order])
    np.testing.assert_allclose(stats.selective_risk[0], errors / np.arange(1, 51))
    np.testing.assert_allclose(stats.coverage, np.arange(1, 51) / 50)
    assert failure_metrics(confidence, correct)["aurc"] == pytest.approx(stats.selective_risk.mean())


def test_failure_edge_cases_have_documented_values():
    n = 10
    confidence = np.linspace(0, 1, n)
    all_correct = failure_metrics(confidence, np.ones(n, bool))
    assert np.isnan(all_correct["auroc"])
    assert (all_correct["aurc"], all_correct["eaurc"], all_correct["augrc"]) == (0, 0, 0)
    assert all_correct["accuracy"] == 1
    all_wrong = failure_metrics(confidence, np.zeros(n, bool))
    assert np.isnan(all_wrong["auroc"])
    assert all_wrong["aurc"] == pytest.approx(1) and all_wrong["eaurc"] == pytest.approx(0)
    assert all_wrong["augrc"] == pytest.approx((n + 1) / (2 * n))
    correct = np.arange(n) % 4 != 0                  # 3 errors out of 10
    constant = failure_metrics(np.full(n, 0.3), correct)
    assert constant["auroc"] == 0.5
    assert constant["aurc"] == pytest.approx(0.3)  # every coverage has the overall error rate
    assert constant["augrc"] == pytest.approx(0.3 * (n + 1) / (2 * n))


def test_ood_edge_cases_and_bad_inputs():
    constant = ood_metrics(np.zeros(6), np.zeros(4))
    assert constant["auroc"] == 0.5 and constant["fpr95"] == 1.0
    assert constant["aupr_in"] == pytest.approx(0.6) and constant["aupr_out"] == pytest.approx(0.4)
    with pytest.raises(ValueError, match="out_scores is empty"):
        ood_metrics([1.0, 2.0], [])
    with pytest.raises(ValueError, match="NaN"):
        ood_metrics([1.0, np.nan], [0.0])
    with pytest.raises(ValueError, match="entries"):
        failure_metrics([0.1, 0.2, 0.3], [True, False])


def test_ood_bootstrap_matches_a_loop_over_the_same_resamples():
    rng = np.random.default_rng(7)
    in_scores, out_scores = np.round(rng.normal(1, 1, 60), 1), np.round(rng.normal(0, 1, 40), 1)
    got = ood_metrics(in_scores, out_scores, bootstrap=40, alpha=0.1, seed=11)
    draws = np.random.default_rng(11)
    in_index = draws.integers(0, 60, (40, 60))
    out_index = draws.integers(0, 40, (40, 40))
    resampled = {"auroc": [], "aupr_in": [], "fpr95": []}
    for i, o in zip(in_index, out_index):
        scores = np.concatenate([in_scores[i], out_scores[o]])
        is_in = np.r_[np.ones(60, bool), np.zeros(40, bool)]
        resampled["auroc"].append(roc_auc_score(is_in, scores))
        resampled["aupr_in"].append(average_precision_score(is_in, scores))
        resampled["fpr95"].append(_naive_fpr95(in_scores[i], out_scores[o]))
    for name, values in resampled.items():
        np.testing.assert_allclose(got["intervals"][name], np.percentile(values, [5, 95]), atol=1e-9)
    assert ood_metrics(in_scores, out_scores, bootstrap=40, alpha=0.1, seed=11) == got
    assert ood_metrics(in_scores, out_scores, bootstrap=40, alpha=0.1, seed=12) != got


def test_failure_bootstrap_resamples_pairs_and_is_seeded():
    rng = np.random.default_rng(8)
    confidence = rng.random(80)
    correct = rng.random(80) < confidence
    got = failure_metrics(confidence, correct, bootstrap=30, seed=3)
    index = np.random.default_rng(3).integers(0, 80, (30, 80))
    aurcs = [_naive_failure(confidence[i], correct[i])["aurc"] for i in index]
    np.testing.assert_allclose(got["intervals"]["aurc"], np.percentile(aurcs, [2.5, 97.5]), atol=1e-9)
    assert set(got["intervals"]) == {"auroc", "aurc", "eaurc", "augrc", "accuracy"}
    assert failure_metrics(confidence, correct, bootstrap=30, seed=3) == got
