"""Evaluators of frozen representations, selected by name in `config.evals.evaluators`.

Each entry `config.evals.evaluators.<name>` is a dict with a `type` (a key of `EVALUATOR_TYPES`, or
`"package.module:Class"`) and that type's arguments; `<name>` prefixes its metrics (`probe/R`).
Evaluator modules are imported only when selected, so importing this package (e.g. to load an
export) pulls in neither scikit-learn nor TensorFlow.
"""

from __future__ import annotations

import importlib
from typing import Any, Mapping, Sequence

import ml_collections
import numpy as np

EVALUATOR_TYPES: dict[str, str | type] = {
    "linear_probe": "comm_jax.evaluators.linear_probe:LinearProbe",
    "knn": "comm_jax.evaluators.knn:KNN",
    "retrieval": "comm_jax.evaluators.retrieval:Retrieval",
    "pid": "comm_jax.evaluators.pid:PIDEvaluator",
    "ood": "comm_jax.evaluators.ood:OOD",
}

DEFAULT_EVALS: dict[str, Any] = dict(
    probe_data=None,         # TFDS name of the `default` dataset (None: config.data.name)
    datasets={},             # more evaluation datasets: key -> TFDS name (evaluators pick one by `dataset`)
    tasks={},                # metric name -> label feature key, e.g. {"R": "shape"}
    task_means={},           # metric name -> task names averaged, e.g. {"U": ("U1", "U2")}
    train_split="train",     # features the probes and the kNN memory bank are fit on
    test_split="test",       # features scored
    batch_size=256,          # global evaluation batch, divisible by the number of devices
    train_examples=0,        # the first N examples of the train split (0: all)
    test_examples=0,         # the first N examples of the test split (0: all)
    poll_seconds=5.0,        # how often the watcher looks for new checkpoints
    max_attempts=3,          # restores of a listed checkpoint tried before it is skipped for good
    evaluators={
        "probe": {"type": "linear_probe"},
        "knn": {"type": "knn"},
        "retrieval": {"type": "retrieval"},
    },
)


# What an evaluator reads for a set of modalities: the model's Z of the set ("joint": the fused Z, or
# for the unimodal towers each modality's vector concatenated), or each modality's own Z concatenated
# ("concat").
FEATURE_KINDS = ("joint", "concat")
DEFAULT_DATASET = "default"
Source = tuple[str, str]     # (dataset key, split)


