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


def make_train_step(graphdef, cfg, mesh: Mesh, tx: optax.GradientTransformation, schedule,
                    state_shardings, example_batch) -> Callable:
    """One jitted, donated step: (state, batch) -> (state, metrics). Shardings are explicit: the
    state as `state_shardings`, the batch split over the mesh, metrics replicated."""
    loss_fn = make_loss_fn(graphdef, cfg.loss, mesh)

    def step(state: TrainState, batch):
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
