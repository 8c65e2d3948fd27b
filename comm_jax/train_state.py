"""Train state (step, parameters, batch statistics, optimizer state) of a method's trainable, AdamW
with the reference's weight-decay exemptions, and sharded initialisation on a mesh."""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from comm_jax.mesh import param_shardings
from comm_jax.methods import Method
from comm_jax.models import split_model
from comm_jax.models.clip_encoders import FrozenParam, is_frozen


@flax.struct.dataclass
class TrainState:
    """`params` holds every parameter of the method's trainable, pretrained frozen ones (`FrozenParam`)
    included; `opt_state` is the optimizer's state of the trained ones only (`split_frozen`)."""
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


def decay_mask(params) -> Any:
    """True where AdamW applies weight decay: weight matrices and conv kernels, never biases,
    normalisation scales, the CLS token or the logit scale (all of rank < 2 or named bias)."""
    def decays(path, leaf):
        last = str(getattr(path[-1], "key", path[-1]))
        return jnp.ndim(leaf) >= 2 and last != "bias"
    return jax.tree_util.tree_map_with_path(decays, params)


def learning_rate_schedule(opt_cfg, num_steps: int) -> Callable[[jax.Array], jax.Array]:
    """`constant` (with optional linear warmup) or `cosine` (warmup then cosine decay to 0)."""
    lr, warmup = float(opt_cfg.lr), int(opt_cfg.get("warmup_steps", 0))
    kind = opt_cfg.get("schedule", "constant")
    if kind == "constant":
        return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)],
                                    [warmup]) if warmup else optax.constant_schedule(lr)
    if kind == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, lr, max(warmup, 1), max(num_steps, warmup + 1))
    raise ValueError(f"optimizer.schedule must be 'constant' or 'cosine', got {kind!r}")


def held_still(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """`tx`'s state, never updated, and zero updates: what the main update does to a method's critics,
    whose own steps (`train_step.make_critic_update`) advance that state."""
    def update(updates, state, params=None):
        return jax.tree.map(jnp.zeros_like, updates), state
    return optax.GradientTransformation(tx.init, update)


def frozen_mask(params) -> Any:
    """Like `params`, True on the leaves of `FrozenParam` variables (pretrained towers held still)."""
    return jax.tree.map(lambda v: jax.tree.map(lambda _: is_frozen(v), v), params,
                        is_leaf=lambda x: isinstance(x, nnx.Variable))


def split_frozen(params) -> tuple[Any, Any]:
    """(trained, frozen): the parameters the optimizer updates, and the `FrozenParam`s (pretrained towers),
    which get no gradient and no optimizer state; `nnx.merge_state(trained, frozen)` is `params` again."""
    return nnx.split_state(params, nnx.Not(FrozenParam), FrozenParam)


def make_optimizer(opt_cfg, num_steps: int, method: Method | None = None
                   ) -> tuple[optax.GradientTransformation, Callable]:
    """AdamW (with `grad_clip`) and its schedule, over the trained parameters (`split_frozen`). With a
    method that has critics, the parameters `method.critic_mask` marks are held still by it and carry
    `method.critic_optimizer`'s state under the partition's `critic` group."""
    schedule = learning_rate_schedule(opt_cfg, num_steps)
    tx = optax.adamw(schedule, b1=opt_cfg.get("b1", 0.9), b2=opt_cfg.get("b2", 0.999),
                     eps=opt_cfg.get("eps", 1e-8), weight_decay=float(opt_cfg.weight_decay), mask=decay_mask)
    clip = float(opt_cfg.get("grad_clip", 0.0))
    if clip > 0:
        tx = optax.chain(optax.clip_by_global_norm(clip), tx)
    if method is not None and method.critic_steps() > 0:
        def groups(params):
            return jax.tree.map(lambda critic: "critic" if critic else "main", method.critic_mask(params))
        tx = optax.partition({"main": tx, "critic": held_still(method.critic_optimizer())}, groups)
    return tx, schedule


def _init_state(cfg, method: Method, abstract: bool):
    def build():
        return method.build(nnx.Rngs(params=cfg.seed))
    trainable = nnx.eval_shape(build) if abstract else build()
    graphdef, params, batch_stats = split_model(trainable)
    tx, schedule = make_optimizer(cfg.optimizer, cfg.num_steps, method)

    def init(params, batch_stats):
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                          opt_state=tx.init(split_frozen(params)[0]))

    return graphdef, params, batch_stats, init, tx, schedule


def create_train_state(cfg, mesh: Mesh, method: Method):
    """Build the method's trainable (model + extra parameters), the optimizer and a train state laid
    out on `mesh` by `cfg.param_sharding`. Returns (graphdef, state, state_shardings, tx, schedule)."""
    graphdef, params, batch_stats, init, tx, schedule = _init_state(cfg, method, abstract=False)
    abstract = jax.eval_shape(init, params, batch_stats)
    shardings = param_shardings(abstract, mesh, [tuple(r) for r in cfg.get("param_sharding", ())])
    state = jax.jit(init, out_shardings=shardings)(params, batch_stats)
    return graphdef, state, shardings, tx, schedule


def abstract_train_state(cfg, mesh: Mesh, method: Method):
    """Like `create_train_state` but allocates nothing: ShapeDtypeStructs with their shardings, for
    ahead-of-time compilation. Returns (graphdef, abstract state, state_shardings, tx, schedule)."""
    graphdef, params, batch_stats, init, tx, schedule = _init_state(cfg, method, abstract=True)
    abstract = jax.eval_shape(init, params, batch_stats)
    shardings = param_shardings(abstract, mesh, [tuple(r) for r in cfg.get("param_sharding", ())])
    return graphdef, abstract_state(abstract, shardings), shardings, tx, schedule


def abstract_state(state: TrainState, shardings) -> TrainState:
    """ShapeDtypeStructs with shardings, the restore target for Orbax."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)
