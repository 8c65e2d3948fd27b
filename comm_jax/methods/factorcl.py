"""FactorCL (Liang et al., NeurIPS 2023), self-supervised variant: per-modality towers whose shared and
unique factors are learned by InfoNCE lower bounds and NCE-CLUB upper bounds of (conditional) mutual
information, each term with its own projections and concatenation critic.

With e_i = Z_i(view1) (the reference's x_i) and a_i = Z_i(view2) (its augmented x_i'), P_k projection
MLPs (embed -> embed -> embed) and f_k critics MLP([u, v]) -> scalar, the loss is the reference's sum

    L = NCE(f1; P1(e1), P1'(e2))            -I(X1; X2), lower bound
      + CLUB(f2; P2(e1), P2'(e2))           +I(X1; X2), upper bound
      + NCE(f3; P3(e1), P3(a1))             -I(X1; X1')
      + NCE(f4; P4(e2), P4(a2))             -I(X2; X2')
      + NCE(f5; [P5(e1), P5(a1)], [P5'(e2), P5'(a2)])   -I(X1; X2 | X1', X2')
      + CLUB(f6; [P6(e1), P6(e1)], [P6'(e2), P6'(e2)])  +I(X1; X2 | X1', X2') (the reference feeds e, not a)

over a batch of N pairs (x_i, y_i), with T0_i the critic on the pair and T1_ij on (x_j, y_i):
NCE(f; x, y) = -(mean_i f([x_i, y_i]) - mean_i logsumexp_j f([x_j, y_i]) + log N);
CLUB(f; x, y) = mean_i f([y_i, x_i]) - mean_ij f([y_i, x_j]).
The CLUB critics f2, f6 are trained only by their own loss, NCE(f; y, x) in their input order
(`critic_objective`), with Adam, `loss.critic_steps` updates per step (the reference: 5 on fresh
batches after each encoder update); the main loss leaves them unchanged. Inside `jax.shard_map` each
device scores its rows i against the gathered columns j.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from comm_jax.methods.base import Method

PROJECTIONS = ("infonce_x1x2_1", "infonce_x1x2_2", "club_x1x2_1", "club_x1x2_2", "infonce_x1y", "infonce_x2y",
               "infonce_x1x2_cond_1", "infonce_x1x2_cond_2", "club_x1x2_cond_1", "club_x1x2_cond_2")
# critic name -> (width factor of each input: conditional terms concatenate two projections)
CRITICS = {"infonce_x1x2": 1, "club_x1x2": 1, "infonce_x1y": 1, "infonce_x2y": 1, "infonce_x1x2_cond": 2,
           "club_x1x2_cond": 2}
CLUB_CRITICS = ("club_x1x2", "club_x1x2_cond")


class MLP(nnx.Module):
    """Linear layers of `widths` with ReLU between them (the reference's `mlp`)."""

    def __init__(self, widths: tuple[int, ...], *, rngs: nnx.Rngs):
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(widths, widths[1:])])


class FactorCLParams(nnx.Module):
    """The method's own parameters: the projection of each term and the concatenation critics."""

    def __init__(self, embed: int, critic_hidden: int, *, rngs: nnx.Rngs):
        self.projections = nnx.Dict({name: MLP((embed, embed, embed, embed), rngs=rngs) for name in PROJECTIONS})
        self.critics = nnx.Dict({name: MLP((2 * k * embed, critic_hidden, critic_hidden, 1), rngs=rngs)
                                 for name, k in CRITICS.items()})


def apply_mlp(layers: Mapping[int, Mapping[str, jax.Array]], x: jax.Array, first: int = 0) -> jax.Array:
    """`x` through `layers[first:]` (pure dicts of kernel/bias), ReLU between layers and after any
    layer before `first` (whose pre-activation `x` is)."""
    if first:
        x = jax.nn.relu(x)
    last = len(layers) - 1
    for i in range(first, len(layers)):
        x = x @ layers[i]["kernel"] + layers[i]["bias"]
        if i < last:
            x = jax.nn.relu(x)
    return x


def pair_scores(layers, rows: jax.Array, cols: jax.Array, rows_first: bool) -> jax.Array:
    """`[len(rows), len(cols)]`: the critic on every pair, f([rows_i, cols_j]) (`rows_first`) or
    f([cols_j, rows_i]); the first layer is split by input so no [rows x cols, 2d] tensor is built."""
    kernel = layers[0]["kernel"]
    split = (rows if rows_first else cols).shape[-1]
    w_rows, w_cols = (kernel[:split], kernel[split:]) if rows_first else (kernel[split:], kernel[:split])
    hidden = (rows @ w_rows)[:, None, :] + (cols @ w_cols)[None, :, :] + layers[0]["bias"]
    return apply_mlp(layers, hidden, first=1)[..., 0]


def _gather(x: jax.Array, axis_name) -> jax.Array:
    return x if axis_name is None else jax.lax.all_gather(x, axis_name, axis=0, tiled=True)


def _global_mean(total: jax.Array, count: float, axis_name) -> jax.Array:
    return (total if axis_name is None else jax.lax.psum(total, axis_name)) / count


def _global_rows(x: jax.Array, axis_name) -> int:
    return x.shape[0] * (1 if axis_name is None else jax.lax.psum(1, axis_name))


def nce_bound(layers, x: jax.Array, y: jax.Array, axis_name, *, club_order: bool = False) -> jax.Array:
    """mean_i T0_i - mean_i logsumexp_j T1_ij + log N, with T0_i = f([x_i, y_i]), T1_ij = f([x_j, y_i])
    (`club_order`: f([y_i, x_i]), f([y_i, x_j])). x, y: this device's rows `[b, d]`."""
    n = _global_rows(y, axis_name)
    joint = jnp.concatenate([y, x] if club_order else [x, y], axis=-1)
    positive = apply_mlp(layers, joint)[:, 0]
    scores = pair_scores(layers, y, _gather(x, axis_name), rows_first=club_order)
    lse = jax.nn.logsumexp(scores, axis=-1)
    return _global_mean(positive.sum(), n, axis_name) - _global_mean(lse.sum(), n, axis_name) + math.log(n)


