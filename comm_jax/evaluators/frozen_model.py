"""A trained model with frozen variables in evaluation mode (BatchNorm on running statistics): built
from a model config, filled from a checkpoint or an export, with one jitted representation function.

This module imports neither Orbax (only inside `restore_frozen_model`) nor TensorFlow, so exported
models load without the training stack.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from comm_jax.models import build_model, split_model

Subset = tuple[str, ...]


def abstract_variables(model_cfg: Mapping[str, Any]):
    """(graphdef in eval mode, params, batch_stats) of the model `model_cfg` describes; the two
    states hold `jax.ShapeDtypeStruct`s, nothing is initialised."""
    cfg = ml_collections.ConfigDict(dict(model_cfg))
    model = nnx.eval_shape(lambda: build_model(cfg))
    model.eval()                       # BatchNorm uses running statistics, dropout is off
    return split_model(model)


@functools.partial(jax.jit, static_argnames=("graphdef", "subsets"))
def _representations(graphdef, params, batch_stats, inputs, valid, subsets: tuple[Subset, ...]):
    model = nnx.merge(graphdef, params, batch_stats)
    return tuple(z.astype(jnp.float32) for z in model.representations(inputs, subsets, valid))


class FrozenModel:
    """Fixed parameters and batch statistics of one model, with Z for any subsets of modalities.

    One jitted function (module level, keyed on the graph definition and the subsets) serves every
    checkpoint of the same architecture, so a new checkpoint does not recompile.
    """

    def __init__(self, model_cfg: Mapping[str, Any], graphdef, params, batch_stats, *, step: int | None = None,
                 manifest: Mapping[str, Any] | None = None):
        self.model_cfg = dict(model_cfg)
        self.manifest = dict(manifest or {})     # set when loaded from an export
        self.graphdef, self.params, self.batch_stats = graphdef, params, batch_stats
        self.step = step
        self.modalities: Subset = tuple(self.model_cfg["modalities"])
        self.width = nnx.merge(graphdef, params, batch_stats).feature_dim(self.modalities)

    def check_inputs(self, inputs: Mapping[str, Any], modalities: Sequence[str]) -> None:
        """Raise naming the modality when an input is missing or has the wrong per-example shape."""
        unknown = [m for m in modalities if m not in self.modalities]
        if unknown:
            raise ValueError(f"unknown modalities {unknown}; the model has {list(self.modalities)}")
        for name in modalities:
            if name not in inputs:
                raise ValueError(f"batch lacks modality {name!r}; it has {sorted(inputs)}")
            expected = tuple(self.model_cfg["encoders"][name]["input_shape"])
            got = tuple(np.shape(inputs[name])[1:])
            if got != expected:
                raise ValueError(f"modality {name!r} has per-example shape {got}, the model expects {expected}")

    def representations(self, inputs: Mapping[str, Any], subsets: Sequence[Sequence[str]],
                        valid: Mapping[str, Any] | None = None) -> tuple[jax.Array, ...]:
        """Z for each subset: float32 `[batch, dim]` each (the fused Z of the fusion model; the
        concatenated per-modality vectors of the towers). Inputs may be numpy or (sharded) jax
        arrays with a leading batch axis; the outputs keep the batch sharding."""
        subsets = tuple(tuple(s) for s in subsets)
        needed = [m for m in self.modalities if any(m in s for s in subsets)]
        self.check_inputs(inputs, needed)
        inputs = {m: inputs[m] for m in needed}
        valid = None if valid is None else {m: valid[m] for m in needed if m in valid}
        return _representations(self.graphdef, self.params, self.batch_stats, inputs, valid or None,
                                subsets=subsets)

    def embed(self, inputs: Mapping[str, Any], modalities: Sequence[str] | None = None,
              valid: Mapping[str, Any] | None = None) -> jax.Array:
        """Z `[batch, width]` from `modalities` (default: all of the model's)."""
        return self.representations(inputs, [tuple(modalities or self.modalities)], valid)[0]


def restore_frozen_model(store, step: int, mesh: Mesh) -> FrozenModel:
    """The model of checkpoint `step`, built from the config saved with it, its parameters and batch
    statistics restored replicated on `mesh` (no optimizer state is read).

    `store` is a `comm_jax.checkpoints.CheckpointStore`; raises whatever Orbax raises when the step
    was deleted or is incomplete.
    """
    import orbax.checkpoint as ocp

    from comm_jax.mesh import replicated

    saved = store.restore_config(step)
    if "model" not in saved:
        raise ValueError(f"the config saved with checkpoint {step} has no 'model' section")
    graphdef, params, batch_stats = abstract_variables(saved["model"])
    rep = replicated(mesh)
    # The train state holds the method's trainable: the model under "model", the method's own
    # parameters beside it; only the model's variables are read.
    target = {name: {"model": jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), tree)}
              for name, tree in (("params", params), ("batch_stats", batch_stats)) if jax.tree.leaves(tree)}
    # A partial PyTree restore reads only these subtrees of the saved TrainState (StandardRestore
    # refuses a target that lacks `step` and `opt_state`).
    restored = store.manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True)))
    state = restored.state
    stats = state["batch_stats"]["model"] if "batch_stats" in state else batch_stats
    return FrozenModel(saved["model"], graphdef, _as_state(params, state["params"]["model"]),
                       _as_state(batch_stats, stats), step=step)


def _as_state(like, restored):
    """A restored nested dict of arrays in the structure (nnx.State of Variables) of `like`."""
    leaves = jax.tree_util.tree_leaves(restored)
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like), leaves)
