"""Cross+Self: per-modality towers with MLP heads; cross-modal NT-Xent on one weakly augmented view
plus SimCLR's NT-Xent between two strongly augmented views of each modality."""

from __future__ import annotations

import math

from comm_jax import losses
from comm_jax.methods.base import Method, n_modalities, nt_xent_flops


class CrossSelf(Method):
    name = "cross_self"
    views = ("weak", "view1", "view2")
    architecture = "towers"
    min_modalities = 2

    def embeddings(self, model, views, valid):
        valid = valid or {}
        return {v: model(views[v], valid.get(v))[1] for v in self.views}   # [n, batch, head_out] each

    def objective(self, embeddings, scalars, axis_name):
        return losses.cross_self_loss(embeddings["weak"], embeddings["view1"], embeddings["view2"],
                                      self.loss_cfg.temperature, self.loss_cfg.get("ssl_scale", 1.0),
                                      axis_name=axis_name)

    def loss_flops(self, batch: int) -> int:
        n = n_modalities(self.cfg)
        return (math.comb(n, 2) + n) * nt_xent_flops(batch, self.head_dim())
