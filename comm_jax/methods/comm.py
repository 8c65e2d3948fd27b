"""CoMM: the fused representation of each view aligned with itself and with every
single-modality-masked version of it, through the fusion model's n + 1 passes."""

from __future__ import annotations

from comm_jax import losses
from comm_jax.methods.base import Method, n_modalities


class CoMM(Method):
    name = "comm"
    views = ("view1", "view2")
    architecture = "fusion"

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        weights = cfg.loss.get("weights", None)
        if weights is not None and len(weights) != n_modalities(cfg) + 1:
            raise ValueError(f"config.loss.weights needs {n_modalities(cfg) + 1} entries (one per mask), "
                             f"got {len(weights)}")
        chunk = int(cfg.loss.get("column_chunk", 0) or 0)
        if chunk < 0 or (chunk and cfg.batch_size % chunk):
            raise ValueError(f"config.loss.column_chunk must be 0 (whole rows) or divide the global batch "
                             f"{cfg.batch_size}, got {chunk}")

    def embeddings(self, model, views, valid):
        valid = valid or {}
        return {v: model(views[v], valid.get(v))[1] for v in self.views}   # [n + 1, batch, head_out]

    def objective(self, embeddings, scalars, axis_name):
        weights = self.loss_cfg.get("weights", None)
        weights = None if weights is None else tuple(weights)
        chunk = int(self.loss_cfg.get("column_chunk", 0) or 0)
        if chunk:   # same loss, logits formed a column chunk at a time
            return losses.comm_loss_blockwise(embeddings["view1"], embeddings["view2"], self.loss_cfg.temperature,
                                              weights, axis_name=axis_name, chunk=chunk)
        return losses.comm_loss(embeddings["view1"], embeddings["view2"], self.loss_cfg.temperature,
                                weights, axis_name=axis_name)

    def loss_flops(self, batch: int) -> int:
        # Two batched similarity matmuls of 2(n+1)B rows x B columns, and the column LSE's re-use
        # of the first: 3 blocks in all.
        return 3 * 2 * (2 * (n_modalities(self.cfg) + 1) * batch) * self.head_dim() * batch
