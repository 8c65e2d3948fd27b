"""Cross (CLIP): per-modality towers with a bias-free linear projection, CLIP's symmetric
cross-entropy between modalities of one weakly augmented view, and a learnable logit scale that the
reference clamps to [0, ln 100] before each update."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from comm_jax import losses
from comm_jax.methods.base import Method, n_modalities

LOG_MAX_LOGIT_SCALE = math.log(100.0)


class LogitScale(nnx.Module):
    """CLIP's learnable log logit scale, initialised at log(1 / 0.07)."""

    def __init__(self):
        self.log_logit_scale = nnx.Param(jnp.asarray(math.log(1 / 0.07), jnp.float32))


class Cross(Method):
    name = "cross"
    views = ("weak",)
    architecture = "towers"
    min_modalities = 2

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        if cfg.model.get("projection", "mlp") != "linear":
            raise ValueError("config.loss.name='cross' projects with CLIP's linear map: set config.model.projection='linear'")

    def init_extra(self, rngs):
        return LogitScale()

    def embeddings(self, model, views, valid):
        return {"weak": model(views["weak"], (valid or {}).get("weak"))[1]}   # [n, batch, head_out]

    def scalars(self, extra):
        return {"log_logit_scale": extra.log_logit_scale[...]}

    def objective(self, embeddings, scalars, axis_name):
        return losses.clip_loss(embeddings["weak"], scalars["log_logit_scale"], axis_name=axis_name)

    def constrain(self, params):
        def clamp(path, leaf):
            names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
            return jnp.clip(leaf, 0.0, LOG_MAX_LOGIT_SCALE) if names[:2] == ["extra", "log_logit_scale"] else leaf
        return jax.tree_util.tree_map_with_path(clamp, params)

    def loss_flops(self, batch: int) -> int:
        pairs = math.comb(n_modalities(self.cfg), 2)
        return pairs * 2 * (2 * batch) * self.head_dim() * batch
