"""The run config's contract: the top-level keys every experiment has, and the start-up check that
names the key of a config that cannot run (the method, model, data views and numbers)."""

from __future__ import annotations

import json
import math
from typing import Any, Iterator

import ml_collections

from comm_jax import methods, models
from comm_jax.batch import batch_spec

TOP_LEVEL_KEYS = ("seed", "batch_size", "num_steps", "log_every", "ckpt_every", "keep_ckpts", "mesh",
                  "precision", "loss", "optimizer", "model", "data", "evals")
POSITIVE = ("batch_size", "num_steps", "log_every", "ckpt_every", "keep_ckpts", "loss.temperature", "optimizer.lr")
NON_NEGATIVE = ("keep_every", "optimizer.weight_decay", "optimizer.warmup_steps", "optimizer.grad_clip")
PRECISIONS = ("float32", "bfloat16")


def _lookup(c, key: str) -> Any:
    value = c
    for part in key.split("."):
        if part not in value:
            return None
        value = value[part]
    return value


def _check_number(c, key: str, positive: bool) -> None:
    value = _lookup(c, key)
    if value is None and not positive:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"config.{key} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"config.{key} must be positive, got {value!r}")
    if not positive and value < 0:
        raise ValueError(f"config.{key} must be >= 0, got {value!r}")


def _numbers(value: Any, path: str) -> Iterator[tuple[str, float]]:
    if isinstance(value, (ml_collections.ConfigDict, dict)):
        for key in value.keys():
            yield from _numbers(value[key], f"{path}.{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _numbers(item, f"{path}[{index}]")
    elif isinstance(value, float):
        yield path, value


def require_finite_numbers(cfg: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first key (e.g. `config.optimizer.lr`) that holds NaN or infinity."""
    for path, value in _numbers(cfg, "config"):
        if not math.isfinite(value):
            raise ValueError(f"{path} must be a finite number, got {value}")


def validate(c: ml_collections.ConfigDict) -> methods.Method:
    """Fail at start-up with a message naming the key on a config that cannot run; returns the
    config's method."""
    missing = [k for k in TOP_LEVEL_KEYS if k not in c]
    if missing:
        raise ValueError(f"config lacks top-level keys {missing}")
    require_finite_numbers(c)
    for key in POSITIVE:
        _check_number(c, key, positive=True)
    for key in NON_NEGATIVE:
        _check_number(c, key, positive=False)
    if c.precision not in PRECISIONS:
        raise ValueError(f"config.precision must be one of {PRECISIONS}, got {c.precision!r}")
    method = methods.build(c)
    models.validate(c.model)
    unknown = set(c.data.get("modalities", {})) ^ set(c.model.modalities)
    if unknown:
        raise ValueError(f"config.data.modalities and config.model.modalities differ on {sorted(unknown)}")
    batch_spec(c, method)
    return method


def to_json_dict(c: ml_collections.ConfigDict) -> dict[str, Any]:
    return json.loads(c.to_json())
