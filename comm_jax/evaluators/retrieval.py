"""Cross-modal retrieval accuracy of frozen Z on the test split.

For an ordered pair of modalities (a, b), example i's single-modality representation Z_a[i] (fusion
with only a's tokens) queries the gallery {Z_b[j]} of all test examples; the query is a hit when
its own pair Z_b[i] is among the `top_k` most cosine-similar gallery entries. Metrics:
`<name>/<a>_to_<b>` (hit rate, chance is top_k / examples) and `<name>/mean` over all pairs.
"""

from __future__ import annotations

import itertools

import numpy as np

from comm_jax.evaluators import Evaluator


def retrieval_accuracy(queries: np.ndarray, gallery: np.ndarray, top_k: int = 1, chunk: int = 1024) -> float:
    """Fraction of rows i of `queries` `[n, dim]` whose row i of `gallery` `[n, dim]` is among their
    `top_k` cosine nearest gallery rows (ties counted against the query)."""
    if queries.shape[0] != gallery.shape[0]:
        raise ValueError(f"queries ({queries.shape[0]}) and gallery ({gallery.shape[0]}) must pair row by row")
    unit = lambda x: np.asarray(x, np.float32) / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    queries, gallery = unit(queries), unit(gallery)
    hits = 0
    for start in range(0, len(queries), chunk):
        sims = queries[start:start + chunk] @ gallery.T                            # [chunk, n]
        own = sims[np.arange(len(sims)), np.arange(start, start + len(sims))]
        hits += int(np.sum(np.sum(sims >= own[:, None], axis=1) <= top_k))       # rank of the pair
    return hits / len(queries)


class Retrieval(Evaluator):
    """Retrieval between each ordered pair of single modalities (none for a one-modality model)."""

    DEFAULTS = dict(top_k=1, modalities=())

    def __init__(self, name, args, evals):
        super().__init__(name, args, evals)
        if int(self.args["top_k"]) < 1:
            raise ValueError(f"config.evals.evaluators.{name}.top_k must be >= 1, got {self.args['top_k']}")

    def sources(self):
        return [self.source(self.evals.test_split)]

    def requests(self, modalities):
        return [(self.source(self.evals.test_split), (m,)) for m in self.subset(modalities)]

    def evaluate(self, ctx) -> dict[str, float]:
        test = self.source(self.evals.test_split)
        metrics = {f"{self.name}/{a}_to_{b}": retrieval_accuracy(ctx.z(test, (a,)), ctx.z(test, (b,)),
                                                                 int(self.args["top_k"]))
                   for a, b in itertools.permutations(self.subset(ctx.modalities), 2)}
        if metrics:
            metrics[f"{self.name}/mean"] = float(np.mean(list(metrics.values())))
        return metrics
