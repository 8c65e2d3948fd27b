"""Contrastive objectives: CoMM's fused multimodal loss and the baselines (CLIP, Cross+Self, CMC, SimCLR).

Embeddings are not normalised. CoMM's loss takes `[n_modalities + 1, batch, dim]` per view (entry
`e < n` the single-modality-masked input's embedding, the last the full multimodal one); the
baselines take unimodal stacks `[n_modalities, batch, dim]`. Each returns `(loss, metrics)`.

With `axis_name` set (inside `jax.shard_map` with the batch sharded over that mesh axis or axes),
the arrays are the device's local rows: each device all-gathers the embeddings once and scores its
local rows against the global columns; positives sit at offset `axis_index * local_batch`. No
device forms the global `N x N` logits, and the result equals the single-device loss.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import jax
import jax.numpy as jnp

AxisName = str | tuple[str, ...] | None



def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Rows scaled to unit L2 norm (as torch's F.normalize), computed in float32."""
    x = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
    return x / jnp.maximum(norm, eps)


def _gather(x: jax.Array, axis_name: AxisName, axis: int) -> tuple[jax.Array, jax.Array]:
    """All rows of `x` across `axis_name` along `axis`, and this device's row offset in them."""
    if axis_name is None:
        return x, jnp.zeros((), jnp.int32)
    local = x.shape[axis]
    full = jax.lax.all_gather(x, axis_name, axis=axis, tiled=True)
    return full, jax.lax.axis_index(axis_name) * local


def _sum_over_devices(tree, axis_name: AxisName):
    return tree if axis_name is None else jax.lax.psum(tree, axis_name)


def _scores(rows: jax.Array, cols: jax.Array, spec: str, scale) -> jax.Array:
    """Similarity logits in float32 from (possibly bf16) normalised embeddings."""
    return jnp.einsum(spec, rows, cols, preferred_element_type=jnp.float32) * scale