def club_bound(layers, x: jax.Array, y: jax.Array, axis_name) -> jax.Array:
    """mean_i f([y_i, x_i]) - mean_ij f([y_i, x_j]): the NCE-CLUB upper bound estimate."""
    n = _global_rows(y, axis_name)
    positive = apply_mlp(layers, jnp.concatenate([y, x], axis=-1))[:, 0]
    scores = pair_scores(layers, y, _gather(x, axis_name), rows_first=True)
    return _global_mean(positive.sum(), n, axis_name) - _global_mean(scores.sum(), n * n, axis_name)


class FactorCL(Method):
    name = "factorcl"
    views = ("view1", "view2")
    architecture = "towers"
    min_modalities = 2
    max_modalities = 2

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        for key in ("critic_hidden", "critic_steps"):
            if int(cfg.loss.get(key, 1)) <= 0:
                raise ValueError(f"config.loss.{key} must be positive, got {cfg.loss[key]}")

    def init_extra(self, rngs):
        return FactorCLParams(int(self.cfg.model.latent), int(self.loss_cfg.get("critic_hidden", 512)), rngs=rngs)

    def embeddings(self, model, views, valid):
        valid = valid or {}
        return {v: model.pooled(views[v], model.modalities, valid.get(v)).astype(jnp.float32)
                for v in self.views}   # [2, batch, latent]

    def scalars(self, extra):
        return nnx.to_pure_dict(nnx.state(extra, nnx.Param))

    def _projected(self, scalars, name: str, x: jax.Array) -> jax.Array:
        return apply_mlp(scalars["projections"][name]["layers"], x)

    def terms(self, embeddings, scalars, axis_name) -> dict[str, jax.Array]:
        """The six signed terms of the loss (see the module doc)."""
        (e1, e2), (a1, a2) = embeddings["view1"], embeddings["view2"]
        p, critic = self._projected, (lambda n: scalars["critics"][n]["layers"])

        def both(name, u, v):
            return jnp.concatenate([p(scalars, name, u), p(scalars, name, v)], axis=-1)

        return {
            "nce_x1x2": -nce_bound(critic("infonce_x1x2"), p(scalars, "infonce_x1x2_1", e1),
                                   p(scalars, "infonce_x1x2_2", e2), axis_name),
            "club_x1x2": club_bound(critic("club_x1x2"), p(scalars, "club_x1x2_1", e1),
                                    p(scalars, "club_x1x2_2", e2), axis_name),
            "nce_x1x1aug": -nce_bound(critic("infonce_x1y"), p(scalars, "infonce_x1y", e1),
                                      p(scalars, "infonce_x1y", a1), axis_name),
            "nce_x2x2aug": -nce_bound(critic("infonce_x2y"), p(scalars, "infonce_x2y", e2),
                                      p(scalars, "infonce_x2y", a2), axis_name),
            "nce_x1x2_cond": -nce_bound(critic("infonce_x1x2_cond"), both("infonce_x1x2_cond_1", e1, a1),
                                        both("infonce_x1x2_cond_2", e2, a2), axis_name),
            "club_x1x2_cond": club_bound(critic("club_x1x2_cond"), both("club_x1x2_cond_1", e1, e1),
                                         both("club_x1x2_cond_2", e2, e2), axis_name),
        }

    def objective(self, embeddings, scalars, axis_name):
        terms = self.terms(embeddings, scalars, axis_name)
        return sum(terms.values()), {f"loss_{k}": v for k, v in terms.items()}

    # ---- the CLUB critics' own objective (see Method.critic_objective)

    def critic_mask(self, params: Any) -> Any:
        def is_club_critic(path, leaf):
            names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
            return names[:2] == ["extra", "critics"] and names[2] in CLUB_CRITICS
        return jax.tree_util.tree_map_with_path(is_club_critic, params)

    def critic_optimizer(self) -> optax.GradientTransformation:
        return optax.adam(float(self.loss_cfg.get("critic_lr", self.cfg.optimizer.lr)))

    def critic_steps(self) -> int:
        return int(self.loss_cfg.get("critic_steps", 5))

    def critic_objective(self, embeddings, scalars, axis_name):
        (e1, e2) = embeddings["view1"]
        p = self._projected
        doubled = [jnp.concatenate([p(scalars, f"club_x1x2_cond_{i}", e)] * 2, axis=-1) for i, e in ((1, e1), (2, e2))]
        plain = -nce_bound(scalars["critics"]["club_x1x2"]["layers"], p(scalars, "club_x1x2_1", e1),
                           p(scalars, "club_x1x2_2", e2), axis_name, club_order=True)
        cond = -nce_bound(scalars["critics"]["club_x1x2_cond"]["layers"], *doubled, axis_name, club_order=True)
        return plain + cond, {"critic_loss_club_x1x2": plain, "critic_loss_club_x1x2_cond": cond}

    def loss_flops(self, batch: int) -> int:
        embed, hidden = int(self.cfg.model.latent), int(self.loss_cfg.get("critic_hidden", 512))
        per_pair = 2 * (hidden * hidden + hidden)            # the critic's layers after the split first one
        first = sum(2 * 2 * batch * 2 * k * embed * hidden for k in CRITICS.values())
        return len(CRITICS) * batch * batch * per_pair + first

    def head_dim(self) -> int:
        return int(self.cfg.model.latent)
