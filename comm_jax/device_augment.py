"""The image augmentations of `input_pipeline.augment`, run on the devices inside the jitted train step.

With ``config.data.augment_on_device = True`` the tf.data pipeline hands out each example's decoded
uint8 images once, and the train step draws both views here: the same op specs
(``"random_resized_crop(64)|color_jitter(p=0.8)|...|normalize"``), the same parameter
distributions and the same pixel arithmetic as the tf.data ops, vectorised over the batch. A
2-core host then no longer shares its cores between per-image tf.data ops and the step, and an
accelerator no longer waits for the host to augment (the per-image ops ran at 117 pairs/s per host
core at 224 px).

Each op is ``(images [B, H, W, C], keys [B]) -> images``; every example draws its parameters from
its own key, which the pipeline derives from (seed, epoch, example index): an example's views do not
depend on its row, the mesh or the number of processes, and a resumed run draws the same ones. Resizes are bilinear with half-pixel centres and no antialiasing (`tf.image.resize`
"bilinear"), written as two small matrices per example so a crop is a batched matmul. Pure JAX: no
TensorFlow import, so it also runs where only jax is installed.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from comm_jax.batch import modality_salt
from comm_jax.op_spec import parse_spec

DeviceOp = Callable[[jax.Array, jax.Array], jax.Array]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GREY_WEIGHTS = (0.299, 0.587, 0.114)      # torchvision's rgb_to_grayscale
_REGISTRY: dict[str, Callable[..., DeviceOp]] = {}


def register(name: str):
    def decorator(factory):
        _REGISTRY[name] = factory
        return factory
    return decorator


def parse(spec: str) -> DeviceOp:
    """Composes ``op1|op2|...`` into ``(images, keys) -> float32 images``; op i gets keys folded with i."""
    ops = [factory(*args, **kwargs) for factory, args, kwargs in parse_spec(spec, _REGISTRY, "on-device augmentation")]

    def composed(images: jax.Array, keys: jax.Array) -> jax.Array:
        x = to_unit_float(images)
        for position, op in enumerate(ops):
            x = op(x, jax.vmap(lambda k: jax.random.fold_in(k, position))(keys))
        return x

    return composed


def view_keys(example_keys: jax.Array, view: int, modality: str) -> jax.Array:
    """`[B]` keys of one view of one modality from the examples' uint32 `[B, 2]` key data (the
    pipeline's, a pure function of (seed, epoch, example index))."""
    salt = modality_salt(modality)
    keys = jax.random.wrap_key_data(example_keys.astype(jnp.uint32), impl="threefry2x32")
    return jax.vmap(lambda k: jax.random.fold_in(jax.random.fold_in(k, view), salt))(keys)


def to_unit_float(images: jax.Array) -> jax.Array:
    if images.dtype == jnp.uint8:
        return images.astype(jnp.float32) / 255.0
    return images.astype(jnp.float32)


def _uniform(keys: jax.Array, low: float, high: float, shape=()) -> jax.Array:
    return jax.vmap(lambda k: jax.random.uniform(k, shape, jnp.float32, low, high))(keys)


