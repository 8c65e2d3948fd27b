"""Augmentations that remove a known component of the information, with a strength: on `synthetic_info`
vectors, `resample_latent` replaces one latent block of a modality by fresh noise.

`resample_latent(block, modality, strength)` acts on one `synthetic_info` modality x_i [100] =
concat(shared, unique_i) @ T_i (+ noise). It recovers the latents by the pseudo-inverse of the fixed
T_i (exact without noise; with noise the recovery error is independent of the latents), and replaces
`block` ("shared" or "unique") by sqrt(1 - strength) * block + sqrt(strength) * fresh N(0, 0.5 I):
the block's marginal law is unchanged, and at strength 1 the view holds nothing of the example's
block. What it removes: `block="unique"` on x1 removes U1 (the `unique1` label and x1's half of the
synergy) from that view; `block="shared"` removes the view's copy of the redundant information.
Contrastive pairs of such views make the resampled block view-specific noise, which an objective
that aligns views discards.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from input_pipeline import synthetic_info
from input_pipeline.augment import AugmentOp, register

BLOCKS = ("shared", "unique")


def _block_rows(block: str) -> slice:
    if block == "shared":
        return slice(0, synthetic_info.SHARED_DIM)
    if block == "unique":
        return slice(synthetic_info.SHARED_DIM, synthetic_info.SHARED_DIM + synthetic_info.UNIQUE_DIM)
    raise ValueError(f"resample_latent: block must be one of {BLOCKS}, got {block!r}")


@register("resample_latent")
def resample_latent(block: str = "unique", modality: int = 1, strength: float = 1.0) -> AugmentOp:
    """Replaces `strength` (in [0, 1]) of the variance of latent `block` of `synthetic_info` modality
    `modality` (1 or 2) by fresh noise; x: float [100] (see the module doc)."""
    if modality not in (1, 2):
        raise ValueError(f"resample_latent: modality must be 1 or 2, got {modality!r}")
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"resample_latent: strength must be in [0, 1], got {strength!r}")
    rows = _block_rows(block)
    mixing = synthetic_info.mixing_matrices()[modality - 1]                 # [latent, 100]
    recover = tf.constant(np.linalg.pinv(mixing)[:, rows], tf.float32)      # [100, block]
    block_mixing = tf.constant(mixing[rows], tf.float32)                    # [block, 100]
    keep, fresh = float(np.sqrt(1.0 - strength)), float(np.sqrt(strength * synthetic_info.LATENT_VARIANCE))

    def op(x: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        x = tf.cast(x, tf.float32)
        current = tf.linalg.matvec(recover, x, transpose_a=True)            # [block]
        drawn = keep * current + fresh * tf.random.stateless_normal(tf.shape(current), seed)
        return x + tf.linalg.matvec(block_mixing, drawn - current, transpose_a=True)

    return op
