"""What a method is: the parameters, views, embeddings, objective, config checks and FLOP count that
make one self-supervised objective, behind one interface the step, configs and evaluation ask."""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

import jax
from flax import nnx

from comm_jax import models

Embeddings = dict[str, jax.Array]   # name -> [groups, batch, dim], the batch on axis 1


class Trainable(nnx.Module):
    """Everything one train step updates: the representation model (what evaluation and export
    read) and the method's own parameters (`extra`, e.g. CLIP's logit scale), kept apart."""

    def __init__(self, model: nnx.Module, extra: nnx.Module | None = None):
        self.model = model
        self.extra = extra


class Method:
    """Base class of a method. Subclasses set the class attributes and implement `embeddings`,
    `objective` and `loss_flops`; the rest has defaults.

    - `views`: the augmented views of each example the step feeds (names of `data.views`).
    - `architecture`: the model it trains (`fusion` or `towers`, `model.architecture`).
    - `embeddings` runs outside `jax.shard_map` (GSPMD shards it); `objective` runs inside it on each
      device's rows, with `axis_name` naming the batch axes, so its collectives are explicit.
    """

    name: ClassVar[str]
    views: ClassVar[tuple[str, ...]] = ("view1", "view2")
    architecture: ClassVar[str] = "fusion"
    min_modalities: ClassVar[int] = 1
    max_modalities: ClassVar[int | None] = None

    def __init__(self, cfg):
        self.check_config(cfg)
        self.cfg = cfg
        self.loss_cfg = cfg.loss

    @classmethod
    def check_config(cls, cfg) -> None:
        """Raise ValueError naming the key when `cfg` cannot train this method."""
        n = len(cfg.model.modalities)
        if n < cls.min_modalities or (cls.max_modalities is not None and n > cls.max_modalities):
            wanted = (f"exactly {cls.min_modalities}" if cls.max_modalities == cls.min_modalities
                      else f"at least {cls.min_modalities}")
            raise ValueError(f"config.loss.name={cls.name!r} needs {wanted} modalities; config.model.modalities "
                             f"has {n}")
        arch = cfg.model.get("architecture", "fusion")
        if arch != cls.architecture:
            raise ValueError(f"config.model.architecture={arch!r}, but config.loss.name={cls.name!r} trains a "
                             f"{cls.architecture!r} model")

    def build(self, rngs: nnx.Rngs) -> Trainable:
        """The freshly initialised trainable: the model first (its initialisation does not depend
        on the method), then the method's extra parameters."""
        model = models.build_model(self.cfg.model, rngs=rngs)
        return Trainable(model, self.init_extra(rngs))

    def init_extra(self, rngs: nnx.Rngs) -> nnx.Module | None:
        return None

    def embeddings(self, model: nnx.Module, views: Mapping[str, Mapping[str, jax.Array]],
                   valid: Mapping[str, Mapping[str, jax.Array]] | None) -> Embeddings:
        """Per view name, the inputs `{modality: [batch, ...]}` -> the embeddings the objective scores."""
        raise NotImplementedError

    def scalars(self, extra: nnx.Module | None) -> dict[str, jax.Array]:
        """Replicated values the objective needs besides the embeddings (e.g. a logit scale)."""
        return {}

    def objective(self, embeddings: Embeddings, scalars: Mapping[str, jax.Array],
                  axis_name) -> tuple[jax.Array, dict[str, jax.Array]]:
        """(loss, metrics) over the global batch, from this device's rows of `embeddings`."""
        raise NotImplementedError

    def constrain(self, params: Any) -> Any:
        """Parameters before the optimizer's update is added (the reference clamps CLIP's logit
        scale there). Default: unchanged."""
        return params

    # Critics trained by an objective of their own (FactorCL's CLUB critics): the train step holds the
    # parameters `critic_mask` marks still in the main update, then, after it, takes `critic_steps`
    # updates of them with `critic_optimizer` on `critic_objective` of the batch's embeddings, recomputed
    # with the updated model and not differentiated. Default: no critics.

    def critic_steps(self) -> int:
        return 0

    def critic_mask(self, params: Any) -> Any:
        """Pytree of bools like `params` (paths start with `model` or `extra`): True on critic parameters."""
        raise NotImplementedError

    def critic_optimizer(self):
        """The `optax.GradientTransformation` of the critics (its state rides in the train state)."""
        raise NotImplementedError

    def critic_objective(self, embeddings: Embeddings, scalars: Mapping[str, jax.Array],
                         axis_name) -> tuple[jax.Array, dict[str, jax.Array]]:
        """(critic loss, metrics) over the global batch, inside `jax.shard_map` like `objective`."""
        raise NotImplementedError

    def loss_flops(self, batch: int) -> int:
        """Similarity-matmul FLOPs of the objective over a global `batch` (2 per multiply-add)."""
        raise NotImplementedError

    def head_dim(self) -> int:
        return int(self.cfg.model.head_out)


def nt_xent_flops(batch: int, dim: int) -> int:
    """FLOPs of one NT-Xent term: cross and same-view blocks of 2 row groups, `2B x D x B` each."""
    return 2 * 2 * (2 * batch) * dim * batch


def n_modalities(cfg) -> int:
    return len(cfg.model.modalities)