class Evaluator:
    """Base class: `requests` names the features it needs, `evaluate` turns them into metrics.

    Subclasses set `DEFAULTS` (their arguments, all of them) and read them from `self.args`. Every
    evaluator also takes `dataset` (a key of `evals.datasets`, default `default`): what it reads is
    keyed by (dataset, split), and features are extracted once per key for all evaluators.
    """

    DEFAULTS: dict[str, Any] = {}

    def __init__(self, name: str, args: Mapping[str, Any], evals: ml_collections.ConfigDict):
        unknown = sorted(set(args) - set(self.DEFAULTS) - {"type", "dataset"})
        if unknown:
            names = ", ".join(f"config.evals.evaluators.{name}.{k}" for k in unknown)
            raise ValueError(f"unknown evaluator argument(s) {names}; {type(self).__name__} takes "
                             f"{sorted(self.DEFAULTS)}")
        self.name = name
        self.args = {**self.DEFAULTS, **{k: v for k, v in args.items() if k not in ("type", "dataset")}}
        self.evals = evals
        self.dataset = args.get("dataset", DEFAULT_DATASET)
        if self.dataset not in dict(evals.datasets):
            raise ValueError(f"config.evals.evaluators.{name}.dataset={self.dataset!r} is not a key of "
                             f"config.evals.datasets {sorted(dict(evals.datasets))}")
        if self.args.get("features", "joint") not in FEATURE_KINDS:
            raise ValueError(f"config.evals.evaluators.{name}.features must be one of {FEATURE_KINDS}, "
                             f"got {self.args['features']!r}")

    def subset(self, modalities: Sequence[str]) -> tuple[str, ...]:
        """The modalities this evaluator embeds: its `modalities` argument, or all of the model's."""
        chosen = tuple(self.args.get("modalities") or modalities)
        unknown = [m for m in chosen if m not in modalities]
        if unknown:
            raise ValueError(f"config.evals.evaluators.{self.name}.modalities: {unknown} are not modalities "
                             f"of the model {list(modalities)}")
        return chosen

    def feature_subsets(self, modalities: Sequence[str]) -> list[tuple[str, ...]]:
        """The subsets whose Z make this evaluator's features: its subset itself (`features="joint"`,
        the fused Z) or each of its modalities alone (`features="concat"`)."""
        subset = self.subset(modalities)
        if self.args.get("features", "joint") == "concat":
            return [(m,) for m in subset]
        return [subset]

    def source(self, split: str) -> Source:
        return (self.dataset, split)

    def sources(self) -> list[Source]:
        """The (dataset, split) pairs this evaluator reads; by default the train and test splits of
        its dataset (a fit-then-score evaluator)."""
        return [self.source(s) for s in dict.fromkeys((self.evals.train_split, self.evals.test_split))]

    def example_limit(self, source: Source) -> int:
        """How many of the first examples of `source` this evaluator reads (0: all); a split is
        extracted up to the largest limit of the evaluators reading it, within `train_examples` /
        `test_examples`."""
        return 0

    def features(self, ctx, split: str) -> np.ndarray:
        """`[examples, dim]` features of `split` of this evaluator's dataset: the subsets of
        `feature_subsets`, concatenated."""
        parts = [ctx.z(self.source(split), s) for s in self.feature_subsets(ctx.modalities)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

    def labels(self, ctx, split: str, key: str) -> np.ndarray:
        return ctx.labels(self.source(split), key)

    def requests(self, modalities: Sequence[str]) -> list[tuple[Source, tuple[str, ...]]]:
        """((dataset, split), subset of modalities) pairs whose Z this evaluator reads: the
        `feature_subsets` of each of its `sources`."""
        return [(source, s) for source in self.sources() for s in self.feature_subsets(modalities)]

    def evaluate(self, ctx) -> dict[str, float]:
        """Metrics `{f"{self.name}/...": value}` for one checkpoint; `ctx` is a features.EvalContext."""
        raise NotImplementedError


def extraction_limit(source: Source, readers: Sequence[Evaluator], evals: ml_collections.ConfigDict) -> int:
    """The number of first examples of `source` to extract (0: all): `evals.train_examples` /
    `test_examples` for the train / test split, lowered to the largest `example_limit` of `readers`
    when every one of them has a limit."""
    configured = {evals.train_split: evals.train_examples, evals.test_split: evals.test_examples}.get(source[1], 0)
    wanted = [int(reader.example_limit(source)) for reader in readers]
    needed = max(wanted) if wanted and 0 not in wanted else 0
    limits = [limit for limit in (int(configured), needed) if limit]
    return min(limits) if limits else 0


def register(type_name: str, cls: type) -> None:
    """Makes `cls` (an Evaluator subclass) selectable as `type=type_name`."""
    EVALUATOR_TYPES[type_name] = cls


def evaluator_class(type_name: str) -> type:
    entry = EVALUATOR_TYPES.get(type_name, type_name)
    if isinstance(entry, type):
        return entry
    if ":" not in entry:
        raise ValueError(f"unknown evaluator type {type_name!r}; known: {sorted(EVALUATOR_TYPES)} "
                         f"or 'package.module:Class'")
    module, _, attr = entry.partition(":")
    return getattr(importlib.import_module(module), attr)


def resolve_config(evals: ml_collections.ConfigDict | Mapping[str, Any]) -> ml_collections.ConfigDict:
    """`config.evals` with the defaults of `DEFAULT_EVALS` for keys it lacks; an unknown key is an
    error naming it."""
    given = evals.to_dict() if isinstance(evals, ml_collections.ConfigDict) else dict(evals)
    unknown = sorted(set(given) - set(DEFAULT_EVALS))
    if unknown:
        raise ValueError(f"config.evals has unknown key(s) {unknown}; known: {sorted(DEFAULT_EVALS)}")
    merged = {**DEFAULT_EVALS, **{k: v for k, v in given.items() if v is not None or k == "probe_data"}}
    datasets = dict(merged["datasets"] or {})
    if DEFAULT_DATASET in datasets:
        raise ValueError(f"config.evals.datasets.{DEFAULT_DATASET} is config.evals.probe_data (or config.data.name); "
                         f"name the other datasets differently")
    merged["datasets"] = {DEFAULT_DATASET: merged["probe_data"], **datasets}
    for key in ("batch_size", "poll_seconds", "max_attempts"):
        if not merged[key] or merged[key] <= 0:
            raise ValueError(f"config.evals.{key} must be positive, got {merged[key]!r}")
    for key in ("train_examples", "test_examples"):
        if merged[key] < 0:
            raise ValueError(f"config.evals.{key} must be >= 0 (0: the whole split), got {merged[key]!r}")
    for mean, parts in dict(merged["task_means"]).items():
        missing = [p for p in parts if p not in merged["tasks"]]
        if missing:
            raise ValueError(f"config.evals.task_means.{mean} averages {missing}, which are not in config.evals.tasks")
    return ml_collections.ConfigDict(merged)


def build_evaluators(evals: ml_collections.ConfigDict) -> list[Evaluator]:
    """The evaluators `evals.evaluators` selects (after `resolve_config`), in config order."""
    built = []
    for name, spec in dict(evals.evaluators).items():
        spec = dict(spec)
        if "type" not in spec:
            raise ValueError(f"config.evals.evaluators.{name} needs a 'type'; known: {sorted(EVALUATOR_TYPES)}")
        built.append(evaluator_class(spec["type"])(name, spec, evals))
    return built


def with_task_means(metrics: dict[str, float], prefix: str,
                    task_means: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """Adds `prefix/<mean>` = mean of `prefix/<task>` over each group whose tasks were all scored."""
    out = dict(metrics)
    for mean, parts in dict(task_means).items():
        keys = [f"{prefix}/{p}" for p in parts]
        if keys and all(k in metrics for k in keys):
            out[f"{prefix}/{mean}"] = float(np.mean([metrics[k] for k in keys]))
    return out
