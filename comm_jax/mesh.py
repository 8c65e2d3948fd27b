"""Device mesh from the config, batch sharding and placement, and regex rules that shard large parameters.

`config.mesh` is a sequence of (axis name, size) with at most one size -1 that fills the remaining
devices, e.g. `[("data", -1)]` or `[("data", -1), ("fsdp", 4)]`. The batch is sharded over every
mesh axis; parameters are replicated unless a rule in `config.param_sharding` (pairs of
(regex on the parameter path, PartitionSpec tuple)) shards them, e.g. `(".*fc.kernel", (None, "fsdp"))`.
"""

from __future__ import annotations

import math
import re
from typing import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P


def mesh_shape(axes: Sequence[tuple[str, int]], n_devices: int) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Resolve -1 in `axes` against `n_devices`; raise naming the problem when it cannot fit."""
    names = tuple(str(a) for a, _ in axes)
    sizes = [int(s) for _, s in axes]
    if len(set(names)) != len(names) or not names:
        raise ValueError(f"config.mesh needs distinct axis names, got {names}")
    if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"config.mesh sizes must be positive with at most one -1, got {list(axes)}")
    fixed = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if n_devices % fixed:
            raise ValueError(f"config.mesh {list(axes)}: {n_devices} devices are not divisible by {fixed}")
        sizes[sizes.index(-1)] = n_devices // fixed
    if math.prod(sizes) != n_devices:
        raise ValueError(f"config.mesh {list(axes)} needs {math.prod(sizes)} devices, {n_devices} are present")
    return names, tuple(sizes)


def make_mesh(axes: Sequence[tuple[str, int]], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh with Auto axes (GSPMD partitions everything not pinned by a sharding)."""
    devices = list(devices) if devices is not None else jax.devices()
    names, sizes = mesh_shape(axes, len(devices))
    return jax.make_mesh(sizes, names, axis_types=(AxisType.Auto,) * len(names), devices=devices)


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
    """The mesh axes the batch is split over (all of them)."""
    return tuple(mesh.axis_names)


def batch_sharding(mesh: Mesh, rank: int, batch_dim: int = 0) -> NamedSharding:
    """Sharding of an array whose `batch_dim` is the global batch."""
    spec = [None] * rank
    spec[batch_dim] = batch_axes(mesh)
    return NamedSharding(mesh, P(*spec))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def _path_name(path) -> str:
    return ".".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def param_shardings(tree, mesh: Mesh, rules: Sequence[tuple[str, Sequence]] = ()):
    """NamedSharding per leaf of `tree` (arrays or ShapeDtypeStructs): the first rule whose regex
    matches the leaf's dotted path gives its PartitionSpec; unmatched leaves are replicated. A rule
    whose spec does not divide the leaf's shape is an error naming the parameter."""
    compiled = [(re.compile(pattern), tuple(spec)) for pattern, spec in rules]

    def choose(path, leaf):
        name = _path_name(path)
        for pattern, spec in compiled:
            if pattern.fullmatch(name) and len(spec) == np.ndim(leaf):
                for dim, axis in zip(np.shape(leaf), spec):
                    size = 1 if axis is None else math.prod(mesh.shape[a] for a in np.atleast_1d(axis))
                    if dim % size:
                        raise ValueError(f"param_sharding rule {pattern.pattern!r} -> {spec} does not divide "
                                         f"parameter {name} of shape {np.shape(leaf)}")
                return NamedSharding(mesh, P(*spec))
        return NamedSharding(mesh, P())

    return jax.tree_util.tree_map_with_path(choose, tree)


def put_batch(batch, mesh: Mesh):
    """Per-host numpy batch -> global arrays sharded over the mesh along their first axis
    (`jax.make_array_from_process_local_data`)."""
    def put(x):
        return jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(x)), x)
    return jax.tree.map(put, batch)
