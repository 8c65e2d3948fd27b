"""CMC: per-modality towers with MLP heads and NT-Xent between every pair of modalities of one view."""

from __future__ import annotations

import math

from comm_jax import losses
from comm_jax.methods.base import Method, n_modalities, nt_xent_flops


class CMC(Method):
    name = "cmc"
    views = ("view1",)
    architecture = "towers"
    min_modalities = 2

    def embeddings(self, model, views, valid):
        return {"view1": model(views["view1"], (valid or {}).get("view1"))[1]}

    def objective(self, embeddings, scalars, axis_name):
        return losses.cmc_loss(embeddings["view1"], self.loss_cfg.temperature, axis_name=axis_name)

    def loss_flops(self, batch: int) -> int:
        return math.comb(n_modalities(self.cfg), 2) * nt_xent_flops(batch, self.head_dim())
