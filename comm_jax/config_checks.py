"""Start-up checks of a config's values that the per-key validation does not see: every number is finite."""

from __future__ import annotations

import math
from typing import Any, Iterator

import ml_collections


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
