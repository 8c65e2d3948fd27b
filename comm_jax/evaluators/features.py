"""Frozen-representation extraction: Z `[examples, width]` for several subsets of modalities in one
pass over an evaluation split, batches sharded over the mesh and padding rows dropped; and the
per-checkpoint context that extracts each split once for all evaluators."""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from comm_jax.evaluators.frozen_model import FrozenModel, Subset
from comm_jax.train_step import put_batch


@dataclasses.dataclass
class SplitFeatures:
    """Frozen features of one split: `z[subset]` is float32 `[examples, width]`, `labels[key]` is
    `[examples, ...]`, rows in the split's order with padding removed."""

    z: dict[Subset, np.ndarray]
    labels: dict[str, np.ndarray]

    @property
    def num_examples(self) -> int:
        return len(next(iter(self.z.values())))


def extract_features(model: FrozenModel, batches: Iterable[Mapping[str, Any]], subsets: Sequence[Subset],
                     mesh: Mesh, *, max_examples: int = 0) -> SplitFeatures:
    """Runs `model` over eval batches (`{"inputs", "labels", "mask"}`, the global batch divisible by
    `mesh.size`) and keeps the rows whose mask is True, at most `max_examples` (0: all)."""
    if jax.process_count() > 1:
        raise NotImplementedError("feature extraction gathers on one host; run evaluation as a single process")
    subsets = tuple(dict.fromkeys(tuple(s) for s in subsets))
    z_parts: list[np.ndarray] = []
    label_parts: dict[str, list[np.ndarray]] = {}
    kept = 0
    for batch in batches:
        size = len(batch["mask"])
        if size % mesh.size:
            raise ValueError(f"evaluation batch of {size} is not divisible by the {mesh.size} devices of the mesh")
        device_inputs = put_batch(dict(batch["inputs"]), mesh)
        valid = put_batch(dict(batch["valid"]), mesh) if batch.get("valid") else None
        z = np.asarray(model.representations(device_inputs, subsets, valid))   # [subsets, batch, width]
        mask = np.asarray(batch["mask"], bool)
        z_parts.append(z[:, mask])
        for key, value in batch.get("labels", {}).items():
            label_parts.setdefault(key, []).append(np.asarray(value)[mask])
        kept += int(mask.sum())
        if max_examples and kept >= max_examples:
            break
    if not z_parts:
        raise ValueError("the evaluation split yielded no batches")
    limit = min(kept, max_examples) if max_examples else kept
    stacked = np.concatenate(z_parts, axis=1)[:, :limit]
    return SplitFeatures(z={s: stacked[i] for i, s in enumerate(subsets)},
                         labels={k: np.concatenate(v)[:limit] for k, v in label_parts.items()})


class EvalContext:
    """What evaluators of one checkpoint share: the frozen model and each split's features,
    extracted once (on first use) for every subset any evaluator asked for."""

    def __init__(self, model: FrozenModel, mesh: Mesh, sources: Mapping[str, Iterable],
                 requests: Mapping[str, Sequence[Subset]], max_examples: Mapping[str, int] | None = None):
        self.model, self.mesh = model, mesh
        self._sources = dict(sources)
        self._requests = {split: tuple(dict.fromkeys(subsets)) for split, subsets in requests.items()}
        self._max_examples = dict(max_examples or {})
        self._cache: dict[str, SplitFeatures | Exception] = {}

    @property
    def modalities(self) -> Subset:
        return self.model.modalities

    def split(self, split: str) -> SplitFeatures:
        """All requested features of `split`; a failed extraction is raised again, not retried."""
        if split not in self._cache:
            if split not in self._sources or split not in self._requests:
                raise KeyError(f"no evaluation data or feature request for split {split!r}")
            try:
                self._cache[split] = extract_features(self.model, self._sources[split], self._requests[split],
                                                      self.mesh, max_examples=self._max_examples.get(split, 0))
            except Exception as error:   # every evaluator that needs this split reports it
                self._cache[split] = error
        found = self._cache[split]
        if isinstance(found, Exception):
            raise found
        return found

    def z(self, split: str, subset: Sequence[str]) -> np.ndarray:
        """Z `[examples, width]` of `subset` on `split`."""
        features = self.split(split)
        key = tuple(subset)
        if key not in features.z:
            raise KeyError(f"features of subset {key} on split {split!r} were not requested")
        return features.z[key]

    def labels(self, split: str, key: str) -> np.ndarray:
        features = self.split(split)
        if key not in features.labels:
            raise KeyError(f"split {split!r} has no label {key!r}; it has {sorted(features.labels)}")
        return features.labels[key]
