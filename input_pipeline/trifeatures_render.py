"""Pure-numpy generation of Bimodal Trifeatures: the renderer and the pair sampling.

Holds the attribute vocabularies (10 shapes, 10 colours, 10 textures), the vectorised renderer
(shapes and textures evaluated as implicit functions on a supersampled grid, rotated by inverse
coordinate mapping), the fixed train/test split of the 1000 combinations, the synergy mapping M
(texture of image 1 -> colour of image 2) and the sampling of same-shape image pairs. Every output
is a deterministic function of explicit seeds, never of the order in which things are generated.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np

SHAPE_NAMES = ("triangle", "square", "plus", "circle", "tee",
               "rhombus", "pentagon", "star", "fivesquare", "trapezoid")
COLOR_NAMES = ("red", "green", "blue", "yellow", "pink",
               "cyan", "purple", "ocean", "orange", "white")
TEXTURE_NAMES = ("solid", "stripes", "grid", "hexgrid", "dots",
                 "noise", "triangles", "zigzags", "rain", "pluses")
COLOR_RGB = np.array([
    (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (1.0, 1.0, 0.0), (1.0, 0.4, 1.0),
    (0.0, 1.0, 1.0), (0.3, 0.0, 0.5), (0.1, 0.4, 0.5), (1.0, 0.6, 0.0), (1.0, 1.0, 1.0),
], dtype=np.float32)  # [10, 3], in [0, 1], indexed like COLOR_NAMES
BACKGROUND_RGB = np.array((0.5, 0.5, 0.5), dtype=np.float32)  # [3]
NUM_VALUES = 10  # values per attribute

# Independent seeds: changing how one part is drawn never changes the others.
SPLIT_SEED = 42
MAPPING_SEED = 1
RENDER_SEED = 2
PAIR_SEED = 3

NUM_TRAIN_COMBINATIONS = 800  # of the 10 x 10 x 10; the other 200 are the test combinations
RENDERS_PER_COMBINATION = {"train": 3, "test": 1}
MAX_PAIRS = 10_000  # pairs per split; a split with fewer allowed pairs keeps all of them
MAX_ROTATION_DEGREES = 45.0
TEMPLATE_FRACTION = 128 / 224  # side of the unrotated shape template, relative to the image side

_STRIPE_WIDTH = 0.3  # in texture periods
_THIN_LINE_WIDTH = 0.2
_DOT_RADIUS = 0.4
_PLUS_HALF_WIDTH = 0.15
_NOISE_DENSITY = 0.5
_RAIN_DENSITY = 0.05  # probability that a texture cell starts a rain streak
_RAIN_HEIGHT = 0.7  # streak length, in texture periods


@dataclasses.dataclass(frozen=True)
class RenderSpec:
    """Pixel geometry of one resolution.

    image_size: H = W of the output images.
    texture_period: side of one texture tile in pixels (the reference uses 10 px at 224 px; small
      images use a relatively coarser tile so the pattern stays resolvable).
    supersample: sub-pixels per pixel side (at most 15); coverage is averaged over them.
    """

    image_size: int
    texture_period: float
    supersample: int


RENDER_SPECS = {
    32: RenderSpec(image_size=32, texture_period=5.0, supersample=4),
    64: RenderSpec(image_size=64, texture_period=6.0, supersample=4),
    128: RenderSpec(image_size=128, texture_period=8.0, supersample=3),
    224: RenderSpec(image_size=224, texture_period=10.0, supersample=2),
}


def render_spec(image_size: int) -> RenderSpec:
    """The RenderSpec of a supported resolution; ValueError names the supported ones."""
    if image_size not in RENDER_SPECS:
        raise ValueError(f"Unsupported Trifeatures image_size {image_size!r}; "
                         f"supported: {sorted(RENDER_SPECS)}")
    return RENDER_SPECS[image_size]


class ImageAttributes(NamedTuple):
    """Attributes of N images, each field an int64 array [N].

    render is the index of the render among those of the same (shape, colour, texture).
    """

    shape: np.ndarray
    color: np.ndarray
    texture: np.ndarray
    render: np.ndarray

    def __len__(self) -> int:  # number of images, not of fields
        return len(self.shape)


def combination_split(seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Splits the 1000 (shape, colour, texture) combinations into train and test at random.

    Returns (train [800, 3], test [200, 3]) int64 rows (shape, colour, texture), each sorted
    lexicographically.
    """
    grid = np.stack(np.meshgrid(*[np.arange(NUM_VALUES)] * 3, indexing="ij"), axis=-1)
    combinations = grid.reshape(-1, 3).astype(np.int64)  # lexicographic order
    is_test = np.zeros(len(combinations), dtype=bool)
    is_test[NUM_TRAIN_COMBINATIONS:] = True
    np.random.default_rng(seed).shuffle(is_test)
    return combinations[~is_test], combinations[is_test]


