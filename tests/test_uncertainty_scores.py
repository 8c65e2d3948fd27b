"""Uncertainty scores agree with independent NumPy / SciPy / scikit-learn computations, give the same
numbers batched and unbatched, and the per-set Mahalanobis score finds the one shifted modality."""

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.special import logsumexp, softmax
from scipy.stats import entropy
from sklearn.covariance import EmpiricalCovariance, LedoitWolf, ShrunkCovariance
from sklearn.linear_model import Ridge
from sklearn.neighbors import NearestNeighbors

import jax

from comm_jax.uncertainty.gaussian_scores import ledoit_wolf_shrinkage
from comm_jax.uncertainty.metrics import ood_metrics
from comm_jax.uncertainty.neighbour_scores import kmeans_plus_plus_init, kth_largest, lloyd
from comm_jax.uncertainty.scores import (GEN, KNN, MSP, SSD, CrossModalDisagreement, Energy,
                                         InteractionResidual, Mahalanobis, MaxLogit, PerFeatureSet,
                                         RelativeMahalanobis, kmeans)

TOLERANCE = dict(rtol=1e-4, atol=1e-4)  # float32 JAX scores against float64 references


def _labelled_features(seed, n=240, dim=6, classes=3):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    centres = rng.normal(0, 2, (classes, dim))
    mixing = rng.normal(size=(dim, dim)) / np.sqrt(dim) + np.eye(dim)
    features = centres[labels] + rng.normal(size=(n, dim)) @ mixing
    test = rng.normal(0, 2, (40, dim)) @ mixing
    return features, labels, test


def _reference_class_distances(estimator, features, labels, test):
    """Squared distances `[m, classes]` with one scikit-learn covariance fitted on class-centred rows."""
    classes = np.unique(labels)
    means = np.stack([features[labels == c].mean(axis=0) for c in classes])
    centred = features - means[np.searchsorted(classes, labels)]
    estimator.fit(centred)
    return np.stack([estimator.mahalanobis(test - m) for m in means], axis=1)


def test_logit_scores_match_numpy_formulas():
    logits = np.random.default_rng(0).normal(0, 3, (30, 7))
    probabilities = softmax(logits, axis=1)
    np.testing.assert_allclose(MSP().score(logits), probabilities.max(axis=1), **TOLERANCE)
    np.testing.assert_allclose(MaxLogit().score(logits), logits.max(axis=1), **TOLERANCE)
    np.testing.assert_allclose(Energy(temperature=2.0).score(logits),
                               2.0 * logsumexp(logits / 2.0, axis=1), **TOLERANCE)
    for top_m in (3, 100):
        largest = np.sort(probabilities, axis=1)[:, ::-1][:, :top_m]
        expected = -np.sum(largest ** 0.1 * (1 - largest) ** 0.1, axis=1)
        np.testing.assert_allclose(GEN(gamma=0.1, top_m=top_m).score(logits), expected, **TOLERANCE)


@pytest.mark.parametrize("shrinkage, estimator", [
    (0.0, EmpiricalCovariance(assume_centered=True)),
    ("ledoit_wolf", LedoitWolf(assume_centered=True)),
    (0.3, ShrunkCovariance(shrinkage=0.3, assume_centered=True)),
])
def test_mahalanobis_matches_sklearn_covariance(shrinkage, estimator):
    features, labels, test = _labelled_features(1)
    reference = _reference_class_distances(estimator, features, labels, test)
    score = Mahalanobis(shrinkage=shrinkage).fit(features, labels)
    np.testing.assert_allclose(score.class_distances(test), reference, **TOLERANCE)
    np.testing.assert_allclose(score.score(test), -reference.min(axis=1), **TOLERANCE)


def test_ledoit_wolf_coefficient_matches_sklearn():
    features, _, _ = _labelled_features(2, n=50, dim=20)
    centred = features - features.mean(axis=0)
    assert ledoit_wolf_shrinkage(centred) == pytest.approx(
        LedoitWolf(assume_centered=True).fit(centred).shrinkage_, abs=1e-10)


def test_relative_mahalanobis_subtracts_the_class_agnostic_gaussian():
    features, labels, test = _labelled_features(3)
    classes = _reference_class_distances(LedoitWolf(assume_centered=True), features, labels, test)
    background = LedoitWolf().fit(features).mahalanobis(test)
    got = RelativeMahalanobis().fit(features, labels).score(test)
    np.testing.assert_allclose(got, -(classes - background[:, None]).min(axis=1), **TOLERANCE)


