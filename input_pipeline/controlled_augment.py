"""Augmentations that remove a known component of the information, with a strength: on `synthetic_info`
vectors, `resample_latent` replaces one latent block of a modality by fresh noise; on Bimodal
Trifeatures, `randomise_attribute` replaces the colour or the texture of one image by a random value.

`resample_latent(block, modality, strength)` acts on one `synthetic_info` modality x_i [100] =
concat(shared, unique_i) @ T_i (+ noise). It recovers the latents by the pseudo-inverse of the fixed
T_i (exact without noise; with noise the recovery error is independent of the latents), and replaces
`block` ("shared" or "unique") by sqrt(1 - strength) * block + sqrt(strength) * fresh N(0, 0.5 I):
the block's marginal law is unchanged, and at strength 1 the view holds nothing of the example's
block. What it removes: `block="unique"` on x1 removes U1 (the `unique1` label and x1's half of the
synergy) from that view; `block="shared"` removes the view's copy of the redundant information.
Contrastive pairs of such views make the resampled block view-specific noise, which an objective
that aligns views discards.

`randomise_attribute(attribute, image, strength)` acts on `image_1` or `image_2` of a
`bimodal_trifeatures*` example (`attribute` "colour" or "texture", `image` 1 or 2). With probability
`strength` the attribute's value is replaced by one drawn uniformly from the 10 values (possibly the
same one), independently of the example; the image is then re-rendered exactly: shape, pose (rotation,
position, texture angle and phase), the other attribute and the other image are kept, and the result
is bit-identical to `trifeatures_render.render_variant` of the image with that value. So the view's
value V equals the original A with probability 1 - 0.9 s and each other value with s / 10, and for a
uniform A: I(V; A) = log2(10) - H(1 - 0.9 s, s/10, ..., s/10) bits: 3.32 at s = 0, 0.90 at s = 0.5,
0 at s = 1 (not linear in s).
What it removes from the view, by the pairs' structure (shape shared, colours and textures independent,
`_biased` train pairs with colour_2 = M(texture_1)):
- texture of image 1 (or 2): the `texture_1` (`texture_2`) label, that image's unique information U1 (U2).
- colour of image 1: unique information that no task reads; colour of image 2: also an input of the
  `synergy` task (below).
- synergy: the `synergy` label reads (texture_1, colour_2). Under the bias texture_1 and colour_2
  determine each other (M is a bijection: I = log2(10) bits in every pretraining pair), which is the
  dependence a model aligns to learn M. Randomising texture_1 or colour_2 at strength 1 makes them
  independent in the view (I = 0: the pair satisfies M with probability 1/10, as an unbiased pair), so
  that dependence, and with it the synergy, cannot be learnt from such views; at strength s the pair
  still satisfies M with probability 1 - 0.9 s. Randomising colour_1 or texture_2 keeps it intact.
- nothing of the shape (the redundant information), which both images keep.
Drawn independently in the two views of a contrastive pair, the attribute differs between them with
probability 0.9 at strength 1: view-specific nuisance, which an objective that aligns views discards.
Not removed: the renderer draws each image's pose from a generator seeded by its (shape, colour,
texture, render), so the kept pose is a function of the original values; a decoder that memorised the
poses of the 2,600 images (2,400 train, 200 test) could still read the original value from it.

Implementation: the colour could be swapped from the pixels alone (coverage is recoverable from the
blend with grey), the texture cannot (it needs the scene), so both re-render through the NumPy renderer
(`tf.numpy_function`) from the example's labels, which the op reads (`augment.reads_features`: shape,
colour_i, texture_i). The render index (one of the 3 train renders of a combination) is not a feature:
the op finds it as the candidate whose render equals the input, and raises when none does, e.g. when an
earlier op changed the image, so the op comes first in a spec. Output: uint8 [H, W, 3] (the input
unchanged at strength 0, and when the coin says keep). tf.data only (no on-device version).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from input_pipeline import synthetic_info
from input_pipeline import trifeatures_render as render
from input_pipeline.augment import AugmentOp, reads_features, register

BLOCKS = ("shared", "unique")
ATTRIBUTES = ("colour", "texture")
_COIN_SALT, _VALUE_SALT = 0x7C01, 0x7C02


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


def rerender(pixels: np.ndarray, shape: int, color: int, texture: int, attribute: str, value: int) -> np.ndarray:
    """The Trifeatures render `pixels` uint8 [H, W, 3] of (shape, color, texture) with `attribute`
    ("colour" or "texture") set to `value`; ValueError when `pixels` is none of that combination's renders."""
    spec = render.render_spec(pixels.shape[0])
    for index in range(max(render.RENDERS_PER_COMBINATION.values())):
        image = (shape, color, texture, index)
        if np.array_equal(render.render_variant(image, spec), pixels):
            replaced = {"color" if attribute == "colour" else "texture": value}
            return render.render_variant(image, spec, **replaced)
    raise ValueError(f"randomise_attribute: the image is no render of shape={shape} colour={color} "
                     f"texture={texture}; the op must come first in the spec, on unmodified Trifeatures images")


@register("randomise_attribute")
def randomise_attribute(attribute: str = "colour", image: int = 1, strength: float = 1.0) -> AugmentOp:
    """With probability `strength`, replaces the `attribute` ("colour" or "texture") of Trifeatures
    `image_<image>` by a uniformly drawn value and re-renders it; x: uint8 [H, W, 3] (see the module doc)."""
    attribute = "colour" if attribute == "color" else attribute
    if attribute not in ATTRIBUTES:
        raise ValueError(f"randomise_attribute: attribute must be one of {ATTRIBUTES}, got {attribute!r}")
    if image not in (1, 2):
        raise ValueError(f"randomise_attribute: image must be 1 or 2, got {image!r}")
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"randomise_attribute: strength must be in [0, 1], got {strength!r}")
    keys = ("shape", f"color_{image}", f"texture_{image}")

    def replaced(x: tf.Tensor, value: tf.Tensor, features: dict[str, tf.Tensor]) -> tf.Tensor:
        pixels = tf.image.convert_image_dtype(x, tf.uint8, saturate=True)
        labels = [tf.cast(features[key], tf.int64) for key in keys]
        out = tf.numpy_function(lambda *args: rerender(*args[:4], attribute, args[4]), [pixels, *labels, value],
                                tf.uint8, stateful=False)
        return tf.ensure_shape(out, x.shape)

    def op(x: tf.Tensor, seed: tf.Tensor, features: dict[str, tf.Tensor]) -> tf.Tensor:
        if strength == 0.0:
            return x
        fold = tf.random.experimental.stateless_fold_in
        value = tf.random.stateless_uniform([], fold(seed, _VALUE_SALT), 0, render.NUM_VALUES, tf.int64)
        coin = tf.random.stateless_uniform([], fold(seed, _COIN_SALT))
        return tf.cond(coin < strength, lambda: replaced(x, value, features),
                       lambda: tf.image.convert_image_dtype(x, tf.uint8, saturate=True))

    return reads_features(op, keys)
