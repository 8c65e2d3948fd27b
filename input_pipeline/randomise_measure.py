"""Measures what `randomise_attribute` removes from Bimodal Trifeatures views, with discrete estimators.

For pairs of the 32 px train images, the op is applied to one image, the attribute's value in the view
is read back from the pixels (colour: the nearest colour to the pixel farthest from grey; texture: the
value whose render at the image's own pose equals the view), and plug-in Shannon measures of the
empirical joints are reported in bits:

- `I(V;A)`: the view's value V and the image's original value A, on unbiased pairs
  (expected log2(10) - H(1 - 0.9 s, s/10, ..., s/10): 3.32 at s = 0, 0.90 at 0.5, 0 at 1);
- `I(t1;c2) biased`: texture of image 1 and colour of image 2 as the views show them, on `_biased`
  pairs (colour_2 = M(texture_1)), the dependence a model aligns to learn the synergy;
- `S`, `R`, `U1`, `U2`: BROJA PID (`comm_jax.information.pid.broja`) of the unbiased pairs' `synergy`
  label from the views' (texture_1, colour_2).

Plug-in estimates on n pairs are biased upwards by about (cells - 1) / (2 n ln 2) bits: 0.06 bits for
`I(V;A)` at n = 1000. Run: `python -m input_pipeline.randomise_measure [--n=1000] [--strengths=0,0.5,1]`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from comm_jax.information.measures import mutual_information
from comm_jax.information.pid import broja
from input_pipeline import augment, controlled_augment  # noqa: F401  (registers the op)
from input_pipeline import trifeatures_render as render

SIZE = 32
CASES = (("texture", 1), ("colour", 1), ("texture", 2), ("colour", 2))


def decode_colour(pixels: np.ndarray) -> int:
    """The colour index of a Trifeatures render uint8 [H, W, 3]: the nearest colour, in direction from
    grey, to its pixel farthest from grey (every colour differs from grey by >= 0.4 in some channel)."""
    shift = (pixels.reshape(-1, 3).astype(np.float64) + 0.5) / 255 - render.BACKGROUND_RGB
    farthest = shift[np.argmax(np.abs(shift).max(axis=1))]
    directions = render.COLOR_RGB - render.BACKGROUND_RGB
    return int(np.argmax(directions @ farthest / np.linalg.norm(directions, axis=1)))


def decode_texture(pixels: np.ndarray, image: tuple[int, int, int, int], colour: int) -> int:
    """The texture value whose render of `image` (shape, colour, texture, render), at its own pose and
    in `colour`, equals `pixels`; -1 when none does."""
    spec = render.render_spec(pixels.shape[0])
    for texture in range(render.NUM_VALUES):
        if np.array_equal(render.render_variant(image, spec, color=colour, texture=texture), pixels):
            return texture
    return -1


def _pairs(biased: bool, n: int, seed: int) -> tuple[render.ImageAttributes, np.ndarray]:
    images = render.split_images("train")
    pairs = render.sample_pairs(images, texture_to_color=render.synergy_mapping() if biased else None)
    return images, pairs[np.random.default_rng(seed).choice(len(pairs), size=n, replace=False)]


def apply_op(spec: str, pixels: np.ndarray, features: dict[str, np.ndarray], seed: int = 0) -> np.ndarray:
    """`spec` applied to each image of pixels uint8 [N, H, W, 3] with its features {key: [N]}, the
    i-th with seed (seed, i), through tf.data: uint8 [N, H, W, 3]."""
    op = augment.parse(spec)
    dataset = tf.data.Dataset.from_tensor_slices((pixels, features, np.arange(len(pixels))))
    views = dataset.map(lambda x, f, i: op(x, tf.stack([tf.constant(seed, tf.int64), i]), f))
    return np.stack(list(views.as_numpy_iterator()))


def _joint(*codes: np.ndarray, sizes: Sequence[int]) -> np.ndarray:
    counts = np.zeros(sizes)
    np.add.at(counts, tuple(codes), 1)
    return counts / counts.sum()


def _view_values(attribute: str, image: int, strength: float, images: render.ImageAttributes,
                 pairs: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Texture of image 1 and colour of image 2 as the views show them, and the randomised value V
    and its original A, each int [n]."""
    members = pairs[:, image - 1]
    spec = render.render_spec(SIZE)
    pixels = np.stack([render.render_variant(tuple(int(f[m]) for f in images), spec) for m in members])
    features = {"shape": images.shape[members], f"color_{image}": images.color[members],
                f"texture_{image}": images.texture[members]}
    views = apply_op(f"randomise_attribute(attribute='{attribute}', image={image}, strength={strength})",
                     pixels, features, seed)
    if attribute == "colour":
        value = np.array([decode_colour(view) for view in views])
        original = images.color[members]
    else:
        value = np.array([decode_texture(view, tuple(int(f[m]) for f in images), images.color[m])
                          for view, m in zip(views, members)])
        original = images.texture[members]
    texture_1, colour_2 = images.texture[pairs[:, 0]], images.color[pairs[:, 1]]
    if (attribute, image) == ("texture", 1):
        texture_1 = value
    if (attribute, image) == ("colour", 2):
        colour_2 = value
    return {"value": value, "original": original, "texture_1": texture_1, "colour_2": colour_2}


def measure(attribute: str, image: int, strength: float, n: int = 1000, seed: int = 0) -> dict[str, float]:
    """Bits (see the module doc) and P(V = A) for `randomise_attribute(attribute, image, strength)`."""
    tens = (render.NUM_VALUES, render.NUM_VALUES)
    images, pairs = _pairs(False, n, seed)
    unbiased = _view_values(attribute, image, strength, images, pairs, seed)
    if (unbiased["value"] < 0).any():
        raise ValueError("a view's texture matched no render at its pose")
    synergy = render.pair_labels(images, pairs, render.synergy_mapping())["synergy"]
    parts = broja(_joint(unbiased["texture_1"], unbiased["colour_2"], synergy, sizes=(*tens, 2)))
    images, pairs = _pairs(True, n, seed)
    biased = _view_values(attribute, image, strength, images, pairs, seed + 1)
    return {"I(V;A)": mutual_information(_joint(unbiased["value"], unbiased["original"], sizes=tens)),
            "P(V=A)": float(np.mean(unbiased["value"] == unbiased["original"])),
            "I(t1;c2) biased": mutual_information(_joint(biased["texture_1"], biased["colour_2"], sizes=tens)),
            **{part: parts[part] for part in ("S", "R", "U1", "U2")}}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="pairs per measurement")
    parser.add_argument("--strengths", default="0,0.5,1", help="comma-separated strengths in [0, 1]")
    args = parser.parse_args(argv)
    columns = ("I(V;A)", "P(V=A)", "I(t1;c2) biased", "S", "R", "U1", "U2")
    print("| op | strength | " + " | ".join(columns) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in columns) + " |")
    for attribute, image in CASES:
        for strength in (float(s) for s in args.strengths.split(",")):
            row = measure(attribute, image, strength, n=args.n)
            cells = " | ".join(f"{row[column]:.3f}" for column in columns)
            print(f"| {attribute}, image {image} | {strength:g} | {cells} |")


if __name__ == "__main__":
    main()
