"""The augmentation spec language shared by the tf.data ops (`input_pipeline.augment`) and their
on-device twins (`comm_jax.device_augment`): ``"op1|op2(arg, key=value)|..."`` with Python-literal
arguments. Pure Python, so either side imports it without the other's framework."""

from __future__ import annotations

import ast
import inspect
import re
from typing import Any, Callable, Mapping

_OP_PATTERN = re.compile(r"^\s*([A-Za-z_]\w*)\s*(?:\((.*)\))?\s*$", re.DOTALL)


def parse_op(spec: str, registry: Mapping[str, Callable], what: str = "augmentation") -> tuple[Callable, list, dict]:
    """``name`` or ``name(arg, ..., key=value)`` -> (factory, args, kwargs), checked against the
    factory's signature; errors name the op and list the known ones."""
    match = _OP_PATTERN.match(spec)
    if not match:
        raise ValueError(f"cannot parse {what} op {spec!r}; expected name or name(args)")
    name, arg_string = match.group(1), match.group(2)
    if name not in registry:
        raise ValueError(f"unknown {what} op {name!r}; known ops: {', '.join(sorted(registry))}")
    args, kwargs = _literal_arguments(name, arg_string or "", what)
    factory = registry[name]
    try:
        inspect.signature(factory).bind(*args, **kwargs)
    except TypeError as error:
        raise ValueError(f"bad arguments for {what} op {name!r}: {error}") from None
    return factory, args, kwargs


def parse_spec(spec: str, registry: Mapping[str, Callable], what: str = "augmentation") -> list[tuple[Callable, list, dict]]:
    """Every ``|``-separated op of `spec` (an empty spec has none)."""
    return [parse_op(piece, registry, what) for piece in spec.split("|") if piece.strip()]


def _literal_arguments(name: str, arg_string: str, what: str) -> tuple[list, dict[str, Any]]:
    try:
        call = ast.parse(f"_({arg_string})", mode="eval").body
        args = [ast.literal_eval(node) for node in call.args]
        kwargs = {keyword.arg: ast.literal_eval(keyword.value) for keyword in call.keywords}
    except (SyntaxError, ValueError) as error:
        raise ValueError(
            f"arguments of {what} op {name!r} must be Python literals, got ({arg_string}): {error}"
        ) from None
    if any(key is None for key in kwargs):
        raise ValueError(f"{what} op {name!r}: **kwargs are not allowed")
    return args, kwargs