def _gate(keys: jax.Array, p: float, applied: jax.Array, images: jax.Array) -> jax.Array:
    """Per example: `applied` with probability p, else `images` (p == 0 / 1 exactly skip / apply)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"probability p must be in [0, 1], got {p}")
    if p == 1.0:
        return applied
    coin = _uniform(jax.vmap(lambda k: jax.random.fold_in(k, 0x6A7E))(keys), 0.0, 1.0)
    return jnp.where((coin < p)[:, None, None, None], applied, images)


# ----------------------------------------------------------------------------- crop and flip


def sample_crop_boxes(keys: jax.Array, height: int, width: int, scale: Sequence[float],
                      ratio: Sequence[float], attempts: int = 10) -> jax.Array:
    """torchvision's RandomResizedCrop boxes, int32 `[B, 4]` (top, left, h, w): area uniform in
    `scale` of the image, log-aspect uniform in `ratio`, the first of `attempts` that fits, else the
    whole image (as the tf.data op)."""
    area = float(height * width)

    def one(key):
        k_area, k_ratio, k_top, k_left = jax.random.split(key, 4)
        target = area * jax.random.uniform(k_area, (attempts,), minval=scale[0], maxval=scale[1])
        aspect = jnp.exp(jax.random.uniform(k_ratio, (attempts,), minval=np.log(ratio[0]), maxval=np.log(ratio[1])))
        w = jnp.round(jnp.sqrt(target * aspect)).astype(jnp.int32)
        h = jnp.round(jnp.sqrt(target / aspect)).astype(jnp.int32)
        fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = jnp.argmax(fits)
        found = fits[first]
        h = jnp.where(found, h[first], height)
        w = jnp.where(found, w[first], width)
        top = jax.random.randint(k_top, (), 0, height - h + 1)
        left = jax.random.randint(k_left, (), 0, width - w + 1)
        return jnp.stack([top, left, h, w])

    return jax.vmap(one)(keys)


def _interpolation(start: jax.Array, length: jax.Array, size_in: int, size_out: int) -> jax.Array:
    """`[B, size_out, size_in]` bilinear weights (half-pixel centres, edges clamped to the window)."""
    out = jnp.arange(size_out, dtype=jnp.float32)
    length_f = length.astype(jnp.float32)[:, None]
    src = (out[None] + 0.5) * length_f / size_out - 0.5
    src = jnp.clip(src, 0.0, length_f - 1.0)
    low = jnp.floor(src)
    frac = src - low
    low = low.astype(jnp.int32)
    high = jnp.minimum(low + 1, length[:, None] - 1)
    columns = jnp.arange(size_in)
    start = start[:, None, None]
    return ((1.0 - frac)[..., None] * (columns == start + low[..., None]) +
            frac[..., None] * (columns == start + high[..., None]))


def crop_and_resize(images: jax.Array, boxes: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Each `[H, W, C]` image's box (top, left, h, w) resized to `size`: `rows @ image @ cols^T`."""
    _, height, width, _ = images.shape
    rows = _interpolation(boxes[:, 0], boxes[:, 2], height, size[0])
    cols = _interpolation(boxes[:, 1], boxes[:, 3], width, size[1])
    return jnp.einsum("boh,bhwc,bpw->bopc", rows, images, cols, precision=jax.lax.Precision.HIGHEST)


def _size_pair(size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


@register("random_resized_crop")
def random_resized_crop(size, scale: Sequence[float] = (0.08, 1.0),
                        ratio: Sequence[float] = (3 / 4, 4 / 3)) -> DeviceOp:
    target = _size_pair(size)

    def op(images, keys):
        boxes = sample_crop_boxes(keys, images.shape[1], images.shape[2], scale, ratio)
        return crop_and_resize(images, boxes, target)

    return op


@register("flip_lr")
def flip_lr(p: float = 0.5) -> DeviceOp:
    return lambda images, keys: _gate(keys, p, images[:, :, ::-1], images)


# ------------------------------------------------------------------------------------ colour


def _grey(images: jax.Array) -> jax.Array:
    return images @ jnp.asarray(GREY_WEIGHTS, images.dtype)                       # [B, H, W]


def adjust_brightness(images, factor):
    return jnp.minimum(images * factor[:, None, None, None], 1.0)


def adjust_contrast(images, factor):
    mean = jnp.mean(_grey(images), axis=(1, 2))[:, None, None, None]
    f = factor[:, None, None, None]
    return jnp.clip(f * images + (1.0 - f) * mean, 0.0, 1.0)


def adjust_saturation(images, factor):
    f = factor[:, None, None, None]
    return jnp.clip(f * images + (1.0 - f) * _grey(images)[..., None], 0.0, 1.0)


def adjust_hue(images, delta):
    """`tf.image.adjust_hue`: RGB -> HSV, hue + delta (mod 1), -> RGB."""
    r, g, b = images[..., 0], images[..., 1], images[..., 2]
    value = jnp.max(images, axis=-1)
    chroma = value - jnp.min(images, axis=-1)
    safe = jnp.where(chroma > 0, chroma, 1.0)
    hue = jnp.where(value == r, (g - b) / safe,
                    jnp.where(value == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe)) / 6.0
    hue = jnp.where(chroma > 0, hue, 0.0)
    hue = jnp.mod(hue + delta[:, None, None], 1.0)
    saturation = jnp.where(value > 0, chroma / jnp.where(value > 0, value, 1.0), 0.0)
    # HSV -> RGB: channel n is v - v*s*clip(min(k, 4 - k), 0, 1) with k = (n + 6h) mod 6, n = 5, 3, 1.
    k = jnp.mod(jnp.asarray([5.0, 3.0, 1.0]) + 6.0 * hue[..., None], 6.0)
    weight = jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)
    return value[..., None] * (1.0 - saturation[..., None] * weight)


