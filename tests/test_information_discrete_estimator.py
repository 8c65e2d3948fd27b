"""Clustering PID estimator: it recovers the PID of the discrete latents behind synthetic blob
features; its discretisation steps agree with scikit-learn and NumPy references; the bootstrap is
deterministic given its seed."""

import numpy as np
import pytest

from comm_jax.information.discrete_estimator import pid_from_codes, pid_from_features
from comm_jax.information.discretise import (
    discretise_labels, empirical_joint, kmeans, pca, standardise)
from comm_jax.information.pid import PID_PARTS, broja
from comm_jax.information.synthetic import RULES, blob_pid_case

RECOVERY_TOL = 0.05  # bits; over-clustering adds plug-in bias (see the sensitivity table)


@pytest.fixture(scope="module", params=RULES)
def case(request):
    return request.param, blob_pid_case(request.param, n=2000, seed=0)


@pytest.mark.parametrize("clusters, pca_dim", [(5, 4), (10, 8)])
def test_estimate_recovers_the_latent_pid(case, clusters, pca_dim):
    rule, data = case
    truth = broja(data.latent_joint)
    estimate = pid_from_features(data.features1, data.features2, data.labels,
                                 clusters=clusters, pca_dim=pca_dim, seed=0).parts
    for part in PID_PARTS:
        assert estimate[part] == pytest.approx(truth[part], abs=RECOVERY_TOL), (rule, part)


def test_latent_truths_are_the_designed_decompositions(case):
    rule, data = case
    truth = broja(data.latent_joint)
    dominant = {"unique": "U1", "redundant": "R", "synergy": "S"}[rule]
    designed_bits = 1.0 if rule == "synergy" else 2.0
    assert truth[dominant] == pytest.approx(designed_bits, abs=0.02)
    assert sum(truth.values()) - truth[dominant] < 0.02


def test_regression_labels_are_quantile_binned():
    data = blob_pid_case("unique", n=2000, seed=1)
    target = data.latent1 + np.random.default_rng(0).uniform(0, 0.5, size=len(data.latent1))
    with pytest.raises(ValueError, match="bins"):
        pid_from_features(data.features1, data.features2, target)
    estimate = pid_from_features(data.features1, data.features2, target, clusters=4, pca_dim=4,
                                 label_bins=4).parts
    # Quantile edges need not fall between the latent's levels: the truth uses the binned target.
    binned = np.searchsorted(np.quantile(target, [0.25, 0.5, 0.75]), target, side="right")
    truth = broja(empirical_joint(data.latent1, data.latent2, binned))
    for part in PID_PARTS:
        assert estimate[part] == pytest.approx(truth[part], abs=RECOVERY_TOL)


def test_bootstrap_is_deterministic_given_its_seed():
    rng = np.random.default_rng(0)
    codes = [rng.integers(3, size=400) for _ in range(2)]
    codes.append((codes[0] + codes[1] + (rng.random(400) < 0.2)) % 3)
    first = pid_from_codes(*codes, bootstrap=8, seed=5)
    again = pid_from_codes(*codes, bootstrap=8, seed=5)
    other = pid_from_codes(*codes, bootstrap=8, seed=6)
    np.testing.assert_array_equal(first.samples, again.samples)
    assert not np.array_equal(first.samples, other.samples)
    assert first.samples.shape == (8, 4)
    for part, (low, high) in first.intervals.items():
        column = first.samples[:, PID_PARTS.index(part)]
        assert low == pytest.approx(np.percentile(column, 2.5))
        assert high == pytest.approx(np.percentile(column, 97.5))
        assert low <= high


def test_empirical_joint_matches_histogramdd():
    rng = np.random.default_rng(1)
    codes = [rng.integers(k, size=500) for k in (3, 4, 2)]
    counts, _ = np.histogramdd(np.stack(codes, 1), bins=(3, 4, 2), range=((0, 3), (0, 4), (0, 2)))
    np.testing.assert_allclose(empirical_joint(*codes), counts / 500)


def test_pca_matches_scikit_learn():
    decomposition = pytest.importorskip("sklearn.decomposition")
    x = np.random.default_rng(2).normal(size=(300, 6)) @ np.diag([5, 4, 3, 2, 1, 0.5])
    ours = pca(x, 3)
    theirs = decomposition.PCA(n_components=3).fit_transform(x)
    signs = np.sign(np.sum(ours * theirs, 0))
    np.testing.assert_allclose(ours * signs, theirs, atol=1e-8)


def test_kmeans_finds_scikit_learns_clustering_of_blobs():
    cluster = pytest.importorskip("sklearn.cluster")
    metrics = pytest.importorskip("sklearn.metrics")
    data = blob_pid_case("redundant", n=1000, seed=3)
    points = standardise(data.features1)
    labels, centres = kmeans(points, 4, seed=0)
    reference = cluster.KMeans(4, n_init=4, random_state=0).fit(points)
    assert metrics.adjusted_rand_score(labels, reference.labels_) == pytest.approx(1.0)
    inertia = np.sum((points - centres[labels]) ** 2)
    assert inertia == pytest.approx(reference.inertia_, rel=1e-6)


def test_kmeans_is_deterministic_given_its_seed():
    points = np.random.default_rng(4).normal(size=(200, 3))
    np.testing.assert_array_equal(kmeans(points, 5, seed=1)[0], kmeans(points, 5, seed=1)[0])


def test_label_codes():
    np.testing.assert_array_equal(discretise_labels(np.array([7, 3, 7, 5])), [2, 0, 2, 1])
    np.testing.assert_array_equal(discretise_labels(np.array([1.0, 0.0, 1.0])), [1, 0, 1])
    bins = discretise_labels(np.random.default_rng(5).normal(size=1000), bins=4)
    np.testing.assert_array_equal(np.bincount(bins), [250, 250, 250, 250])


def test_mismatched_rows_are_rejected():
    with pytest.raises(ValueError, match="row counts"):
        pid_from_features(np.zeros((10, 2)), np.zeros((9, 2)), np.zeros(10, int))
