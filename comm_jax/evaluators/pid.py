"""PID evaluator: the partial information decomposition, in bits, of what frozen representations hold
about each task label, estimated by `comm_jax.information.pid_from_features` (clustering + exact BROJA).

For two modalities m1, m2 and each task: `<name>/<task>/{R,U1,U2,S}` of (Z_m1, Z_m2; Y), each
modality's own Z; and, with `fused=True`, `<name>/<task>/fused_<m>/{R,U1,U2,S}` of (Z_fused, Z_m; Y)
for each m (Z_fused the Z of both modalities), whose U1 is what the fused Z holds beyond Z_m. Read on
the test split (the estimator fits nothing on labels).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from comm_jax.evaluators import Evaluator
from comm_jax.information import PID_PARTS, pid_from_features


class PIDEvaluator(Evaluator):
    """Arguments: `modalities` (the two modalities; empty: the model's, which must be two), `tasks`
    (names from `config.evals.tasks`; empty: all), `fused` (also the fused-vs-unimodal PIDs),
    `clusters`, `pca_dim`, `seed` (of the estimator), `split` (None: `evals.test_split`)."""

    DEFAULTS = dict(modalities=(), tasks=(), fused=True, clusters=20, pca_dim=8, seed=0, split=None)

    def __init__(self, name, args, evals):
        super().__init__(name, args, evals)
        unknown = [t for t in self.args["tasks"] if t not in dict(evals.tasks)]
        if unknown:
            raise ValueError(f"config.evals.evaluators.{name}.tasks names {unknown}, which are not in "
                             f"config.evals.tasks {sorted(dict(evals.tasks))}")

    def _split(self) -> str:
        return self.args["split"] or self.evals.test_split

    def _pair(self, modalities: Sequence[str]) -> tuple[str, str]:
        chosen = self.subset(modalities)
        if len(chosen) != 2:
            raise ValueError(f"config.evals.evaluators.{self.name}: the PID evaluator decomposes two modalities, "
                             f"got {list(chosen)} (set `modalities` to two of them)")
        return chosen[0], chosen[1]

    def sources(self):
        return [self.source(self._split())]

    def requests(self, modalities):
        m1, m2 = self._pair(modalities)
        subsets = [(m1,), (m2,)] + ([(m1, m2)] if self.args["fused"] else [])
        return [(self.source(self._split()), s) for s in subsets]

    def _parts(self, first: np.ndarray, second: np.ndarray, labels: np.ndarray, prefix: str) -> dict[str, float]:
        estimate = pid_from_features(first, second, labels, clusters=int(self.args["clusters"]),
                                     pca_dim=self.args["pca_dim"], seed=int(self.args["seed"]))
        return {f"{prefix}/{part}": float(estimate.parts[part]) for part in PID_PARTS}

    def evaluate(self, ctx) -> dict[str, float]:
        m1, m2 = self._pair(ctx.modalities)
        source = self.source(self._split())
        z = {m: ctx.z(source, (m,)) for m in (m1, m2)}
        tasks = dict(self.evals.tasks)
        metrics = {}
        for task in tuple(self.args["tasks"]) or tuple(tasks):
            labels = ctx.labels(source, tasks[task])
            metrics.update(self._parts(z[m1], z[m2], labels, f"{self.name}/{task}"))
            if self.args["fused"]:
                fused = ctx.z(source, (m1, m2))
                for m in (m1, m2):
                    metrics.update(self._parts(fused, z[m], labels, f"{self.name}/{task}/fused_{m}"))
        return metrics