def split_images(split: str, seed: int = SPLIT_SEED) -> ImageAttributes:
    """The images of a split: every combination of the split times its number of renders.

    Train: 800 combinations x 3 renders = 2400 images; test: 200 x 1 = 200 images. Ordered by
    combination, then render.
    """
    if split not in RENDERS_PER_COMBINATION:
        raise ValueError(f"Unknown Trifeatures split {split!r}; "
                         f"expected one of {sorted(RENDERS_PER_COMBINATION)}")
    train, test = combination_split(seed)
    combinations = train if split == "train" else test
    renders = RENDERS_PER_COMBINATION[split]
    repeated = np.repeat(combinations, renders, axis=0)
    return ImageAttributes(shape=repeated[:, 0], color=repeated[:, 1], texture=repeated[:, 2],
                           render=np.tile(np.arange(renders, dtype=np.int64), len(combinations)))


def synergy_mapping(seed: int = MAPPING_SEED) -> np.ndarray:
    """The mapping M: int64 [10], M[texture] = the colour paired with that texture.

    A random bijection drawn from its own seed, so it is the same for every config and split.
    """
    return np.random.default_rng(seed).permutation(NUM_VALUES).astype(np.int64)


def allowed_pairs(images: ImageAttributes,
                  texture_to_color: np.ndarray | None = None) -> np.ndarray:
    """All ordered pairs (i, j) of images of the same shape, self-pairs included (as the reference).

    With texture_to_color (the biased pretraining set), a pair is also required to satisfy the
    mapping: color[j] == texture_to_color[texture[i]]. Returns int64 [P, 2] in row-major order.
    """
    allowed = images.shape[:, None] == images.shape[None, :]
    if texture_to_color is not None:
        allowed &= texture_to_color[images.texture][:, None] == images.color[None, :]
    return np.argwhere(allowed).astype(np.int64)


def sample_pairs(images: ImageAttributes, max_pairs: int = MAX_PAIRS,
                 texture_to_color: np.ndarray | None = None,
                 seed: int = PAIR_SEED) -> np.ndarray:
    """min(P, max_pairs) distinct allowed pairs drawn uniformly, int64 [n, 2] in row-major order.

    When there are at most max_pairs allowed pairs, all of them are returned (the test split).
    """
    if max_pairs <= 0:
        raise ValueError(f"max_pairs must be positive, got {max_pairs}")
    pairs = allowed_pairs(images, texture_to_color)
    if len(pairs) <= max_pairs:
        return pairs
    chosen = np.random.default_rng(seed).choice(len(pairs), size=max_pairs, replace=False)
    return pairs[np.sort(chosen)]


def pair_labels(images: ImageAttributes, pairs: np.ndarray,
                texture_to_color: np.ndarray) -> dict[str, np.ndarray]:
    """Task labels of pairs [P, 2], each an int64 array [P].

    shape (redundancy), texture_1 / texture_2 (uniqueness), color_1 / color_2, and synergy:
    1 iff (texture of image 1, colour of image 2) is in the mapping M.
    """
    first, second = pairs[:, 0], pairs[:, 1]
    synergy = texture_to_color[images.texture[first]] == images.color[second]
    return {
        "shape": images.shape[first],
        "texture_1": images.texture[first],
        "texture_2": images.texture[second],
        "color_1": images.color[first],
        "color_2": images.color[second],
        "synergy": synergy.astype(np.int64),
    }