def _row_stats(cross: jax.Array, offset: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """For logits `[..., b, N]` whose positive for local row i is column `offset + i`:
    (log-sum-exp over the row, the positive logit, whether the row's argmax is the positive)."""
    b = cross.shape[-2]
    target = offset + jnp.arange(b)
    positive = cross[..., jnp.arange(b), target]
    correct = jnp.argmax(cross, axis=-1) == target
    return jax.nn.logsumexp(cross, axis=-1), positive, correct


def _self_lse(self_logits: jax.Array, offset: jax.Array) -> jax.Array:
    """Log-sum-exp over a row of same-view logits `[..., b, N]` with the row's own column removed."""
    b, n = self_logits.shape[-2:]
    own = (offset + jnp.arange(b))[:, None] == jnp.arange(n)[None, :]
    return jax.nn.logsumexp(jnp.where(own, -jnp.inf, self_logits), axis=-1)


def _column_lse(stripe: jax.Array, offset: jax.Array, axis_name: AxisName) -> jax.Array:
    """Log-sum-exp down the columns of a matrix whose rows are sharded: `stripe` `[..., b, N]` holds
    this device's rows (global rows `offset .. offset + b`); returns the LSE of columns `offset ..
    offset + b` over all N rows, `[..., b]`. Across devices only `[..., N]` partial results move."""
    return _own_columns(jax.nn.logsumexp(stripe, axis=-2), offset, stripe.shape[-2], axis_name)


def _own_columns(partial: jax.Array, offset: jax.Array, b: int, axis_name: AxisName) -> jax.Array:
    """Column log-sum-exps `[..., N]` over this device's rows combined over all devices' rows, sliced
    to this device's columns `offset .. offset + b`."""
    if axis_name is not None:
        peak = jax.lax.pmax(jax.lax.stop_gradient(partial), axis_name)
        partial = peak + jnp.log(jax.lax.psum(jnp.exp(partial - peak), axis_name))
    return jax.lax.dynamic_slice_in_dim(partial, offset, b, axis=-1)


def nt_xent(a: jax.Array, b: jax.Array, temperature: float = 0.1,
            axis_name: AxisName = None) -> tuple[jax.Array, jax.Array]:
    """SimCLR's NT-Xent over 2B rows for `a`, `b` of shape `[batch, dim]` (not normalised).

    Row i of a is scored against every b_j and every a_k (k != i) with target b_i; row i of b
    against every a_j and b_k (k != i) with target a_i. Returns (mean cross-entropy over the 2B
    rows, retrieval accuracy in % of the rows of a against b).
    """
    a, b = l2_normalize(a), l2_normalize(b)
    a_all, offset = _gather(a, axis_name, axis=0)
    b_all, _ = _gather(b, axis_name, axis=0)
    scale = 1.0 / temperature
    rows = jnp.stack([a, b])                                   # [2, b, D]
    cross = _scores(rows, jnp.stack([b_all, a_all]), "vrd,vnd->vrn", scale)
    same = _scores(rows, jnp.stack([a_all, b_all]), "vrd,vnd->vrn", scale)
    lse, positive, correct = _row_stats(cross, offset)
    row_loss = jnp.logaddexp(lse, _self_lse(same, offset)) - positive
    sums = _sum_over_devices((row_loss.sum(), correct[0].sum()), axis_name)
    total_rows = 2 * _global_batch(a.shape[0], axis_name)
    return sums[0] / total_rows, 100.0 * sums[1] / (total_rows / 2)


def _global_batch(local: int, axis_name: AxisName):
    if axis_name is None:
        return local
    return local * jax.lax.psum(1, axis_name)


def _comm_views(view1: jax.Array, view2: jax.Array, axis_name: AxisName):
    """The two views' normalised embeddings stacked `[2, E, b, D]` (A, C), gathered over devices
    `[2, E, N, D]`, the other view's full multimodal embedding `[2, N, D]` (C_n, A_n), and the row offset."""
    if view1.shape != view2.shape or view1.ndim != 3:
        raise ValueError(f"comm_loss expects two [n+1, batch, dim] arrays, got {view1.shape} and {view2.shape}")
    local = jnp.stack([l2_normalize(view1), l2_normalize(view2)])
    glob, offset = _gather(local, axis_name, axis=2)
    return local, glob, glob[::-1, -1], offset


def comm_loss(view1: jax.Array, view2: jax.Array, temperature: float = 0.1,
              weights: Sequence[float] | None = None,
              axis_name: AxisName = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """CoMM's loss: each embedding of one view aligned with the full multimodal one of the other.

    view1, view2: `[n + 1, batch, dim]`, entry n the full multimodal embedding (A_e and C_e).
    L_e = (nt_xent(A_e, C_n) + nt_xent(C_e, A_n)) / 2 and loss = mean_e L_e (weighted if `weights`).
    All 2(n+1) NT-Xent terms come from two batched similarity matmuls with float32 accumulation:
    every view row against the other view's full embedding (whose column log-sum-exps give the
    full-embedding rows of each term), and every row against its own view's columns.

    metrics: `ssl_loss_{e}`, `ssl_acc_{e}` per term and `ssl_acc` (retrieval accuracy in %, as
    the reference: rows of A_e against C_n and of C_e against A_n, averaged).
    """
    local, glob, full_glob, offset = _comm_views(view1, view2, axis_name)
    scale = 1.0 / temperature

    # Rows A_e vs C_n and C_e vs A_n (the "view" rows of each term): a row stripe of the global
    # matrices M_{0,e} = A_e C_n^T and M_{1,e} = C_e A_n^T.
    view_cross = _scores(local, full_glob, "verd,vnd->vern", scale)
    # Same-view columns of every row group, the diagonal removed. Index [v, e] is group (v, e).
    self_lse = _self_lse(_scores(local, glob, "verd,vend->vern", scale), offset)

    view_lse, view_pos, view_correct = _row_stats(view_cross, offset)
    # The "full" rows of each term (C_n vs A_e, A_n vs C_e) are the columns of the same M_{v,e}: their
    # log-sum-exp is a column LSE of the stripes (combined over devices) and their positive is the
    # same diagonal entry, so no second similarity matmul is needed.
    full_lse = _column_lse(view_cross, offset, axis_name)
    return _comm_terms(view_lse, self_lse, full_lse, view_pos, view_correct, weights, axis_name)


def _comm_terms(view_lse: jax.Array, self_lse: jax.Array, full_lse: jax.Array, view_pos: jax.Array,
                view_correct: jax.Array, weights, axis_name: AxisName) -> tuple[jax.Array, dict[str, jax.Array]]:
    """CoMM's loss and metrics from the log-sum-exps `[2, E, b]` of each term's view rows over the other
    view's columns, over their own view's columns (diagonal removed), of its full rows, the positives'
    logits, and whether each view row retrieves its positive."""
    view_rows = jnp.logaddexp(view_lse, self_lse) - view_pos                  # [2, E, b]
    # A row C_n (v = 0 term) uses C's own columns: self_lse[1, -1]; A_n rows use self_lse[0, -1].
    full_self = self_lse[::-1, -1][:, None, :]                                 # [2, 1, b]
    full_rows = jnp.logaddexp(full_lse, full_self) - view_pos                 # [2, E, b]
    n_emb, b = view_rows.shape[1:]
    sums = _sum_over_devices(
        ((view_rows + full_rows).sum(axis=(0, 2)), view_correct.sum(axis=(0, 2))), axis_name)
    batch = _global_batch(b, axis_name)
    term_loss = sums[0] / (4 * batch)                                          # [E]
    term_acc = 100.0 * sums[1] / (2 * batch)                                   # [E]
    w = jnp.ones((n_emb,)) if weights is None else jnp.asarray(weights, jnp.float32)
    if w.shape != (n_emb,):
        raise ValueError(f"comm_loss weights must have {n_emb} entries, got {w.shape}")
    loss = jnp.mean(term_loss * w)
    metrics = {f"ssl_loss_{e}": term_loss[e] for e in range(n_emb)}
    metrics |= {f"ssl_acc_{e}": term_acc[e] for e in range(n_emb)}
    metrics["ssl_acc"] = jnp.mean(term_acc)
    return loss, metrics


def comm_loss_blockwise(view1: jax.Array, view2: jax.Array, temperature: float = 0.1,
                        weights: Sequence[float] | None = None, axis_name: AxisName = None,
                        chunk: int = 1024) -> tuple[jax.Array, dict[str, jax.Array]]:
    """`comm_loss` computed over column chunks of `chunk` global columns: each chip holds `[2, E, b, chunk]`
    logit blocks at a time instead of `[2, E, b, N]` (the backward pass recomputes each block), so its
    memory no longer grows with the global batch N. Same value, gradient and metrics as `comm_loss`."""
    local, glob, full_glob, offset = _comm_views(view1, view2, axis_name)
    _, n_emb, b, _ = local.shape
    n = glob.shape[2]
    chunk = min(chunk, n)
    if n % chunk:
        raise ValueError(f"comm_loss_blockwise: the global batch {n} is not a multiple of chunk={chunk}")
    scale = 1.0 / temperature
    # The positive of local row i is global column offset + i: its logit from the matching rows directly.
    full_local = jax.lax.dynamic_slice_in_dim(full_glob, offset, b, axis=1)          # [2, b, D]
    view_pos = jnp.einsum("verd,vrd->ver", local, full_local, preferred_element_type=jnp.float32) * scale
    rows = offset + jnp.arange(b)

    @jax.checkpoint
    def block(start):
        cols = jax.lax.dynamic_slice_in_dim(full_glob, start, chunk, axis=1)        # [2, c, D]
        same = jax.lax.dynamic_slice_in_dim(glob, start, chunk, axis=2)             # [2, E, c, D]
        cross = _scores(local, cols, "verd,vnd->vern", scale)                       # [2, E, b, c]
        self_logits = _scores(local, same, "verd,vend->vern", scale)
        own = rows[:, None] == (start + jnp.arange(chunk))[None, :]
        self_lse = jax.nn.logsumexp(jnp.where(own, -jnp.inf, self_logits), axis=-1)
        best = jnp.max(cross, axis=-1)
        best_at = start + jnp.argmax(cross, axis=-1)
        return (jax.nn.logsumexp(cross, axis=-1), self_lse, jax.lax.stop_gradient(best), best_at,
                jax.nn.logsumexp(cross, axis=-2))                                   # column LSE: [2, E, c]

    starts = jnp.arange(0, n, chunk)
    view_lse, self_lse, best, best_at, col_lse = jax.lax.map(block, starts)
    view_lse = jax.nn.logsumexp(view_lse, axis=0)                                   # [2, E, b]
    self_lse = jax.nn.logsumexp(self_lse, axis=0)
    winner = jnp.argmax(best, axis=0)                                               # first chunk holding the max
    argmax = jnp.take_along_axis(best_at, winner[None], axis=0)[0]
    view_correct = argmax == rows
    partial = jnp.moveaxis(col_lse, 0, 2).reshape(2, n_emb, n)                      # [2, E, N] over local rows
    full_lse = _own_columns(partial, offset, b, axis_name)
    return _comm_terms(view_lse, self_lse, full_lse, view_pos, view_correct, weights, axis_name)


def _modality_pairs(z: jax.Array) -> list[tuple[int, int]]:
    if z.shape[0] < 2:
        raise ValueError(f"cross-modal losses need at least two modalities, got embeddings {z.shape}")
    return list(itertools.combinations(range(z.shape[0]), 2))


def clip_loss(z: jax.Array, log_logit_scale: jax.Array,
              axis_name: AxisName = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """CLIP's symmetric cross-entropy between the unimodal embeddings `z` `[n, batch, dim]` of one
    view, averaged over modality pairs; logit scale = exp(log_logit_scale) (the reference keeps the
    parameter in [0, ln 100] by clamping it, see `comm_jax.methods.cross`)."""
    scale = jnp.exp(log_logit_scale)
    z = l2_normalize(z)
    z_all, offset = _gather(z, axis_name, axis=1)
    batch = _global_batch(z.shape[1], axis_name)
    terms, accs = [], []
    for i, j in _modality_pairs(z):
        logits = _scores(jnp.stack([z[i], z[j]]), jnp.stack([z_all[j], z_all[i]]), "vrd,vnd->vrn", scale)
        lse, positive, correct = _row_stats(logits, offset)
        sums = _sum_over_devices(((lse - positive).sum(axis=1), correct[0].sum()), axis_name)
        terms.append(sums[0].mean() / batch)
        accs.append(100.0 * sums[1] / batch)
    loss = jnp.mean(jnp.stack(terms))
    return loss, {"clip_loss": loss, "ssl_acc": jnp.mean(jnp.stack(accs)), "logit_scale": scale}


def cmc_loss(z: jax.Array, temperature: float = 0.1,
             axis_name: AxisName = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """CMC: mean NT-Xent over every pair of the unimodal embeddings `z` `[n, batch, dim]`."""
    terms = [nt_xent(z[i], z[j], temperature, axis_name) for i, j in _modality_pairs(z)]
    loss = jnp.mean(jnp.stack([t[0] for t in terms]))
    return loss, {"cross_loss": loss, "ssl_acc": jnp.mean(jnp.stack([t[1] for t in terms]))}


def cross_self_loss(cross: jax.Array, view1: jax.Array, view2: jax.Array, temperature: float = 0.1,
                    ssl_scale: float = 1.0,
                    axis_name: AxisName = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Cross+Self: the cross-modal NT-Xent of `cross` (as CMC) plus `ssl_scale` times the mean over
    modalities of SimCLR's NT-Xent between `view1[i]` and `view2[i]` (all `[n, batch, dim]`): the
    reference's cross + ssl_scale * (ssl_1 + ssl_2) / 2 for two modalities."""
    cross_loss, cross_metrics = cmc_loss(cross, temperature, axis_name)
    selfs = [nt_xent(view1[i], view2[i], temperature, axis_name) for i in range(view1.shape[0])]
    self_loss = jnp.mean(jnp.stack([s[0] for s in selfs]))
    metrics = {"cross_loss": cross_loss, "self_loss": self_loss, "ssl_acc": cross_metrics["ssl_acc"]}
    metrics |= {f"self_acc_{i}": s[1] for i, s in enumerate(selfs)}
    return cross_loss + ssl_scale * self_loss, metrics


def simclr_loss(view1: jax.Array, view2: jax.Array, temperature: float = 0.1,
                axis_name: AxisName = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """SimCLR's NT-Xent between the two views `[batch, dim]` of one embedding."""
    loss, acc = nt_xent(view1, view2, temperature, axis_name)
    return loss, {"ssl_acc": acc}