@register("color_jitter")
def color_jitter(brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4,
                 hue: float = 0.1, p: float = 0.8) -> DeviceOp:
    """torchvision ColorJitter: the four adjustments in a random order per example, with p."""

    def op(images, keys):
        split = jax.vmap(lambda k: jax.random.split(k, 5))(keys)                 # [B, 5]
        factors = [_uniform(split[:, i + 1], 1.0 - s, 1.0 + s) for i, s in enumerate((brightness, contrast, saturation))]
        shift = _uniform(split[:, 4], -hue, hue)
        order = jnp.argsort(_uniform(split[:, 0], 0.0, 1.0, (4,)), axis=-1)      # [B, 4]
        adjust = (functools.partial(adjust_brightness, factor=factors[0]),
                  functools.partial(adjust_contrast, factor=factors[1]),
                  functools.partial(adjust_saturation, factor=factors[2]),
                  functools.partial(adjust_hue, delta=shift))
        x = images
        for position in range(4):          # every adjustment on the batch, each row keeps its own
            candidates = jnp.stack([a(x) for a in adjust])                       # [4, B, H, W, C]
            x = jnp.take_along_axis(candidates, order[None, :, position, None, None, None], axis=0)[0]
        return _gate(keys, p, x, images)

    return op


@register("grayscale")
def grayscale(p: float = 0.2) -> DeviceOp:
    return lambda images, keys: _gate(keys, p, jnp.repeat(_grey(images)[..., None], images.shape[-1], -1), images)


def _reflect_matrix(kernels: jax.Array, size: int, radius: int) -> jax.Array:
    """`[B, size, size]`: row o holds kernel tap t at the reflected index of o + t - radius."""
    index = np.arange(size)[:, None] + np.arange(2 * radius + 1)[None] - radius
    index = np.abs(index)
    index = np.where(index > size - 1, 2 * (size - 1) - index, index)
    onehot = (index[..., None] == np.arange(size)).astype(np.float32)           # [size, taps, size]
    return jnp.einsum("bt,otk->bok", kernels, onehot)


@register("gaussian_blur")
def gaussian_blur(sigma: Sequence[float] = (0.1, 2.0), p: float = 0.5, kernel_fraction: float = 0.1) -> DeviceOp:
    """Separable Gaussian, sigma uniform in `sigma`, reflected borders, as the tf.data op."""

    def op(images, keys):
        _, height, width, _ = images.shape
        radius = min(max(1, int(height * kernel_fraction) // 2), height - 1, width - 1)
        offsets = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
        s = _uniform(keys, sigma[0], sigma[1])[:, None]
        kernels = jnp.exp(-0.5 * jnp.square(offsets[None] / s))
        kernels = kernels / jnp.sum(kernels, axis=1, keepdims=True)
        rows, cols = _reflect_matrix(kernels, height, radius), _reflect_matrix(kernels, width, radius)
        blurred = jnp.einsum("boh,bhwc,bpw->bopc", rows, images, cols, precision=jax.lax.Precision.HIGHEST)
        return _gate(keys, p, blurred, images)

    return op


@register("normalize")
def normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD) -> DeviceOp:
    mean_v, std_v = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
    return lambda images, keys: (images - mean_v) / std_v


@register("to_float")
def to_float() -> DeviceOp:
    return lambda images, keys: images
