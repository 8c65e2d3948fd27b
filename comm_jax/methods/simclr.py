"""SimCLR on one modality: its tower with an MLP head, NT-Xent between two augmented views."""

from __future__ import annotations

from comm_jax import losses
from comm_jax.methods.base import Method, nt_xent_flops


class SimCLR(Method):
    name = "simclr"
    views = ("view1", "view2")
    architecture = "towers"
    min_modalities = 1
    max_modalities = 1

    def embeddings(self, model, views, valid):
        valid = valid or {}
        return {v: model(views[v], valid.get(v))[1] for v in self.views}   # [1, batch, head_out]

    def objective(self, embeddings, scalars, axis_name):
        return losses.simclr_loss(embeddings["view1"][0], embeddings["view2"][0], self.loss_cfg.temperature,
                                  axis_name=axis_name)

    def loss_flops(self, batch: int) -> int:
        return nt_xent_flops(batch, self.head_dim())
