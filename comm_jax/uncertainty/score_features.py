"""Scores saved features of any model: fits each score on a training file, scores the test file and
each OOD file, and writes OOD-detection and failure-prediction metrics as JSON.

    python -m comm_jax.uncertainty.score_features --train=TRAIN.npz --test=TEST.npz \\
        [--ood NAME=FILE.npz ...] --output=OUT.json [--scores=knn,energy,...] [--bootstrap=N]

File layout (`.npz`, written e.g. by `np.savez(path, **{"features/z": z, "labels": y})`):
- `features/<set>`: `[n, dim]` rows of one feature set (e.g. `features/z`, `features/z_image_1`);
- `logits/<set>`: `[n, classes]` a linear probe's logits on that set (optional);
- `labels`: `[n]` integer class indices (optional).
All arrays of a file have the same n; no other keys are allowed.

Which sets are scored: feature scores fit on every `features/<set>` of the training file (the
class-conditional ones need its `labels`) and read the same set, of the same width, from the test
and OOD files; logit scores read every `logits/<set>` of the test file, which the OOD files must
hold too. `disagreement` reads the test file's logits sets (the fused one is `--fused`), and
`interaction` the training file's feature sets. By default every score whose inputs exist is used.

Output JSON: `"ood"`, one row per (OOD file, score, set) with `ood_metrics` (test file = ID);
`"failure"`, one row per (probe, score, set) with `failure_metrics` on the test file, where
`correct = argmax(logits/<probe>) == labels` (needs test labels and logits). A row's `"input"` says
whether the score read `features` or `logits`; multimodal rows name their sets joined by `+`. NaN
metrics are written as null. A missing file or key, or disagreeing shapes, stop the command with a
one-line error naming the file and key.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any, NamedTuple, Sequence

import numpy as np

from comm_jax.uncertainty.metrics import failure_metrics, ood_metrics
from comm_jax.uncertainty.scores import (ALL_SCORES, FEATURE_SCORES, LOGIT_SCORES, NEEDS_TRAIN_LABELS,
                                         make_score)

FEATURES, LOGITS, LABELS = "features", "logits", "labels"


class InputError(ValueError):
    """A feature file is missing, lacks a key or holds arrays of the wrong shape, or an argument is invalid."""


class FeatureFile(NamedTuple):
    """The arrays of one `.npz` file (module docstring): `{set: [n, dim]}`, `{set: [n, classes]}`, `[n]`."""

    path: str
    features: dict[str, np.ndarray]
    logits: dict[str, np.ndarray]
    labels: np.ndarray | None


def load_feature_file(path: str) -> FeatureFile:
    """Reads and checks one `.npz` file in the module's layout."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except Exception as error:  # a corrupt archive surfaces as one of several exception types
        raise InputError(f"{path}: not a readable .npz file ({error})") from error
    sets: dict[str, dict[str, np.ndarray]] = {FEATURES: {}, LOGITS: {}}
    for key, array in arrays.items():
        kind, _, name = key.partition("/")
        if key == LABELS:
            if array.ndim != 1:
                raise InputError(f"{path}: key 'labels' must be [n], got shape {array.shape}")
        elif kind in sets and name:
            if array.ndim != 2:
                raise InputError(f"{path}: key {key!r} must be 2-D [n, dim], got shape {array.shape}")
            sets[kind][name] = array
        else:
            raise InputError(f"{path}: unexpected key {key!r} (expected features/<set>, logits/<set>, labels)")
    if not sets[FEATURES] and not sets[LOGITS]:
        raise InputError(f"{path}: no features/<set> or logits/<set> key")
    rows = {key: array.shape[0] for key, array in arrays.items()}
    if len(set(rows.values())) != 1:
        raise InputError(f"{path}: arrays have different row counts {rows}")
    return FeatureFile(path, sets[FEATURES], sets[LOGITS], arrays.get(LABELS))


