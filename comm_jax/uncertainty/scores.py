"""Every uncertainty score by name, with the kind of input it reads: logits `[n, classes]`, features
`[n, dim]`, or dicts of feature / logits sets for the multimodal ones. All give higher = more ID."""

from __future__ import annotations

from typing import Any

from comm_jax.uncertainty.gaussian_scores import Mahalanobis, RelativeMahalanobis
from comm_jax.uncertainty.logit_scores import GEN, MSP, Energy, MaxLogit
from comm_jax.uncertainty.multimodal_scores import CrossModalDisagreement, InteractionResidual, PerFeatureSet
from comm_jax.uncertainty.neighbour_scores import KNN, SSD, kmeans
from comm_jax.uncertainty.score_base import Score

LOGIT_SCORES: dict[str, type] = {"msp": MSP, "max_logit": MaxLogit, "energy": Energy, "gen": GEN}
FEATURE_SCORES: dict[str, type] = {
    "mahalanobis": Mahalanobis,
    "relative_mahalanobis": RelativeMahalanobis,
    "knn": KNN,
    "ssd": SSD,
}
# Read a dict of sets: "disagreement" the probes' logits, "interaction" the feature sets.
MULTIMODAL_SCORES: dict[str, type] = {"disagreement": CrossModalDisagreement, "interaction": InteractionResidual}
NEEDS_TRAIN_LABELS = frozenset({"mahalanobis", "relative_mahalanobis"})
ALL_SCORES = {**LOGIT_SCORES, **FEATURE_SCORES, **MULTIMODAL_SCORES}


def make_score(name: str, **options: Any):
    """The score registered as `name`, built with `options` (its constructor's keyword arguments)."""
    if name not in ALL_SCORES:
        raise ValueError(f"unknown score {name!r}; known: {sorted(ALL_SCORES)}")
    return ALL_SCORES[name](**options)


__all__ = [
    "ALL_SCORES", "CrossModalDisagreement", "Energy", "FEATURE_SCORES", "GEN", "InteractionResidual", "KNN",
    "LOGIT_SCORES", "MSP", "MULTIMODAL_SCORES", "Mahalanobis", "MaxLogit", "NEEDS_TRAIN_LABELS",
    "PerFeatureSet", "RelativeMahalanobis", "SSD", "Score", "kmeans", "make_score",
]
