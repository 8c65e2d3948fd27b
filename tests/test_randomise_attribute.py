"""`randomise_attribute` on Bimodal Trifeatures: the identity at strength 0; at strength 1 the image is
re-rendered exactly with a new value, shape, pose and the other attribute kept; and, measured with
discrete estimators, the view's information about the original value falls from log2(10) bits to 0,
removing the texture_1 -> colour_2 dependence of biased pairs only when it randomises one of those two."""

import numpy as np
import pytest
import tensorflow as tf

from input_pipeline import augment
from input_pipeline import randomise_measure as measure
from input_pipeline import trifeatures_render as render

SPEC = render.render_spec(32)
GREY = int(render.BACKGROUND_RGB[0] * 255)


@pytest.fixture(scope="module")
def originals():
    """40 train images, every texture and renders 0..2 among them: (attributes, pixels [40, 32, 32, 3])."""
    images = render.split_images("train")
    chosen = np.random.default_rng(0).choice(len(images), size=40, replace=False)
    images = render.ImageAttributes(*(field[chosen] for field in images))
    assert set(images.texture.tolist()) == set(range(10)) and set(images.render.tolist()) == {0, 1, 2}
    return images, render.render_images(images, SPEC)


def _views(spec: str, images, pixels, image: int = 1, seed: int = 0) -> np.ndarray:
    features = {"shape": images.shape, f"color_{image}": images.color, f"texture_{image}": images.texture}
    return measure.apply_op(spec, pixels, features, seed)


def _key(images, i: int) -> tuple[int, int, int, int]:
    return tuple(int(field[i]) for field in images)


def _coverage(pixels: np.ndarray, colour: int) -> np.ndarray:
    """Coverage [H, W] of a render in `colour`, read back from the blend with grey to the nearest
    1 / supersample^2 (the renderer's coverage steps)."""
    shift = (pixels.astype(np.float64) + 0.5) / 255 - render.BACKGROUND_RGB
    direction = render.COLOR_RGB[colour] - render.BACKGROUND_RGB
    steps = SPEC.supersample ** 2
    return np.round(shift @ direction / (direction @ direction) * steps).astype(int)


@pytest.mark.parametrize("attribute", ["colour", "texture"])
def test_strength_zero_is_the_identity_and_kept_images_are_unchanged(originals, attribute):
    images, pixels = originals
    features = {"shape": tf.constant(3), "color_1": tf.constant(1), "texture_1": tf.constant(2)}
    op = augment.parse(f"randomise_attribute(attribute='{attribute}', strength=0.0)")
    x = tf.constant(pixels[0])
    assert op(x, tf.constant([0, 0], tf.int64), features) is x     # never even reads the labels
    half = _views(f"randomise_attribute(attribute='{attribute}', strength=0.5)", images, pixels)
    changed = np.any(half != pixels, axis=(1, 2, 3))
    assert 5 <= changed.sum() <= 35                                 # the coin splits them, the rest untouched


def test_random_colour_keeps_the_coverage_exactly_and_is_the_render_in_the_new_colour(originals):
    images, pixels = originals
    views = _views("randomise_attribute(attribute='colour', strength=1.0)", images, pixels)
    new = np.array([measure.decode_colour(view) for view in views])
    assert (new != images.color).sum() >= 30
    for i, (view, colour) in enumerate(zip(views, new)):
        # shape, pose and texture: the same coverage of every pixel, read from the pixels alone
        np.testing.assert_array_equal(_coverage(view, colour), _coverage(pixels[i], images.color[i]))
        np.testing.assert_array_equal(view, render.render_variant(_key(images, i), SPEC, color=colour))


def test_random_texture_keeps_colour_and_silhouette_and_is_the_render_with_the_new_texture(originals):
    images, pixels = originals
    views = _views("randomise_attribute(attribute='texture', strength=1.0)", images, pixels)
    new = []
    for i, view in enumerate(views):
        key = _key(images, i)
        assert measure.decode_colour(view) == images.color[i]
        lit = np.any(view != GREY, axis=-1)
        silhouette = np.any(render.render_variant(key, SPEC, texture=0) != GREY, axis=-1)  # solid: the whole shape
        assert not (lit & ~silhouette).any() and not (np.any(pixels[i] != GREY, axis=-1) & ~silhouette).any()
        new.append(measure.decode_texture(view, key, images.color[i]))
    new = np.array(new)
    assert (new >= 0).all() and (new != images.texture).sum() >= 30


def test_the_op_refuses_an_image_that_is_not_a_render_of_its_labels(originals):
    images, pixels = originals
    wrong = render.ImageAttributes(images.shape[:2], (images.color[:2] + 1) % 10, images.texture[:2], images.render[:2])
    with pytest.raises(tf.errors.InvalidArgumentError, match="no render of"):
        _views("randomise_attribute(attribute='texture', strength=1.0)", wrong, pixels[:2])


@pytest.mark.parametrize("attribute", ["colour", "texture"])
def test_information_about_the_original_value_falls_from_log2_10_bits_to_zero(attribute):
    n = 400
    plug_in_bias = 81 / (2 * n * np.log(2))                          # 0.15 bits under independence
    kept, half, removed = (measure.measure(attribute, 1, s, n=n) for s in (0.0, 0.5, 1.0))
    assert kept["P(V=A)"] == 1.0 and kept["I(V;A)"] > 3.2
    assert abs(half["I(V;A)"] - 0.903 - plug_in_bias) < 0.2 and abs(half["P(V=A)"] - 0.55) < 0.08
    assert removed["I(V;A)"] < plug_in_bias + 0.1 and abs(removed["P(V=A)"] - 0.1) < 0.05
    # texture_1 -> colour_2 of biased pairs: removed with texture_1, kept when colour_1 is randomised
    assert kept["I(t1;c2) biased"] > 3.2
    if attribute == "texture":
        assert removed["I(t1;c2) biased"] < plug_in_bias + 0.1 and removed["S"] < 0.2 < kept["S"]
    else:
        assert removed["I(t1;c2) biased"] > 3.2 and removed["S"] == pytest.approx(kept["S"])


def test_new_values_are_uniform_and_the_same_seed_gives_the_same_view(originals):
    images, pixels = originals
    spec = "randomise_attribute(attribute='colour', image=2, strength=1.0)"
    many = np.concatenate([_views(spec, images, pixels, image=2, seed=s) for s in range(10)])
    counts = np.bincount([measure.decode_colour(view) for view in many], minlength=10)
    assert counts.min() >= 20 and counts.max() <= 60                   # 400 draws, 40 expected per value
    np.testing.assert_array_equal(_views(spec, images, pixels, image=2, seed=3), many[120:160])