def _require_sets(reference: dict[str, np.ndarray], reference_path: str, kind: str, other: FeatureFile) -> None:
    held = getattr(other, kind)
    for name, array in reference.items():
        key = f"{kind}/{name}"
        if name not in held:
            raise InputError(f"{other.path}: missing key {key!r} (present in {reference_path})")
        if held[name].shape[1] != array.shape[1]:
            raise InputError(f"{other.path}: key {key!r} has width {held[name].shape[1]}, "
                                   f"{reference_path} has {array.shape[1]}")


def _default_scores(train: FeatureFile, test: FeatureFile, fused: str) -> list[str]:
    names = list(LOGIT_SCORES) if test.logits else []
    if train.features:
        names += [n for n in FEATURE_SCORES if n not in NEEDS_TRAIN_LABELS or train.labels is not None]
    if fused in test.logits and len(test.logits) > 1:
        names.append("disagreement")
    if fused in train.features and len(train.features) > 1:
        names.append("interaction")
    return names


def _score_options(name: str, args: argparse.Namespace) -> dict[str, Any]:
    try:
        shrinkage = args.shrinkage if args.shrinkage == "ledoit_wolf" else float(args.shrinkage)
    except ValueError:
        raise InputError(f"--shrinkage={args.shrinkage!r}: expected ledoit_wolf or a number") from None
    options = {
        "knn": {"k": args.knn_k},
        "ssd": {"num_clusters": args.ssd_clusters, "shrinkage": shrinkage, "seed": args.seed},
        "mahalanobis": {"shrinkage": shrinkage},
        "relative_mahalanobis": {"shrinkage": shrinkage},
        "disagreement": {"fused": args.fused, "divergence": args.divergence},
        "interaction": {"fused": args.fused, "ridge": args.ridge, "shrinkage": shrinkage},
    }.get(name, {})
    return {**options, "batch_size": args.batch_size}


def compute_scores(train: FeatureFile, scored: dict[str, FeatureFile], names: Sequence[str],
                   args: argparse.Namespace) -> dict[tuple[str, str, str], dict[str, np.ndarray]]:
    """`{(score, input, set): {file label: scores [n]}}` for every requested score and set."""
    test = scored["test"]
    results: dict[tuple[str, str, str], dict[str, np.ndarray]] = {}
    for name in names:
        if name in LOGIT_SCORES:
            for set_name in test.logits:
                score = make_score(name, **_score_options(name, args))
                results[(name, LOGITS, set_name)] = {label: score.score(f.logits[set_name])
                                                     for label, f in scored.items()}
        elif name in FEATURE_SCORES:
            for set_name, rows in train.features.items():
                score = make_score(name, **_score_options(name, args)).fit(rows, train.labels)
                results[(name, FEATURES, set_name)] = {label: score.score(f.features[set_name])
                                                       for label, f in scored.items()}
        elif name == "disagreement":
            score = make_score(name, **_score_options(name, args))
            sets = "+".join([args.fused] + sorted(s for s in test.logits if s != args.fused))
            results[(name, LOGITS, sets)] = {label: score.score({s: f.logits[s] for s in test.logits})
                                             for label, f in scored.items()}
        else:
            score = make_score(name, **_score_options(name, args)).fit(train.features)
            sets = "+".join([args.fused] + sorted(s for s in train.features if s != args.fused))
            results[(name, FEATURES, sets)] = {label: score.score({s: f.features[s] for s in train.features})
                                               for label, f in scored.items()}
    return results


def _check_requested(names: Sequence[str], train: FeatureFile, test: FeatureFile, fused: str) -> None:
    for name in names:
        if name not in ALL_SCORES:
            raise InputError(f"unknown score {name!r} in --scores (known: {', '.join(sorted(ALL_SCORES))})")
        if name in NEEDS_TRAIN_LABELS and train.labels is None:
            raise InputError(f"{train.path}: missing key 'labels' (score {name!r} needs training labels)")
        if name in FEATURE_SCORES and not train.features:
            raise InputError(f"{train.path}: no features/<set> key (score {name!r} reads features)")
        if name in LOGIT_SCORES and not test.logits:
            raise InputError(f"{test.path}: no logits/<set> key (score {name!r} reads logits)")
        if name == "disagreement" and (fused not in test.logits or len(test.logits) < 2):
            raise InputError(f"{test.path}: score 'disagreement' needs key 'logits/{fused}' and "
                                   "another logits/<set>")
        if name == "interaction" and (fused not in train.features or len(train.features) < 2):
            raise InputError(f"{train.path}: score 'interaction' needs key 'features/{fused}' and "
                                   "another features/<set>")


