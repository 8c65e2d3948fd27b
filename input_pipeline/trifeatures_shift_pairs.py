"""Pure-numpy construction of the controlled shifts of Bimodal Trifeatures: the held-out attribute
values, the image pools and pairs of every shift kind, and the image corruptions (blank, noise, blur).

Every output is a deterministic function of the constants and seeds below (see `trifeatures_shift`
for what each kind holds and which information it touches).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from input_pipeline import trifeatures_render as render

HELD_OUT_SHAPE = render.SHAPE_NAMES.index("circle")
HELD_OUT_TEXTURE = render.TEXTURE_NAMES.index("dots")
# The colour M maps the held-out texture to: holding both out leaves M a bijection between the nine
# in-distribution textures and the nine in-distribution colours, so biased pretraining on ID images
# still sees every ID texture and colour.
HELD_OUT_COLOR = int(render.synergy_mapping()[HELD_OUT_TEXTURE])
HELD_OUT = {"shape": HELD_OUT_SHAPE, "texture": HELD_OUT_TEXTURE, "color": HELD_OUT_COLOR}

SHUFFLE_SEED = 4       # the order of the pairs of every split, so a split's first N pairs are a fair sample
CORRUPTION_SEED = 5
MAX_SHIFT_PAIRS = 2000     # pairs per shifted test split
NOISE_STD = 0.25           # of the full pixel range
BLUR_SIGMA_FRACTION = 1 / 16   # of the image side: 2 px at 32 px, 4 px at 64 px
BLANK_LEVEL = 127          # the background grey: an image with nothing in it

ID_KINDS = ("id", "id_biased")
NOVEL_KINDS = ("texture_1", "texture_both", "color_1", "color_both", "shape_both")
CORRUPTIONS = ("blank", "noise", "blur")
SHIFT_KINDS = NOVEL_KINDS + ("synergy",) + tuple(f"{c}_1" for c in CORRUPTIONS)
KINDS = ID_KINDS + SHIFT_KINDS


class PairSet(NamedTuple):
    """One split: a pool of images, ordered pairs of pool indices `[P, 2]` (image_1, image_2), and the
    corruption applied to image 1 of every pair (None: none)."""

    images: render.ImageAttributes
    pairs: np.ndarray
    corrupt_first: str | None = None


def in_distribution(images: render.ImageAttributes) -> np.ndarray:
    """bool `[N]`: the image shows none of the held-out shape, texture and colour."""
    return ((images.shape != HELD_OUT_SHAPE) & (images.texture != HELD_OUT_TEXTURE)
            & (images.color != HELD_OUT_COLOR))


def _select(images: render.ImageAttributes, keep: np.ndarray) -> render.ImageAttributes:
    return render.ImageAttributes(*(field[keep] for field in images))


def _concat(*pools: render.ImageAttributes) -> render.ImageAttributes:
    return render.ImageAttributes(*(np.concatenate(fields) for fields in zip(*pools)))


def id_images(split: str) -> render.ImageAttributes:
    """The images of the base dataset's `split` that show no held-out value."""
    images = render.split_images(split)
    return _select(images, in_distribution(images))


def novel_images(attribute: str) -> render.ImageAttributes:
    """One render of every (shape, colour, texture) whose `attribute` ("shape", "texture" or "color")
    is the held-out value and whose other two attributes are in distribution: 81 images."""
    grid = np.stack(np.meshgrid(*[np.arange(render.NUM_VALUES)] * 3, indexing="ij"), axis=-1).reshape(-1, 3)
    every = render.ImageAttributes(shape=grid[:, 0], color=grid[:, 1], texture=grid[:, 2],
                                   render=np.zeros(len(grid), np.int64))
    keep = np.ones(len(grid), bool)
    for name, held in HELD_OUT.items():
        values = getattr(every, name)
        keep &= (values == held) if name == attribute else (values != held)
    return _select(every, keep)


