"""Frozen-representation extraction: Z `[examples, dim]` for several subsets of modalities in one
pass over an evaluation split, batches sharded over the mesh, the rows of every process gathered and
padding rows dropped; and the per-checkpoint context that extracts each (dataset, split) once for all
evaluators."""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from comm_jax.evaluators import Source
from comm_jax.evaluators.frozen_model import FrozenModel, Subset
from comm_jax.mesh import put_batch


@dataclasses.dataclass
class SplitFeatures:
    """Frozen features of one split: `z[subset]` is float32 `[examples, dim]`, `labels[key]` is
    `[examples, ...]`, rows in the split's order with padding removed."""

    z: dict[Subset, np.ndarray]
    labels: dict[str, np.ndarray]

    @property
    def num_examples(self) -> int:
        return len(next(iter(self.z.values())))


def _as_bytes(x: np.ndarray) -> np.ndarray:
    """`[B, ...]` of any dtype -> uint8 `[B, bytes per row]`: labels travel through the devices
    losslessly (JAX without x64 would narrow int64 and float64)."""
    x = np.ascontiguousarray(x)
    return x.view(np.uint8).reshape(len(x), -1) if x.size else np.zeros((len(x), 0), np.uint8)


def _from_bytes(raw: np.ndarray, like: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(raw).view(like.dtype).reshape((len(raw),) + like.shape[1:])


def _gathered_batch(model: FrozenModel, batch: Mapping[str, Any], subsets: tuple[Subset, ...], mesh: Mesh,
                    position: int) -> tuple[list[np.ndarray], np.ndarray, dict[str, np.ndarray]]:
    """(Z `[global batch, dim]` per subset, split positions `[global batch]` (-1: padding), labels) of
    one step, the same on every process: each process's rows are placed on its devices and gathered."""
    mask = np.asarray(batch["mask"], bool)
    if "index" in batch:
        index = np.asarray(batch["index"], np.int64)
    elif jax.process_count() == 1:    # batches in the split's order: positions count on
        index = position + np.arange(len(mask), dtype=np.int64)
    else:
        raise ValueError("multi-process evaluation needs each batch's split positions under 'index'")
    inputs = put_batch(dict(batch["inputs"]), mesh)
    valid = put_batch(dict(batch["valid"]), mesh) if batch.get("valid") else None
    labels = {key: np.asarray(value) for key, value in batch.get("labels", {}).items()}
    index = np.where(mask, index, -1)
    z = model.representations(inputs, subsets, valid)
    if jax.process_count() == 1:
        return [np.asarray(x) for x in z], index, labels
    local = {"index": index.astype(np.int32), "labels": {key: _as_bytes(value) for key, value in labels.items()}}
    gathered = multihost_utils.process_allgather({"z": z, **put_batch(local, mesh)}, tiled=True)
    return ([np.asarray(x) for x in gathered["z"]], gathered["index"].astype(np.int64),
            {key: _from_bytes(gathered["labels"][key], value) for key, value in labels.items()})


def extract_features(model: FrozenModel, batches: Iterable[Mapping[str, Any]], subsets: Sequence[Subset],
                     mesh: Mesh, *, max_examples: int = 0) -> SplitFeatures:
    """Runs `model` over eval batches (`{"inputs", "labels", "mask", "index"}`, `index` the example's
    position in the split) and keeps the rows whose mask is True: the first `max_examples` of the
    split (0: all), in the split's order.

    Each process passes its own shard (the same number of batches on every process, global batch
    divisible by `mesh.size`); the rows of all processes are gathered, so every process returns the
    same features. A single-process caller may omit `index` when its batches follow the split's order.
    """
    subsets = tuple(dict.fromkeys(tuple(s) for s in subsets))
    z_parts: list[list[np.ndarray]] = []
    index_parts: list[np.ndarray] = []
    label_parts: dict[str, list[np.ndarray]] = {}
    position = kept = 0
    for batch in batches:
        size = len(batch["mask"]) * jax.process_count()
        if size % mesh.size:
            raise ValueError(f"evaluation batch of {size} is not divisible by the {mesh.size} devices of the mesh")
        z, index, labels = _gathered_batch(model, batch, subsets, mesh, position)
        position += len(batch["mask"])
        rows = index >= 0
        z_parts.append([x[rows] for x in z])
        index_parts.append(index[rows])
        for key, value in labels.items():
            label_parts.setdefault(key, []).append(value[rows])
        kept += int(rows.sum())
        # `kept` counts every process's rows: all stop at the same step. Examples are dealt to the
        # processes round-robin, so the first k steps hold the split's first k x global batch.
        if max_examples and kept >= max_examples:
            break
    if not z_parts:
        raise ValueError("the evaluation split yielded no batches")
    order = np.argsort(np.concatenate(index_parts), kind="stable")
    if max_examples:
        order = order[:max_examples]
    return SplitFeatures(z={s: np.concatenate([part[i] for part in z_parts])[order] for i, s in enumerate(subsets)},
                         labels={k: np.concatenate(v)[order] for k, v in label_parts.items()})


class EvalContext:
    """What evaluators of one checkpoint share: the frozen model and the features of each (dataset,
    split), extracted once (on first use) for every subset any evaluator asked for."""

    def __init__(self, model: FrozenModel, mesh: Mesh, sources: Mapping[Source, Iterable],
                 requests: Mapping[Source, Sequence[Subset]], max_examples: Mapping[Source, int] | None = None):
        self.model, self.mesh = model, mesh
        self._sources = dict(sources)
        self._requests = {source: tuple(dict.fromkeys(subsets)) for source, subsets in requests.items()}
        self._max_examples = dict(max_examples or {})
        self._cache: dict[Source, SplitFeatures | Exception] = {}

    @property
    def modalities(self) -> Subset:
        return self.model.modalities

    def split(self, source: Source) -> SplitFeatures:
        """All requested features of `source`; a failed extraction is raised again, not retried."""
        if source not in self._cache:
            if source not in self._sources or source not in self._requests:
                raise KeyError(f"no evaluation data or feature request for (dataset, split) {source}")
            try:
                self._cache[source] = extract_features(self.model, self._sources[source], self._requests[source],
                                                       self.mesh, max_examples=self._max_examples.get(source, 0))
            except Exception as error:   # every evaluator that needs this split reports it
                self._cache[source] = error
        found = self._cache[source]
        if isinstance(found, Exception):
            raise found
        return found

    def z(self, source: Source, subset: Sequence[str]) -> np.ndarray:
        """Z `[examples, dim]` of `subset` on `source` ((dataset, split))."""
        features = self.split(source)
        key = tuple(subset)
        if key not in features.z:
            raise KeyError(f"features of subset {key} on {source} were not requested")
        return features.z[key]

    def labels(self, source: Source, key: str) -> np.ndarray:
        features = self.split(source)
        if key not in features.labels:
            raise KeyError(f"{source} has no label {key!r}; it has {sorted(features.labels)}")
        return features.labels[key]