def _json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _parse_ood(entries: Sequence[str]) -> dict[str, str]:
    files = {}
    for entry in entries:
        name, separator, path = entry.partition("=")
        if not separator or not name or not path:
            raise InputError(f"--ood {entry!r}: expected NAME=FILE.npz")
        if name in files or name == "test":
            raise InputError(f"--ood {entry!r}: the name {name!r} is already taken")
        files[name] = path
    return files


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", required=True, help="training .npz (scores are fitted on it)")
    parser.add_argument("--test", required=True, help="in-distribution test .npz")
    parser.add_argument("--ood", action="append", default=[], metavar="NAME=FILE.npz",
                        help="an OOD .npz under a name; repeat for several")
    parser.add_argument("--output", required=True, help="JSON file written")
    parser.add_argument("--scores", default="", help="comma-separated score names (default: all that apply)")
    parser.add_argument("--bootstrap", type=int, default=0, help="bootstrap resamples for intervals (0: none)")
    parser.add_argument("--alpha", type=float, default=0.05, help="intervals at level 1 - alpha")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and of k-means")
    parser.add_argument("--fused", default="z", help="the fused set's name, for disagreement and interaction")
    parser.add_argument("--knn_k", type=int, default=50, help="kNN: the k-th neighbour's distance")
    parser.add_argument("--ssd_clusters", type=int, default=10, help="SSD: k-means clusters")
    parser.add_argument("--shrinkage", default="ledoit_wolf", help="covariance shrinkage: ledoit_wolf or a number")
    parser.add_argument("--divergence", default="js", help="disagreement: kl, js or argmax")
    parser.add_argument("--ridge", type=float, default=1.0, help="interaction: ridge penalty")
    parser.add_argument("--batch_size", type=int, default=1024, help="test rows scored per jitted call")
    return parser


def run(args: argparse.Namespace) -> dict:
    """Loads the files, scores them and returns the JSON-ready report (module docstring)."""
    train, test = load_feature_file(args.train), load_feature_file(args.test)
    ood_files = {name: load_feature_file(path) for name, path in _parse_ood(args.ood).items()}
    for other in [test, *ood_files.values()]:
        _require_sets(train.features, train.path, FEATURES, other)
    for other in ood_files.values():
        _require_sets(test.logits, test.path, LOGITS, other)
    names = [n for n in args.scores.split(",") if n] or _default_scores(train, test, args.fused)
    _check_requested(names, train, test, args.fused)
    scores = compute_scores(train, {"test": test, **ood_files}, names, args)
    bootstrap = dict(bootstrap=args.bootstrap, alpha=args.alpha, seed=args.seed)
    ood_rows = [{"ood": ood, "score": name, "input": kind, "set": set_name,
                 **ood_metrics(values["test"], values[ood], **bootstrap)}
                for ood in ood_files for (name, kind, set_name), values in scores.items()]
    failure_rows = []
    if test.labels is not None:
        for probe, logits in test.logits.items():
            correct = np.argmax(logits, axis=1) == test.labels
            failure_rows += [{"probe": probe, "score": name, "input": kind, "set": set_name,
                              **failure_metrics(values["test"], correct, **bootstrap)}
                             for (name, kind, set_name), values in scores.items()]
    return _json_ready({
        "train": args.train, "test": args.test, "ood_files": dict(_parse_ood(args.ood)),
        "scores": names, "ood": ood_rows, "failure": failure_rows,
    })


def main(argv: Sequence[str] | None = None) -> dict:
    """Command-line entry: writes `--output` and returns the report; errors exit with one line."""
    args = _parser().parse_args(argv)
    try:
        report = run(args)
    except ValueError as error:  # InputError, or a score's own check (e.g. k above the row count)
        raise SystemExit(f"score_features: error: {error}") from None
    with open(args.output, "w") as handle:
        json.dump(report, handle, indent=1)
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
