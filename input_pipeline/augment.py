"""Registered, seed-driven tf.data augmentation ops composed by name from a config string.

A spec such as ``"random_resized_crop(64)|color_jitter(p=0.8)|flip_lr|normalize"`` is parsed by
:func:`parse` into one function ``(x, seed) -> x``. Every op draws its randomness from
``tf.random.stateless_*`` ops keyed by ``seed`` (an int tensor of shape [2]), so the same seed
always gives the same output and a training run is reproducible and resumable.

Image ops take ``[H, W, C]`` uint8 (0..255) or float (0..1) images and return float32; text
ops take int token ids ``[T]``; tabular / time-series ops take float ``[T]`` or ``[T, F]`` and act
along the first axis (rows / time steps). An op marked by :func:`reads_features` also sees other
features of its example (e.g. the attribute labels a controlled augmentation re-renders from): it is
called ``op(x, seed, features)``, and the pipelines load and pass the features it names.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import tensorflow as tf

from comm_jax.op_spec import parse_op

AugmentOp = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]
OpFactory = Callable[..., AugmentOp]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_REGISTRY: dict[str, OpFactory] = {}
# Salt folded into an op's seed to draw its apply-or-skip coin independently of its parameters.
_GATE_SALT = 0x6A7E


def register(name: str) -> Callable[[OpFactory], OpFactory]:
    """Registers an op factory under `name`; the factory's arguments are the op's config args."""

    def decorator(factory: OpFactory) -> OpFactory:
        if name in _REGISTRY:
            raise ValueError(f"augmentation op {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorator


def reads_features(op: Callable[[tf.Tensor, tf.Tensor, dict[str, tf.Tensor]], tf.Tensor],
                   keys: Sequence[str]) -> AugmentOp:
    """Marks `op` as called ``op(x, seed, features)`` with ``features`` {key: tensor} of the example's
    features `keys` (scalars for labels); its ``reads`` attribute names them."""
    op.reads = tuple(keys)
    return op


def feature_keys(op: AugmentOp) -> tuple[str, ...]:
    """The example features `op` (one op or a composition from :func:`parse`) reads; () for most ops."""
    return getattr(op, "reads", ())


def registered_ops() -> list[str]:
    """Names of all registered ops, sorted."""
    return sorted(_REGISTRY)


def parse_one(spec: str) -> AugmentOp:
    """Builds one op from ``name`` or ``name(arg, ..., key=value)``; args are Python literals."""
    factory, args, kwargs = parse_op(spec, _REGISTRY)
    return factory(*args, **kwargs)


def parse(spec: str) -> AugmentOp:
    """Composes ``op1|op2|...`` into one ``(x, seed, features=None) -> x``; op i gets ``fold_in(seed, i)``.

    An empty spec is the identity. ``features`` {key: tensor} must hold the keys of
    ``feature_keys(composed)`` (those the ops marked by `reads_features` read).
    """
    ops = [parse_one(piece) for piece in spec.split("|") if piece.strip()]

    def composed(x: tf.Tensor, seed: tf.Tensor, features: dict[str, tf.Tensor] | None = None) -> tf.Tensor:
        for position, op in enumerate(ops):
            op_seed = tf.random.experimental.stateless_fold_in(seed, position)
            keys = feature_keys(op)
            if not keys:
                x = op(x, op_seed)
                continue
            missing = sorted(set(keys) - set(features or {}))
            if missing:
                raise ValueError(f"op {position} of {spec!r} reads example features {missing}, which were not passed")
            x = op(x, op_seed, {key: features[key] for key in keys})
        return x

    composed.reads = tuple(sorted({key for op in ops for key in feature_keys(op)}))
    return composed


def _sub_seeds(seed: tf.Tensor, count: int) -> list[tf.Tensor]:
    return list(tf.unstack(tf.random.experimental.stateless_split(seed, count)))


def _uniform(seed: tf.Tensor, low: float = 0.0, high: float = 1.0, shape=()) -> tf.Tensor:
    return tf.random.stateless_uniform(shape, seed, minval=low, maxval=high, dtype=tf.float32)


def _apply_with_probability(op: AugmentOp, p: float) -> AugmentOp:
    """Applies `op` with probability `p`; p == 0 is exactly the identity, p == 1 always applies."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"probability p must be in [0, 1], got {p}")
    if p == 0.0:
        return lambda x, seed: x
    if p == 1.0:
        return op

    def gated(x: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        coin = _uniform(tf.random.experimental.stateless_fold_in(seed, _GATE_SALT))
        return tf.cond(coin < p, lambda: op(x, seed), lambda: tf.identity(x))

    return gated


def _size_pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def to_unit_float(image: tf.Tensor) -> tf.Tensor:
    """uint8 [..., C] in 0..255 -> float32 in [0, 1]; float images are cast to float32 as they are."""
    if image.dtype == tf.uint8:
        return tf.cast(image, tf.float32) / 255.0
    return tf.cast(image, tf.float32)


def decode_resized_center_crop(data: tf.Tensor, size: int) -> tf.Tensor:
    """Encoded image (any size, any channel count) -> float32 [size, size, 3] in [0, 1]: shorter side resized
    to `size` (bicubic, antialiased), centre crop; CLIP's and the CoMM reference's test transform, applied to
    MM-IMDb posters by the feature extraction and by the in-step towers' pipeline alike."""
    image = tf.image.convert_image_dtype(tf.io.decode_image(data, channels=3, expand_animations=False), tf.float32)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    resized = tf.cast(tf.math.ceil(shape * size / tf.reduce_min(shape)), tf.int32)
    image = tf.image.resize(image, resized, method="bicubic", antialias=True)
    image = tf.image.resize_with_crop_or_pad(image, size, size)
    return tf.ensure_shape(tf.clip_by_value(image, 0.0, 1.0), [size, size, 3])


# ----------------------------------------------------------------------------------- image ops


@register("to_float")
def to_float() -> AugmentOp:
    """[H, W, C] uint8 -> float32 in [0, 1]."""
    return lambda image, seed: to_unit_float(image)


@register("resize")
def resize(size: int | Sequence[int]) -> AugmentOp:
    """Bilinear resize to [size, size, C] (or [h, w, C]), float32 in [0, 1]."""
    target = _size_pair(size)
    return lambda image, seed: tf.image.resize(to_unit_float(image), target, antialias=True)


@register("center_crop")
def center_crop(size: int | Sequence[int]) -> AugmentOp:
    """Central [size, size, C] window (zero-padded when the image is smaller), float32."""
    height, width = _size_pair(size)
    return lambda image, seed: tf.image.resize_with_crop_or_pad(to_unit_float(image), height, width)


@register("random_resized_crop")
def random_resized_crop(size: int | Sequence[int], scale: Sequence[float] = (0.08, 1.0),
                        ratio: Sequence[float] = (3 / 4, 4 / 3)) -> AugmentOp:
    """Crop covering `scale` of the area with aspect `ratio`, resized to [size, size, C] float32.

    Falls back to the whole image when no box is found in 10 attempts (torchvision falls back
    to a centre crop; the difference only shows for extreme ratios).
    """
    target = _size_pair(size)

    def op(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
            tf.shape(image), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed,
            min_object_covered=0.0, aspect_ratio_range=tuple(ratio), area_range=tuple(scale),
            max_attempts=10, use_image_if_no_bounding_boxes=True)
        crop = tf.slice(image, begin, crop_size)
        resized = tf.image.resize(to_unit_float(crop), target, method="bilinear")
        return tf.ensure_shape(resized, [*target, image.shape[-1]])

    return op


@register("flip_lr")
def flip_lr(p: float = 0.5) -> AugmentOp:
    """Mirrors [H, W, C] left-right with probability p."""
    return _apply_with_probability(lambda image, seed: tf.image.flip_left_right(image), p)


# Luma weights of torchvision's rgb_to_grayscale.
_GREY_WEIGHTS = (0.299, 0.587, 0.114)


def _recolor(image: tf.Tensor, matrix: tf.Tensor, offset: tf.Tensor | None = None) -> tf.Tensor:
    """Per-pixel colour map ``image @ matrix (+ offset)`` of [H, W, C], as one matmul.

    A [HW, C] x [C, C] matmul is several times faster on CPU than broadcasting a per-channel
    vector over the image.
    """
    pixels = tf.reshape(image, [-1, image.shape[-1]]) @ matrix
    if offset is not None:
        pixels = tf.nn.bias_add(pixels, offset)
    return tf.reshape(pixels, tf.shape(image))


def _grey_matrix() -> tf.Tensor:
    """[3, 3] matrix whose product with an RGB pixel is its grey level in all three channels."""
    return tf.tile(tf.constant(_GREY_WEIGHTS, tf.float32)[:, None], [1, 3])


def _adjust_brightness(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    return tf.minimum(image * factor, 1.0)  # factor > 0 keeps it >= 0


def _adjust_contrast(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    mean_grey = tf.tensordot(tf.reduce_mean(tf.reshape(image, [-1, 3]), axis=0),
                             tf.constant(_GREY_WEIGHTS, tf.float32), 1)
    return tf.clip_by_value(factor * image + (1.0 - factor) * mean_grey, 0.0, 1.0)


def _adjust_saturation(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    blend = factor * tf.eye(3) + (1.0 - factor) * _grey_matrix()
    return tf.clip_by_value(_recolor(image, blend), 0.0, 1.0)


@register("color_jitter")
def color_jitter(brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4,
                 hue: float = 0.1, p: float = 0.8) -> AugmentOp:
    """torchvision ColorJitter on RGB [H, W, 3]: four adjustments in a random order, with p.

    Brightness/contrast/saturation factors are uniform in [1 - s, 1 + s] and blend as torchvision
    does (towards black, the grey mean, the grey image), clipping to [0, 1] after each; hue
    shifts by uniform [-hue, hue] turns.
    """

    def op(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        order_seed, *factor_seeds = _sub_seeds(seed, 5)
        b, c, s = (_uniform(factor_seeds[i], 1.0 - strength, 1.0 + strength)
                   for i, strength in enumerate((brightness, contrast, saturation)))
        hue_shift = _uniform(factor_seeds[3], -hue, hue)
        adjustments = [
            lambda x: _adjust_brightness(x, b),
            lambda x: _adjust_contrast(x, c),
            lambda x: _adjust_saturation(x, s),
            lambda x: tf.image.adjust_hue(x, hue_shift),
        ]
        order = tf.argsort(_uniform(order_seed, shape=[4]))
        # Four static positions, each picking its adjustment: no loop to drive per image.
        for position in range(4):
            image = tf.switch_case(order[position], [functools.partial(adjust, image) for adjust in adjustments])
        return image

    jitter = _apply_with_probability(op, p)
    return lambda image, seed: jitter(to_unit_float(image), seed)


@register("grayscale")
def grayscale(p: float = 0.2) -> AugmentOp:
    """RGB [H, W, 3] -> grey replicated on 3 channels, with probability p."""
    to_grey = _apply_with_probability(lambda image, seed: _recolor(image, _grey_matrix()), p)
    return lambda image, seed: to_grey(to_unit_float(image), seed)


def gaussian_kernel(sigma: tf.Tensor, radius: int) -> tf.Tensor:
    """Normalised 1-D Gaussian, shape [2 * radius + 1]."""
    offsets = tf.range(-radius, radius + 1, dtype=tf.float32)
    weights = tf.exp(-0.5 * tf.square(offsets / sigma))
    return weights / tf.reduce_sum(weights)


@register("gaussian_blur")
def gaussian_blur(sigma: Sequence[float] = (0.1, 2.0), p: float = 0.5,
                  kernel_fraction: float = 0.1) -> AugmentOp:
    """Separable Gaussian blur of [H, W, C], sigma uniform in `sigma`, with probability p.

    The kernel spans about `kernel_fraction` of the image height (SimCLR uses 10%), at least 3
    taps; borders are reflected so the blur does not darken the edges.
    """

    def op(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        height, width, channels = image.shape
        if None in (height, width, channels):
            raise ValueError(f"gaussian_blur needs a static image shape, got {image.shape}")
        radius = min(max(1, int(height * kernel_fraction) // 2), height - 1, width - 1)
        kernel = gaussian_kernel(_uniform(seed, sigma[0], sigma[1]), radius)
        padded = tf.pad(image[None], [[0, 0], [radius, radius], [radius, radius], [0, 0]], "REFLECT")
        vertical = tf.tile(tf.reshape(kernel, [-1, 1, 1, 1]), [1, 1, channels, 1])
        horizontal = tf.reshape(vertical, [1, -1, channels, 1])
        blurred = tf.nn.depthwise_conv2d(padded, vertical, [1, 1, 1, 1], "VALID")
        return tf.nn.depthwise_conv2d(blurred, horizontal, [1, 1, 1, 1], "VALID")[0]

    blur = _apply_with_probability(op, p)
    return lambda image, seed: blur(to_unit_float(image), seed)


@register("normalize")
def normalize(mean: float | Sequence[float] = IMAGENET_MEAN,
              std: float | Sequence[float] = IMAGENET_STD) -> AugmentOp:
    """(image - mean) / std per channel on [H, W, C]; uint8 input is first scaled to [0, 1]."""

    def op(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        channels = [image.shape[-1]]
        mean_vector = tf.broadcast_to(tf.constant(mean, tf.float32), channels)
        std_vector = tf.broadcast_to(tf.constant(std, tf.float32), channels)
        scale = 1.0 / std_vector / (255.0 if image.dtype == tf.uint8 else 1.0)
        return _recolor(tf.cast(image, tf.float32), tf.linalg.diag(scale), -mean_vector / std_vector)

    return op


# ------------------------------------------------------------------------------------ text ops


@register("mask_tokens")
def mask_tokens(rate: float = 0.15, mask_id: int = 103,
                special_ids: Sequence[int] = (0, 101, 102, 103)) -> AugmentOp:
    """Replaces each token of [T] ids by `mask_id` with probability `rate`, sparing `special_ids`.

    Defaults are BERT's ids (pad 0, [CLS] 101, [SEP] 102, [MASK] 103).
    """
    specials = tf.constant(list(special_ids), tf.int64)

    def op(tokens: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        is_special = tf.reduce_any(tf.equal(tf.cast(tokens, tf.int64)[..., None], specials), axis=-1)
        hit = _uniform(seed, shape=tf.shape(tokens)) < rate
        return tf.where(hit & ~is_special, tf.cast(mask_id, tokens.dtype), tokens)

    return op


# ------------------------------------------------------------------- tabular / time-series ops


@register("gaussian_noise")
def gaussian_noise(std: float = 0.1, p: float = 0.5) -> AugmentOp:
    """Adds N(0, std^2) noise to every entry of a float [T, ...] tensor, with probability p."""

    def op(x: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        return x + tf.cast(std * tf.random.stateless_normal(tf.shape(x), seed), x.dtype)

    return _apply_with_probability(op, p)


def _row_mask(keep: tf.Tensor, x: tf.Tensor) -> tf.Tensor:
    """Broadcasts a bool [T] over the trailing axes of x and zeroes the rows where it is False."""
    shape = tf.concat([tf.shape(keep), tf.ones([tf.rank(x) - 1], tf.int32)], axis=0)
    return x * tf.cast(tf.reshape(keep, shape), x.dtype)


def _random_length(seed: tf.Tensor, fraction: Sequence[float], total: tf.Tensor) -> tf.Tensor:
    drawn = _uniform(seed, fraction[0], fraction[1]) * tf.cast(total, tf.float32)
    return tf.cast(tf.round(drawn), tf.int32)


@register("drop_steps")
def drop_steps(fraction: Sequence[float] = (0.0, 0.8), p: float = 0.5) -> AugmentOp:
    """Zeroes a random subset of the rows of [T, ...]; its size is uniform in `fraction` of T."""

    def op(x: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        length_seed, choice_seed = _sub_seeds(seed, 2)
        total = tf.shape(x)[0]
        num_dropped = _random_length(length_seed, fraction, total)
        rank = tf.argsort(tf.argsort(_uniform(choice_seed, shape=[total])))
        return _row_mask(rank >= num_dropped, x)

    return _apply_with_probability(op, p)


@register("crop_steps")
def crop_steps(scale: Sequence[float] = (0.08, 1.0), p: float = 0.5,
               resize: bool = False) -> AugmentOp:
    """Keeps a random contiguous window of [T, ...] whose length is uniform in `scale` of T.

    resize=False zeroes the rows outside the window (the CoMM reference); resize=True stretches
    the window back to T rows with linear interpolation.
    """

    def op(x: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        length_seed, start_seed = _sub_seeds(seed, 2)
        total = tf.shape(x)[0]
        length = tf.clip_by_value(_random_length(length_seed, scale, total), 1, total)
        start = tf.random.stateless_uniform([], start_seed, 0, total - length + 1, dtype=tf.int32)
        if not resize:
            steps = tf.range(total)
            return _row_mask((steps >= start) & (steps < start + length), x)
        window = tf.reshape(x[start:start + length], [length, -1, 1])
        stretched = tf.image.resize(tf.cast(window, tf.float32), [total, tf.shape(window)[1]])
        return tf.reshape(tf.cast(stretched, x.dtype), tf.shape(x))

    return _apply_with_probability(op, p)
