"""The jitted train step: both views through the model, the objective inside `jax.shard_map` as
local rows against gathered columns, gradients, AdamW; and the objective registry."""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from comm_jax import losses
from comm_jax.mesh import batch_axes, batch_sharding, replicated
from comm_jax.train_state import TrainState


def _comm(v1, v2, scale, cfg, axis_name):
    weights = cfg.get("weights", None)
    return losses.comm_loss(v1, v2, cfg.temperature, None if weights is None else tuple(weights), axis_name=axis_name)


OBJECTIVES: dict[str, Callable] = {
    "comm": _comm,
    "cross": lambda v1, v2, scale, cfg, axis_name: losses.clip_loss(v1, v2, scale, axis_name=axis_name),
    "cross_self": lambda v1, v2, scale, cfg, axis_name: losses.cross_self_loss(
        v1, v2, cfg.temperature, cfg.get("ssl_scale", 1.0), axis_name=axis_name),
    "cmc": lambda v1, v2, scale, cfg, axis_name: losses.cmc_loss(v1, v2, cfg.temperature, axis_name=axis_name),
    "simclr": lambda v1, v2, scale, cfg, axis_name: losses.simclr_loss(
        v1, v2, cfg.temperature, cfg.get("simclr_index", -1), axis_name=axis_name),
}


def sharded_objective(loss_cfg, mesh: Mesh) -> Callable:
    """(view1, view2 `[n+1, batch, dim]`, log logit scale) -> (loss, metrics), each device scoring
    its local rows of the batch against the gathered columns."""
    if loss_cfg.name not in OBJECTIVES:
        raise ValueError(f"loss.name must be one of {tuple(OBJECTIVES)}, got {loss_cfg.name!r}")
    axes = batch_axes(mesh)
    local = functools.partial(OBJECTIVES[loss_cfg.name], cfg=loss_cfg, axis_name=axes)
    spec = P(None, axes, None)
    return jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, P()), out_specs=P())


def batch_shardings(mesh: Mesh, batch) -> object:
    """Per-leaf shardings of a batch pytree: every leaf split over the mesh along its first axis."""
    return jax.tree.map(lambda x: batch_sharding(mesh, len(x.shape)), batch)


def make_loss_fn(graphdef, loss_cfg, mesh: Mesh) -> Callable:
    """((params, batch_stats), batch) -> (loss, (metrics, new batch_stats)).

    Batch statistics enter the differentiated argument with the parameters: NNX refuses to update
    a BatchStat created from a value traced outside the gradient transform. Their gradients are
    zero in training mode (the output does not depend on the running averages) and are dropped."""
    objective = sharded_objective(loss_cfg, mesh)

    def loss_fn(variables, batch):
        params, batch_stats = variables
        model = nnx.merge(graphdef, params, batch_stats)
        _, proj1 = model(batch["view1"], batch.get("valid1"))
        _, proj2 = model(batch["view2"], batch.get("valid2"))
        scale = model.log_logit_scale[...] if hasattr(model, "log_logit_scale") else jnp.zeros(())
        loss, metrics = objective(proj1, proj2, scale)
        return loss, (metrics, nnx.state(model, nnx.BatchStat))

    return loss_fn


def device_views(cfg) -> Callable | None:
    """With `cfg.data.augment_on_device`: raw batch -> batch of two views, drawn on the devices
    with the ops of `cfg.data.augment` (see `comm_jax.device_augment`); otherwise None."""
    data = cfg.data
    if not data.get("augment_on_device", False):
        return None
    from comm_jax import device_augment

    specs = dict(data.get("augment", None) or {})
    ops = {}
    for modality in data.modalities:
        spec = specs.get(modality, "")
        pair = (spec, spec) if isinstance(spec, str) else tuple(spec)
        for view, view_spec in enumerate(pair, 1):
            try:
                ops[modality, view] = device_augment.parse(view_spec)
            except ValueError as error:
                raise ValueError(f"data.augment.{modality} (data.augment_on_device=True): {error}") from None

    def views(batch):
        out = {"view1": {}, "view2": {}}
        for (modality, view), op in ops.items():
            keys = device_augment.view_keys(batch["key"], view, modality)
            out[f"view{view}"][modality] = op(batch["raw"][modality], keys)
        return out

    return views


def batch_structure(cfg, batch_size: int) -> dict:
    """Shapes and dtypes (`jax.ShapeDtypeStruct`, unsharded) of the batch the step takes: two float32
    views, or with `data.augment_on_device` the uint8 images once (at the model's input shape) and a
    uint32 [B, 2] key per example."""
    shapes = {m: (batch_size, *cfg.model.encoders[m].input_shape) for m in cfg.model.modalities}
    if cfg.data.get("augment_on_device", False):
        return {"raw": {m: jax.ShapeDtypeStruct(s, jnp.uint8) for m, s in shapes.items()},
                "key": jax.ShapeDtypeStruct((batch_size, 2), jnp.uint32)}
    view = {m: jax.ShapeDtypeStruct(s, jnp.float32) for m, s in shapes.items()}
    return {"view1": view, "view2": dict(view)}


def make_train_step(graphdef, cfg, mesh: Mesh, tx: optax.GradientTransformation, schedule,
                    state_shardings, example_batch) -> Callable:
    """One jitted, donated step: (state, batch) -> (state, metrics). Shardings are explicit: the
    state as `state_shardings`, the batch split over the mesh, metrics replicated. With
    `cfg.data.augment_on_device` the batch is `{"raw": ..., "key": ...}` and both views are drawn
    inside the step from each example's key."""
    loss_fn = make_loss_fn(graphdef, cfg.loss, mesh)
    augment = device_views(cfg)
    views_sharding = None
    if augment is not None:
        views_sharding = {v: {m: batch_sharding(mesh, x.ndim) for m, x in example_batch["raw"].items()}
                          for v in ("view1", "view2")}

    def step(state: TrainState, batch):
        if augment is not None:
            batch = jax.lax.with_sharding_constraint(augment(batch), views_sharding)
        (loss, (metrics, batch_stats)), (grads, _) = jax.value_and_grad(loss_fn, has_aux=True)(
            (state.params, state.batch_stats), batch)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics, loss=loss, learning_rate=schedule(state.step), grad_norm=optax.global_norm(grads))
        new_state = TrainState(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
        return new_state, metrics

    return jax.jit(step, in_shardings=(state_shardings, batch_shardings(mesh, example_batch)),
                   out_shardings=(state_shardings, replicated(mesh)), donate_argnums=0)


def put_batch(batch, mesh: Mesh):
    """Per-host numpy batch -> global sharded arrays (`make_array_from_process_local_data`)."""
    def put(x):
        sharding: NamedSharding = batch_sharding(mesh, x.ndim)
        return jax.make_array_from_process_local_data(sharding, x)
    return jax.tree.map(put, batch)
