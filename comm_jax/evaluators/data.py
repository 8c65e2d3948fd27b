"""Evaluation data keyed by (dataset, split): this process's padded iterators of every split the
evaluators read, each loaded once and re-iterated for every checkpoint."""

from __future__ import annotations

from typing import Iterable, Sequence

import jax
import ml_collections

from comm_jax.evaluators import DEFAULT_DATASET, Source


def evaluation_data(cfg: ml_collections.ConfigDict, evals: ml_collections.ConfigDict,
                    sources: Sequence[Source]) -> dict[Source, Iterable]:
    """Iterators of `sources` ((dataset key, split) pairs; dataset keys of `evals.datasets`, whose
    `default` is `evals.probe_data`, or `cfg.data.name` when unset) with the labels of `evals.tasks`.
    Variable-length modalities are padded to their model input length, with masks."""
    from input_pipeline.pipeline import make_eval_iterator

    labels = tuple(dict.fromkeys(dict(evals.tasks).values()))
    batch = evals.batch_size // jax.process_count()
    encoders = cfg.model.encoders
    steps = {m: int(encoders[m].input_shape[0]) for m in cfg.model.modalities
             if encoders[m].get("variable_length", False)}
    out = {}
    for dataset, split in dict.fromkeys(tuple(s) for s in sources):
        data_cfg = ml_collections.ConfigDict(cfg.data.to_dict())
        name = dict(evals.datasets).get(dataset)
        if dataset not in dict(evals.datasets):
            raise ValueError(f"no evaluation dataset {dataset!r}; config.evals.datasets has {sorted(evals.datasets)}")
        data_cfg.name = name or (cfg.data.name if dataset == DEFAULT_DATASET else None)
        out[dataset, split] = make_eval_iterator(data_cfg, split, batch_size=batch, labels=labels, steps=steps,
                                                 process_index=jax.process_index(),
                                                 process_count=jax.process_count())
    return out