def _same_shape_pairs(images: render.ImageAttributes, first: np.ndarray, second: np.ndarray,
                      mapping: str = "any") -> np.ndarray:
    """Ordered pairs (i, j), int64 `[P, 2]`, with i in `first`, j in `second` (bool masks `[N]`) and
    the same shape; `mapping` "satisfy" / "break" also asks colour[j] == / != M[texture[i]]."""
    allowed = first[:, None] & second[None, :] & (images.shape[:, None] == images.shape[None, :])
    if mapping != "any":
        follows = render.synergy_mapping()[images.texture][:, None] == images.color[None, :]
        allowed &= follows if mapping == "satisfy" else ~follows
    return np.argwhere(allowed).astype(np.int64)


def _shuffled(pairs: np.ndarray, max_pairs: int) -> np.ndarray:
    """At most `max_pairs` of `pairs`, in an order drawn once from `SHUFFLE_SEED`."""
    order = np.random.default_rng(SHUFFLE_SEED).permutation(len(pairs))[:max_pairs]
    return pairs[order]


def pair_set(kind: str, split: str) -> PairSet:
    """The pairs of `split` ("train" only for the ID kinds, "test" for every kind) of `kind`."""
    if kind not in KINDS:
        raise ValueError(f"unknown shift kind {kind!r}; known: {KINDS}")
    if split not in ("train", "test") or (split == "train" and kind not in ID_KINDS):
        raise ValueError(f"kind {kind!r} has no split {split!r}")
    if kind in ID_KINDS:
        images = id_images(split)
        everyone = np.ones(len(images), bool)
        mapping = "satisfy" if kind == "id_biased" else "any"
        max_pairs = render.MAX_PAIRS if split == "train" else len(images) ** 2
        return PairSet(images, _shuffled(_same_shape_pairs(images, everyone, everyone, mapping), max_pairs))
    if kind == "synergy":
        images = id_images("test")
        everyone = np.ones(len(images), bool)
        return PairSet(images, _shuffled(_same_shape_pairs(images, everyone, everyone, "break"), MAX_SHIFT_PAIRS))
    if kind in NOVEL_KINDS:
        attribute, where = kind.rsplit("_", 1)
        novel = novel_images(attribute)
        if where == "both":
            everyone = np.ones(len(novel), bool)
            return PairSet(novel, _shuffled(_same_shape_pairs(novel, everyone, everyone), MAX_SHIFT_PAIRS))
        images = _concat(novel, id_images("test"))
        first = np.arange(len(images)) < len(novel)
        return PairSet(images, _shuffled(_same_shape_pairs(images, first, ~first), MAX_SHIFT_PAIRS))
    corruption = kind.rsplit("_", 1)[0]
    test = pair_set("id", "test")
    return PairSet(test.images, test.pairs[:MAX_SHIFT_PAIRS], corrupt_first=corruption)


def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = int(np.ceil(3 * sigma))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def blur(pixels: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of uint8 `[H, W, 3]` with standard deviation `sigma` pixels, edges
    extended; uint8 `[H, W, 3]`."""
    kernel = _gaussian_kernel(sigma)
    radius = len(kernel) // 2
    out = pixels.astype(np.float64)
    for axis in (0, 1):
        padded = np.pad(out, [(radius, radius) if a == axis else (0, 0) for a in range(3)], mode="edge")
        out = sum(w * np.take(padded, np.arange(k, k + pixels.shape[axis]), axis=axis)
                  for k, w in enumerate(kernel))
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def corrupt(pixels: np.ndarray, corruption: str, key: tuple[int, ...]) -> np.ndarray:
    """`pixels` uint8 `[H, W, 3]` blanked (all background grey), with Gaussian noise of std
    `NOISE_STD` drawn from (CORRUPTION_SEED, *key), or blurred; uint8 `[H, W, 3]`."""
    if corruption == "blank":
        return np.full_like(pixels, BLANK_LEVEL)
    if corruption == "noise":
        noise = np.random.default_rng([CORRUPTION_SEED, *key]).normal(0.0, NOISE_STD * 255, pixels.shape)
        return np.clip(np.round(pixels + noise), 0, 255).astype(np.uint8)
    if corruption == "blur":
        return blur(pixels, BLUR_SIGMA_FRACTION * pixels.shape[0])
    raise ValueError(f"unknown corruption {corruption!r}; known: {CORRUPTIONS}")