def test_knn_matches_sklearn_nearest_neighbours():
    rng = np.random.default_rng(4)
    train, test = rng.normal(size=(300, 12)), rng.normal(size=(45, 12))
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    distances, _ = NearestNeighbors(n_neighbors=7).fit(unit(train)).kneighbors(unit(test))
    np.testing.assert_allclose(KNN(k=7).fit(train).score(test), -distances[:, -1], **TOLERANCE)


def test_kth_largest_is_exact_with_ties_and_signs():
    rng = np.random.default_rng(17)
    values = np.round(rng.normal(0, 2, (6, 40)), 1).astype(np.float32)
    values[0, :5] = [np.inf, -np.inf, 0.0, -0.0, 1e-30]
    descending = -np.sort(-values, axis=1)
    for k in (1, 2, 7, 40):
        np.testing.assert_array_equal(np.asarray(kth_largest(values, k)), descending[:, k - 1])


def _blobs(seed, n=300, dim=4, clusters=5):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 5, (clusters, dim))
    return (centres[rng.integers(0, clusters, n)] + rng.normal(size=(n, dim))).astype(np.float32)


def test_kmeans_matches_numpy_lloyd_from_the_same_init_and_is_a_fixed_point():
    rows = _blobs(5)
    initial = np.asarray(kmeans_plus_plus_init(rows, 5, jax.random.key(0)))
    assert all(np.any(np.all(rows == c, axis=1)) for c in initial)  # k-means++ picks data rows
    centres = initial.astype(np.float64)
    for _ in range(100):
        assignment = np.argmin(((rows[:, None] - centres[None]) ** 2).sum(-1), axis=1)
        updated = np.stack([rows[assignment == j].mean(0) if np.any(assignment == j) else centres[j]
                            for j in range(5)])
        if np.allclose(updated, centres):
            break
        centres = updated
    got_centres, got_assignment = kmeans(rows, 5, seed=0)
    np.testing.assert_allclose(got_centres, centres, **TOLERANCE)
    np.testing.assert_array_equal(got_assignment, assignment)
    nearest = np.argmin(((rows[:, None] - got_centres[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(nearest, got_assignment)
    for j in range(5):
        np.testing.assert_allclose(got_centres[j], rows[got_assignment == j].mean(0), **TOLERANCE)
    again_centres, _ = lloyd(rows, got_centres)
    np.testing.assert_allclose(np.asarray(again_centres), got_centres, **TOLERANCE)


def test_kmeans_init_is_seeded():
    rows = _blobs(6)
    same = [np.asarray(kmeans_plus_plus_init(rows, 4, jax.random.key(3))) for _ in range(2)]
    np.testing.assert_array_equal(same[0], same[1])
    other = np.asarray(kmeans_plus_plus_init(rows, 4, jax.random.key(4)))
    assert not np.array_equal(same[0], other)


def test_ssd_is_mahalanobis_to_the_kmeans_clusters_of_unit_rows():
    rows, test = _blobs(7), _blobs(8, n=30)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    _, clusters = kmeans(unit(rows), 4, seed=2)
    reference = _reference_class_distances(LedoitWolf(assume_centered=True), unit(rows).astype(np.float64),
                                           clusters, unit(test))
    got = SSD(num_clusters=4, seed=2).fit(rows).score(test)
    np.testing.assert_allclose(got, -reference.min(axis=1), **TOLERANCE)


def _multimodal_sets(seed, n):
    rng = np.random.default_rng(seed)
    image_1, image_2 = rng.normal(size=(n, 5)), rng.normal(size=(n, 4))
    mixing = rng.normal(size=(9, 6))
    fused = np.concatenate([image_1, image_2], 1) @ mixing + 0.5 * (image_1[:, :1] * image_2[:, :1])
    return {"z": fused + 0.1 * rng.normal(size=(n, 6)), "z_image_1": image_1, "z_image_2": image_2}


def test_interaction_residual_matches_sklearn_ridge_and_covariance():
    train, test = _multimodal_sets(9, 200), _multimodal_sets(10, 35)
    score = InteractionResidual(ridge=2.0).fit(train)
    inputs = lambda sets: np.concatenate([sets["z_image_1"], sets["z_image_2"]], 1)  # noqa: E731
    ridge = Ridge(alpha=2.0).fit(inputs(train), train["z"])
    np.testing.assert_allclose(score.coefficients, ridge.coef_.T, atol=1e-8)
    np.testing.assert_allclose(score.intercept, ridge.intercept_, atol=1e-8)
    test_residuals = test["z"] - ridge.predict(inputs(test))
    np.testing.assert_allclose(score.residuals(test), test_residuals, atol=1e-8)
    covariance = LedoitWolf(assume_centered=True).fit(train["z"] - ridge.predict(inputs(train)))
    np.testing.assert_allclose(score.score(test), -covariance.mahalanobis(test_residuals), **TOLERANCE)


def test_cross_modal_disagreement_matches_scipy_divergences():
    rng = np.random.default_rng(11)
    logits = {"z": rng.normal(0, 2, (25, 4)), "z_a": rng.normal(0, 2, (25, 4)),
              "z_b": rng.normal(0, 2, (25, 4))}
    fused = softmax(logits["z"], axis=1)
    unimodal = [softmax(logits[name], axis=1) for name in ("z_a", "z_b")]
    expected = {
        "kl": -np.mean([entropy(p, fused, axis=1) for p in unimodal], axis=0),
        "js": -np.mean([jensenshannon(p, fused, axis=1) ** 2 for p in unimodal], axis=0),
        "argmax": -np.mean([p.argmax(1) != fused.argmax(1) for p in unimodal], axis=0),
    }
    for divergence, reference in expected.items():
        got = CrossModalDisagreement(fused="z", divergence=divergence).score(logits)
        np.testing.assert_allclose(got, reference, **TOLERANCE, err_msg=divergence)


def test_batched_and_unbatched_scores_agree():
    features, labels, test = _labelled_features(12)
    logits = np.random.default_rng(12).normal(size=(40, 5))
    sets = _multimodal_sets(13, 40)
    cases = [
        (lambda b: Mahalanobis(batch_size=b).fit(features, labels), test),
        (lambda b: RelativeMahalanobis(batch_size=b).fit(features, labels), test),
        (lambda b: KNN(k=5, batch_size=b).fit(features), test),
        (lambda b: SSD(num_clusters=3, batch_size=b).fit(features), test),
        (lambda b: GEN(top_m=3, batch_size=b), logits),
        (lambda b: Energy(batch_size=b), logits),
        (lambda b: InteractionResidual(batch_size=b).fit(_multimodal_sets(14, 100)), sets),
        (lambda b: CrossModalDisagreement(batch_size=b), {"z": logits, "z_a": logits[::-1]}),
    ]
    for make, inputs in cases:
        np.testing.assert_allclose(make(7).score(inputs), make(4096).score(inputs), rtol=1e-5, atol=1e-5)


def test_per_set_mahalanobis_names_the_shifted_modality():
    rng = np.random.default_rng(15)
    dims = {"z": 8, "z_image_1": 6, "z_image_2": 6}
    centres = {name: rng.normal(0, 3, (4, dim)) for name, dim in dims.items()}

    def draw(n, shift_image_1=0.0):
        labels = rng.integers(0, 4, n)
        sets = {name: centres[name][labels] + rng.normal(size=(n, dim)) for name, dim in dims.items()}
        sets["z_image_1"] = sets["z_image_1"] + shift_image_1
        return sets, labels

    train, train_labels = draw(600)
    test, _ = draw(400)
    shifted, _ = draw(400, shift_image_1=4.0)
    per_set = PerFeatureSet(Mahalanobis).fit(train, train_labels)
    in_scores, out_scores = per_set.score(test), per_set.score(shifted)
    assert set(in_scores) == set(dims)
    assert ood_metrics(in_scores["z_image_1"], out_scores["z_image_1"])["auroc"] > 0.9
    assert abs(ood_metrics(in_scores["z_image_2"], out_scores["z_image_2"])["auroc"] - 0.5) < 0.08
    assert abs(ood_metrics(in_scores["z"], out_scores["z"])["auroc"] - 0.5) < 0.08


def test_scores_reject_missing_labels_and_bad_sizes():
    features, _, test = _labelled_features(16, n=20)
    with pytest.raises(ValueError, match="train_labels"):
        Mahalanobis().fit(features)
    with pytest.raises(ValueError, match="exceeds"):
        KNN(k=50).fit(features)
    with pytest.raises(RuntimeError, match="fit"):
        KNN().score(test)
    with pytest.raises(ValueError, match="columns"):
        KNN(k=3).fit(features).score(test[:, :2])
    with pytest.raises(ValueError, match="fused"):
        CrossModalDisagreement(fused="z").score({"z_a": test, "z_b": test})
    with pytest.raises(ValueError, match="not fitted"):
        PerFeatureSet(lambda: KNN(k=3)).fit({"z": features}).score({"z_audio": test})
