"""Methods as modules: `get(config.loss.name)` gives the class that owns one objective.

A name is a key of `METHODS` or `"package.module:Class"`; `register(name, cls)` adds one. Method
modules are imported when asked for, so a new method is a new module and one line here.
"""

from __future__ import annotations

import importlib

from comm_jax.methods.base import Method, Trainable

METHODS: dict[str, str | type] = {
    "comm": "comm_jax.methods.comm:CoMM",
    "cross": "comm_jax.methods.cross:Cross",
    "cross_self": "comm_jax.methods.cross_self:CrossSelf",
    "cmc": "comm_jax.methods.cmc:CMC",
    "simclr": "comm_jax.methods.simclr:SimCLR",
    "factorcl": "comm_jax.methods.factorcl:FactorCL",
}


def register(name: str, cls: type) -> None:
    METHODS[name] = cls


def get(name: str) -> type[Method]:
    """The method class of `config.loss.name`; a ValueError listing the known names otherwise."""
    entry = METHODS.get(name, name)
    if isinstance(entry, type):
        return entry
    if ":" not in entry:
        raise ValueError(f"config.loss.name must be one of {tuple(METHODS)} or 'package.module:Class', got {name!r}")
    module, _, attr = entry.partition(":")
    return getattr(importlib.import_module(module), attr)


def build(cfg) -> Method:
    """The method `cfg.loss.name` names, checked against `cfg`."""
    return get(cfg.loss.name)(cfg)


__all__ = ["METHODS", "Method", "Trainable", "build", "get", "register"]
