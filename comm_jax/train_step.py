"""The jitted train step, built by one function for training, the AOT check and the benchmark: the
views through the method's model, its objective inside `jax.shard_map` as local rows against
gathered columns, gradients, AdamW, then the method's critic updates if it has critics."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, PartitionSpec as P

from comm_jax import config_schema
from comm_jax.batch import VIEW_IDS, BatchSpec, batch_spec
from comm_jax.mesh import batch_axes, batch_sharding, replicated
from comm_jax.methods import Method
from comm_jax.train_state import TrainState, abstract_train_state, create_train_state, split_frozen


def sharded_objective(method: Method, mesh: Mesh, objective: Callable | None = None) -> Callable:
    """(embeddings {name: [groups, batch, dim]}, scalars) -> (loss, metrics), each device scoring its
    local rows of the batch against the gathered columns; `objective` defaults to `method.objective`."""
    axes = batch_axes(mesh)
    local = functools.partial(objective or method.objective, axis_name=axes)
    return jax.shard_map(lambda emb, sc: local(emb, sc), mesh=mesh,
                         in_specs=(P(None, axes, None), P()), out_specs=P())


def batch_shardings(mesh: Mesh, batch) -> Any:
    """Per-leaf shardings of a batch pytree: every leaf split over the mesh along its first axis."""
    return jax.tree.map(lambda x: batch_sharding(mesh, len(x.shape)), batch)


def make_loss_fn(graphdef, method: Method, mesh: Mesh) -> Callable:
    """((params, batch_stats), views, valid, frozen=None) -> (loss, (metrics, new batch_stats)).

    Batch statistics enter the differentiated argument with the parameters: NNX refuses to update
    a BatchStat created from a value traced outside the gradient transform. Their gradients are
    zero in training mode (the output does not depend on the running averages) and are dropped.
    The step passes the trained parameters as `params` and the frozen ones (`train_state.split_frozen`)
    apart, so those are not differentiated; `params` may also hold every parameter."""
    objective = sharded_objective(method, mesh)

    def loss_fn(variables, views, valid, frozen=None):
        params, batch_stats = variables
        trainable = nnx.merge(graphdef, params, batch_stats, *(() if frozen is None else (frozen,)))
        embeddings = method.embeddings(trainable.model, views, valid)
        loss, metrics = objective(embeddings, method.scalars(trainable.extra))
        return loss, (metrics, nnx.state(trainable, nnx.BatchStat))

    return loss_fn


def make_critic_update(graphdef, method: Method, mesh: Mesh) -> Callable | None:
    """(params, frozen, batch_stats, opt_state, views, valid) -> (params, opt_state, metrics): the method's
    `critic_steps` updates of its critics (see `Method.critic_objective`) on the embeddings of the
    updated model, their optimizer state in `opt_state.inner_states["critic"]`; None without critics."""
    steps = method.critic_steps()
    if steps <= 0:
        return None
    objective = sharded_objective(method, mesh, method.critic_objective)
    critic_tx = optax.masked(method.critic_optimizer(), method.critic_mask)

    def critics_only(updates, params):
        # optax.masked passes the unmasked leaves' gradients through as updates: zero them, so the
        # critic loss moves the critics alone (not the projections it also reads).
        return jax.tree.map(lambda u, critic: u if critic else jnp.zeros_like(u), updates, method.critic_mask(params))

    def update(params, frozen, batch_stats, opt_state, views, valid):
        trainable = nnx.merge(graphdef, params, frozen, batch_stats)
        embeddings = jax.lax.stop_gradient(method.embeddings(trainable.model, views, valid))

        def critic_loss(params):
            return objective(embeddings, method.scalars(nnx.merge(graphdef, params, frozen, batch_stats).extra))

        def one_step(carry, _):
            params, critic_state = carry
            (_, metrics), grads = jax.value_and_grad(critic_loss, has_aux=True)(params)
            updates, critic_state = critic_tx.update(grads, critic_state, params)
            return (optax.apply_updates(params, critics_only(updates, params)), critic_state), metrics

        (params, critic_state), metrics = jax.lax.scan(
            one_step, (params, opt_state.inner_states["critic"]), None, length=steps)
        opt_state = opt_state._replace(inner_states={**opt_state.inner_states, "critic": critic_state})
        return params, opt_state, jax.tree.map(lambda m: m[-1], metrics)

    return update


def device_views(spec: BatchSpec) -> Callable | None:
    """With views drawn on the devices: raw batch -> `{"views": {view: {modality: images}}}`, drawn
    with the ops of `spec.views` (see `comm_jax.device_augment`); otherwise None."""
    if not spec.on_device:
        return None
    from comm_jax import device_augment

    ops = {}
    for view, specs in spec.views.items():
        for modality, op_spec in specs.items():
            try:
                ops[view, modality] = device_augment.parse(op_spec)
            except ValueError as error:
                raise ValueError(f"config.data.views.{view}.{modality} (data.augment_on_device=True): "
                                 f"{error}") from None

    def views(batch):
        out = {view: {} for view in spec.views}
        for (view, modality), op in ops.items():
            keys = device_augment.view_keys(batch["key"], VIEW_IDS[view], modality)
            out[view][modality] = op(batch["raw"][modality], keys)
        return {"views": out}

    return views


def make_train_step(graphdef, method: Method, spec: BatchSpec, mesh: Mesh, tx: optax.GradientTransformation,
                    schedule, state_shardings, example_batch) -> Callable:
    """One jitted, donated step: (state, batch) -> (state, metrics). Shardings are explicit: the
    state as `state_shardings`, the batch split over the mesh, metrics replicated."""
    loss_fn = make_loss_fn(graphdef, method, mesh)
    critic_update = make_critic_update(graphdef, method, mesh)
    augment = device_views(spec)
    views_sharding = None
    if augment is not None:
        shapes = example_batch["raw"]
        views_sharding = {"views": {v: {m: batch_sharding(mesh, shapes[m].ndim) for m in spec.views[v]}
                                    for v in spec.views}}

    def step(state: TrainState, batch):
        if augment is not None:
            batch = jax.lax.with_sharding_constraint(augment(batch), views_sharding)
        trained, frozen = split_frozen(state.params)
        (loss, (metrics, batch_stats)), (grads, _) = jax.value_and_grad(loss_fn, has_aux=True)(
            (trained, state.batch_stats), batch["views"], batch.get("valid"), frozen)
        updates, opt_state = tx.update(grads, state.opt_state, trained)
        params = optax.apply_updates(method.constrain(trained), updates)
        if critic_update is not None:
            params, opt_state, critic_metrics = critic_update(params, frozen, batch_stats, opt_state,
                                                              batch["views"], batch.get("valid"))
            metrics = dict(metrics, **critic_metrics)
        params = nnx.merge_state(params, frozen)
        metrics = dict(metrics, loss=loss, learning_rate=schedule(state.step), grad_norm=optax.tree.norm(grads))
        new_state = TrainState(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
        return new_state, metrics

    return jax.jit(step, in_shardings=(state_shardings, batch_shardings(mesh, example_batch)),
                   out_shardings=(state_shardings, replicated(mesh)), donate_argnums=0)


@dataclasses.dataclass
class StepBuild:
    """Everything one built step comes with: the method, the batch contract, the graph definition,
    the (possibly abstract) state and its shardings, the optimizer and schedule, and the jitted step."""

    method: Method
    spec: BatchSpec
    graphdef: Any
    state: TrainState
    shardings: Any
    tx: optax.GradientTransformation
    schedule: Callable
    step: Callable


def build_train_step(cfg, mesh: Mesh, example_batch=None, *, abstract: bool = False) -> StepBuild:
    """Validates `cfg`, builds the state (allocated, or abstract for ahead-of-time compilation) and the
    jitted step for `mesh`. `example_batch` (arrays or ShapeDtypeStructs) defaults to the contract's
    global batch structure."""
    method = config_schema.validate(cfg)
    if cfg.batch_size % mesh.size:
        raise ValueError(f"config.batch_size={cfg.batch_size} is not divisible by the {mesh.size} devices")
    spec = batch_spec(cfg, method)
    if example_batch is None:
        example_batch = spec.structure(cfg.batch_size)
    make_state = abstract_train_state if abstract else create_train_state
    graphdef, state, shardings, tx, schedule = make_state(cfg, mesh, method)
    step = make_train_step(graphdef, method, spec, mesh, tx, schedule, shardings, example_batch)
    return StepBuild(method, spec, graphdef, state, shardings, tx, schedule, step)