# Shapes: implicit functions of template coordinates u (left->right), v (top->bottom) in [0, 1).
def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    spike = (v < 0.4) & (np.abs(u - 0.5) < v / 4)
    arms = (v >= 0.4) & (v < 0.6) & (np.abs(u - 0.5) < 0.5 - 2.4 * (v - 0.4))
    leg_inner = 0.33 - 0.43 * (v - 0.55)
    leg_outer = 0.62 - 1.05 * (v - 0.55)
    legs = (v >= 0.55) & (((leg_inner < u) & (u < leg_outer))
                          | ((leg_inner < 1 - u) & (1 - u < leg_outer)))
    return spike | arms | legs


def _pentagon(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    taper = (v - 0.4) / 3.1
    return np.where(v < 0.4, np.abs(u - 0.5) < 1.25 * v, (u > taper) & (u < 1 - taper))


def _fivesquare(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    middle_column = (u >= 1 / 3) & (u < 2 / 3)
    middle_row = (v >= 1 / 3) & (v < 2 / 3)
    return middle_column == middle_row  # four corners and the centre


_SHAPES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "triangle": lambda u, v: np.abs(u - 0.5) < v / 2,
    "square": lambda u, v: np.ones(u.shape, dtype=bool),
    "plus": lambda u, v: (np.abs(u - 0.5) < 1 / 6) | (np.abs(v - 0.5) < 1 / 6),
    "circle": lambda u, v: (u - 0.5) ** 2 + (v - 0.5) ** 2 < 0.25,
    "tee": lambda u, v: (np.abs(u - 0.5) < 1 / 6) | (v < 1 / 3),
    "rhombus": lambda u, v: (u > 0.5 - v / 2) & (u < 1 - v / 2),
    "pentagon": _pentagon,
    "star": _star,
    "fivesquare": _fivesquare,
    "trapezoid": lambda u, v: (u > v / 3.1) & (u < 1 - v / 3.1),
}


# Periodic textures: functions of texture coordinates x, y measured in texture periods.
def _frac(a: np.ndarray) -> np.ndarray:
    return a - np.floor(a)


def _odd_row(y: np.ndarray) -> np.ndarray:
    return _frac(y / 2) >= 0.5


def _zigzags(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    fx, fy = _frac(x), _frac(y)
    fx = np.where(_odd_row(y), 1 - fx, fx)
    return (fy / 2 + 0.1 < fx) & (fx < fy / 2 + 0.5)  # band of 0.4 period, as the reference


def _pluses(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    fx, fy = _frac(x), _frac(y)
    horizontal = np.abs(fy - 0.5) < _PLUS_HALF_WIDTH
    centred = (np.abs(fx - 0.5) < _PLUS_HALF_WIDTH) | horizontal
    shifted = ((fx < _PLUS_HALF_WIDTH) | (1 - fx < _PLUS_HALF_WIDTH)
               | (horizontal & (np.abs(fx - 0.5) > _PLUS_HALF_WIDTH)))
    return np.where(_odd_row(y), shifted, centred)


_PERIODIC_TEXTURES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "solid": lambda x, y: np.ones(x.shape, dtype=bool),
    "stripes": lambda x, y: _frac(y) < _STRIPE_WIDTH,
    "grid": lambda x, y: (_frac(y) < _STRIPE_WIDTH) | (_frac(x) < _STRIPE_WIDTH),
    "hexgrid": lambda x, y: ((_frac(x + 1.73 * y) < _THIN_LINE_WIDTH)
                             | (_frac(x - 1.73 * y) < _THIN_LINE_WIDTH)
                             | (_frac(y) < _THIN_LINE_WIDTH)),
    "dots": lambda x, y: (_frac(x) - 0.5) ** 2 + (_frac(y) - 0.5) ** 2 < _DOT_RADIUS ** 2,
    "triangles": lambda x, y: np.abs(_frac(x) - 0.5) < (_frac(y) - 0.2) / 2,  # apex at y = 0.2
    "zigzags": _zigzags,
    "pluses": _pluses,
}
_RANDOM_TEXTURES = ("noise", "rain")  # drawn per image on a grid of one-pixel texture cells
assert set(_PERIODIC_TEXTURES) | set(_RANDOM_TEXTURES) == set(TEXTURE_NAMES)
assert set(_SHAPES) == set(SHAPE_NAMES)


class _Scene(NamedTuple):
    """Random placement of one image; angles in radians, positions relative to the image side."""

    shape_angle: float
    center_x: float
    center_y: float
    texture_angle: float
    texture_offset_x: float  # in texture periods, [0, 1)
    texture_offset_y: float


def _draw_scene(rng: np.random.Generator) -> _Scene:
    """Rotation in [-45, 45] degrees, and a position that keeps the rotated template inside."""
    shape_angle = np.deg2rad(rng.uniform(-MAX_ROTATION_DEGREES, MAX_ROTATION_DEGREES))
    half_extent = TEMPLATE_FRACTION / 2 * (abs(np.cos(shape_angle)) + abs(np.sin(shape_angle)))
    center_x, center_y = rng.uniform(half_extent, 1 - half_extent, size=2)
    texture_angle = np.deg2rad(rng.uniform(-MAX_ROTATION_DEGREES, MAX_ROTATION_DEGREES))
    offset_x, offset_y = rng.uniform(0, 1, size=2)
    return _Scene(shape_angle, center_x, center_y, texture_angle, offset_x, offset_y)


def _random_cells(rng: np.random.Generator, texture: str, spec: RenderSpec) -> np.ndarray:
    """Binary grid [G, G] of one-pixel texture cells for noise or rain, centred on the image."""
    side = int(np.ceil(spec.image_size * np.sqrt(2))) + 4
    if texture == "noise":
        return rng.random((side, side)) < _NOISE_DENSITY
    streak = max(1, round(_RAIN_HEIGHT * spec.texture_period))
    starts = rng.random((side + streak, side)) < _RAIN_DENSITY
    covered = np.cumsum(starts, axis=0)  # cell (i, j) is wet if a streak starts in i-streak+1..i
    covered[streak:] -= covered[:-streak].copy()
    return covered[streak:] > 0


def _rotated_frame(dx: np.ndarray, dy: np.ndarray, angle: np.ndarray, scale: float,
                   offset_x: np.ndarray | float = 0.0,
                   offset_y: np.ndarray | float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Maps image offsets into a frame rotated by angle, scaled by scale, then shifted.

    dx [B, 1, M] and dy [B, M, 1] are offsets from the frame's origin, angle [B, 1, 1] in radians;
    returns the frame coordinates, each [B, M, M]. The small factors are combined first so each
    output costs one full-size addition (inverse mapping: no interpolation needed).
    """
    cos, sin = np.cos(angle) * scale, np.sin(angle) * scale
    return (cos * dx + offset_x) + sin * dy, (cos * dy + offset_y) - sin * dx


def _render_coverage(shape: str, texture: str, scenes: list[_Scene], cells: list[np.ndarray],
                     spec: RenderSpec) -> np.ndarray:
    """Fraction of each pixel covered by the textured shape, float32 [B, H, W] in [0, 1]."""
    size, factor = spec.image_size, spec.supersample
    grid = (np.arange(size * factor, dtype=np.float32) + 0.5) / factor  # sub-pixel centres
    px, py = grid[None, None, :], grid[None, :, None]

    def per_image(values: list[float]) -> np.ndarray:
        return np.asarray(values, dtype=np.float32)[:, None, None]  # [B, 1, 1]

    u, v = _rotated_frame(px - per_image([s.center_x * size for s in scenes]),
                          py - per_image([s.center_y * size for s in scenes]),
                          per_image([s.shape_angle for s in scenes]),
                          scale=1 / (TEMPLATE_FRACTION * size), offset_x=0.5, offset_y=0.5)
    inside = (u >= 0) & (u < 1) & (v >= 0) & (v < 1) & _SHAPES[shape](u, v)

    texture_angle = per_image([s.texture_angle for s in scenes])
    if texture in _PERIODIC_TEXTURES:
        x, y = _rotated_frame(px - size / 2, py - size / 2, texture_angle,
                              scale=1 / spec.texture_period,
                              offset_x=per_image([s.texture_offset_x for s in scenes]),
                              offset_y=per_image([s.texture_offset_y for s in scenes]))
        pattern = _PERIODIC_TEXTURES[texture](x, y)
    else:
        stacked = np.stack(cells)  # [B, G, G], one-pixel cells centred on the image
        middle = stacked.shape[-1] // 2
        cols, rows = _rotated_frame(px - size / 2, py - size / 2, texture_angle, scale=1.0,
                                    offset_x=middle, offset_y=middle)
        pattern = stacked[np.arange(len(scenes))[:, None, None],
                          np.floor(rows).astype(np.int64), np.floor(cols).astype(np.int64)]

    lit_count = _count_per_pixel(inside & pattern, factor)
    return lit_count.astype(np.float32) / np.float32(factor * factor)


def _count_per_pixel(lit: np.ndarray, factor: int) -> np.ndarray:
    """Number of lit sub-pixels in each factor x factor block: bool [B, M, M] -> uint8 [B, H, W].

    Explicit strided additions: much faster than numpy's reduction over short axes.
    """
    batch, sub_size = lit.shape[0], lit.shape[1]
    size = sub_size // factor
    sub_rows = lit.view(np.uint8).reshape(batch, size, factor, sub_size)
    rows = sub_rows[:, :, 0].copy()
    for k in range(1, factor):
        rows += sub_rows[:, :, k]
    sub_cols = rows.reshape(batch, size, size, factor)
    counts = sub_cols[..., 0].copy()
    for k in range(1, factor):
        counts += sub_cols[..., k]
    return counts


def iter_rendered_groups(images: ImageAttributes, spec: RenderSpec,
                         seed: int = RENDER_SEED) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Renders the images one (shape, texture) group at a time, the unit of vectorisation.

    Yields (indices [B] into images, uint8 pixels [B, H, W, 3]), covering every image once, so a
    caller can encode and drop each group instead of holding every image in memory.
    """
    groups = images.shape * NUM_VALUES + images.texture
    for group in np.unique(groups):
        members = np.flatnonzero(groups == group)
        shape, texture = SHAPE_NAMES[group // NUM_VALUES], TEXTURE_NAMES[group % NUM_VALUES]
        scenes, cells = [], []
        for index in members:
            rng = np.random.default_rng([seed, images.shape[index], images.color[index],
                                         images.texture[index], images.render[index]])
            scenes.append(_draw_scene(rng))
            if texture in _RANDOM_TEXTURES:
                cells.append(_random_cells(rng, texture, spec))
        alpha = _render_coverage(shape, texture, scenes, cells, spec)
        yield members, _blend(alpha, images.color[members])


def _blend(alpha: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """Coverage [B, H, W] and colour indices [B] -> uint8 pixels [B, H, W, 3] over the grey background."""
    alpha, rgb = alpha[..., None], COLOR_RGB[colors][:, None, None, :]
    return np.clip((alpha * rgb + (1 - alpha) * BACKGROUND_RGB) * 255, 0, 255).astype(np.uint8)


def render_variant(image: tuple[int, int, int, int], spec: RenderSpec, *, color: int | None = None,
                   texture: int | None = None, seed: int = RENDER_SEED) -> np.ndarray:
    """Image (shape, colour, texture, render) with its colour and/or texture replaced: uint8 [H, W, 3].

    Everything else is the image's own: its scene (rotation, position, texture angle and phase) and,
    for a noise or rain texture, the cells its generator draws after the scene. With no replacement,
    or a replacement by the same value, this is exactly the image `render_images` draws.
    """
    shape, own_color, own_texture, render = (int(value) for value in image)
    rng = np.random.default_rng([seed, shape, own_color, own_texture, render])
    scene = _draw_scene(rng)
    texture_name = TEXTURE_NAMES[own_texture if texture is None else int(texture)]
    cells = [_random_cells(rng, texture_name, spec)] if texture_name in _RANDOM_TEXTURES else []
    alpha = _render_coverage(SHAPE_NAMES[shape], texture_name, [scene], cells, spec)
    return _blend(alpha, np.array([own_color if color is None else int(color)]))[0]


def render_images(images: ImageAttributes, spec: RenderSpec,
                  seed: int = RENDER_SEED) -> np.ndarray:
    """Renders every image: uint8 [N, H, W, 3].

    Each image's randomness (rotation, position, texture phase, noise) comes from a generator
    seeded by (seed, shape, colour, texture, render) only, so an image is the same whatever else
    is rendered and in whatever order; placement is resolution-independent. Pixels are
    coverage * colour + (1 - coverage) * grey, so the background and the unlit texture cells are
    grey (127).
    """
    size = spec.image_size
    pixels = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for members, group_pixels in iter_rendered_groups(images, spec, seed):
        pixels[members] = group_pixels
    return pixels
