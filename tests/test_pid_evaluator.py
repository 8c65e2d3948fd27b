"""The `pid` evaluator reports, for each task, the PID of the two modalities' own Z and of the fused Z
with each of them, exactly as direct calls of `pid_from_features` on the same features give."""

import ml_collections
import numpy as np
import pytest

from comm_jax.evaluators import build_evaluators, resolve_config
from comm_jax.information import pid_from_features
from comm_jax.information.synthetic import blob_pid_case, embed_as_blobs


class FakeContext:
    """The features of one (dataset, split): each subset's Z and the labels."""

    modalities = ("a", "b")

    def __init__(self, z, labels):
        self._z, self._labels = z, labels
        self.asked = []

    def z(self, source, subset):
        self.asked.append((source, tuple(subset)))
        return self._z[tuple(subset)]

    def labels(self, source, key):
        return self._labels[key]


def _evaluator(**args):
    evals = resolve_config(ml_collections.ConfigDict(dict(
        tasks={"U": "unique", "S": "xor"}, evaluators={"pid": {"type": "pid", **args}})))
    return build_evaluators(evals)[0]


def test_metrics_equal_direct_estimates_on_the_same_features():
    rng = np.random.default_rng(1)
    latent_a, latent_b = rng.integers(4, size=600), rng.integers(2, size=600)
    za, zb = embed_as_blobs(latent_a, 8, 12.0, rng), embed_as_blobs(latent_b, 8, 12.0, rng)
    fused = np.concatenate([za, zb], 1)
    # U: the high bit of a's latent (unique to a); S: a's low bit xor b's latent (synergistic)
    labels = {"unique": latent_a >> 1, "xor": (latent_a & 1) ^ latent_b}
    ctx = FakeContext({("a",): za, ("b",): zb, ("a", "b"): fused}, labels)
    evaluator = _evaluator(clusters=8, pca_dim=4)
    metrics = evaluator.evaluate(ctx)
    assert {s for _, s in evaluator.requests(ctx.modalities)} == {("a",), ("b",), ("a", "b")}
    assert all(source == ("default", "test") for source, _ in ctx.asked)
    for task, key in (("U", "unique"), ("S", "xor")):
        direct = pid_from_features(za, zb, labels[key], clusters=8, pca_dim=4, seed=0).parts
        for part, value in direct.items():
            assert metrics[f"pid/{task}/{part}"] == pytest.approx(value, abs=1e-9)
        for name, other in (("a", za), ("b", zb)):
            direct = pid_from_features(fused, other, labels[key], clusters=8, pca_dim=4, seed=0).parts
            for part, value in direct.items():
                assert metrics[f"pid/{task}/fused_{name}/{part}"] == pytest.approx(value, abs=1e-9)
    # the decomposition reads what the features hold: U's bit is unique to Z_a, S's is synergistic,
    # and the fused Z holds it beyond Z_b
    assert metrics["pid/U/U1"] > 0.8 and metrics["pid/U/U2"] < 0.1
    assert metrics["pid/S/S"] > 0.8
    assert metrics["pid/S/fused_b/U1"] > 0.5
    assert all(isinstance(v, float) for v in metrics.values())


def test_without_fused_and_with_a_task_subset_it_asks_only_for_what_it_reports():
    evaluator = _evaluator(fused=False, tasks=("U",), clusters=4, pca_dim=None)
    assert [s for _, s in evaluator.requests(("a", "b"))] == [("a",), ("b",)]
    case = blob_pid_case("redundant", n=300, seed=2)
    ctx = FakeContext({("a",): case.features1, ("b",): case.features2}, {"unique": case.labels})
    assert sorted(evaluator.evaluate(ctx)) == [f"pid/U/{p}" for p in ("R", "S", "U1", "U2")]


def test_it_names_the_key_when_the_model_has_not_two_modalities():
    with pytest.raises(ValueError, match="decomposes two modalities"):
        _evaluator().requests(("a", "b", "c"))
    with pytest.raises(ValueError, match=r"evaluators.pid.tasks names \['T'\]"):
        _evaluator(tasks=("T",))
