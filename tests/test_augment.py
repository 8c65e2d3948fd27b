"""Properties of the registered augmentation ops: shapes, ranges, probabilities and seeding."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from comm_jax.view_recipes import simclr_image_ops
from input_pipeline import augment

SIZE = 32
RANDOM_SPECS = [
    "random_resized_crop(24)", "color_jitter(p=1.0)", "gaussian_blur(p=1.0)",
    simclr_image_ops(SIZE),
]


def seed(number: int) -> tf.Tensor:
    return tf.constant([number, 17], tf.int64)


def image(rng_seed: int = 0, size: int = SIZE) -> tf.Tensor:
    return tf.constant(np.random.default_rng(rng_seed).integers(0, 256, (size, size, 3), np.uint8))


def unit_image(rng_seed: int = 0) -> tf.Tensor:
    return augment.to_unit_float(image(rng_seed))


def run(spec: str, x: tf.Tensor, number: int = 0) -> np.ndarray:
    return augment.parse(spec)(x, seed(number)).numpy()


def applied_fraction(spec: str, x: tf.Tensor, changed, trials: int = 300) -> float:
    return float(np.mean([changed(run(spec, x, number)) for number in range(trials)]))


def test_unknown_op_is_rejected_with_the_list_of_known_ops():
    with pytest.raises(ValueError, match="unknown augmentation op 'blurr'.*gaussian_blur"):
        augment.parse("flip_lr|blurr(3)")


@pytest.mark.parametrize("spec, pattern", [
    ("resize(size=__import__('os'))", "Python literals"),
    ("flip_lr(q=0.5)", "bad arguments.*flip_lr"),
    ("resize(", "cannot parse"),
    ("grayscale(p=1.5)", r"\[0, 1\]"),
])
def test_malformed_specs_are_rejected(spec, pattern):
    with pytest.raises(ValueError, match=pattern):
        augment.parse(spec)


def test_empty_spec_is_the_identity():
    x = unit_image()
    np.testing.assert_array_equal(run("", x), x.numpy())


@pytest.mark.parametrize("spec", RANDOM_SPECS)
def test_same_seed_gives_the_same_output_and_other_seeds_differ(spec):
    x = image()
    first, again, other = run(spec, x, 1), run(spec, x, 1), run(spec, x, 2)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


def test_ops_give_the_same_result_inside_a_parallel_tf_data_map():
    op = augment.parse(simclr_image_ops(SIZE))
    x = image()
    mapped = (tf.data.Dataset.range(6)
              .map(lambda i: op(x, tf.stack([i, tf.constant(17, tf.int64)])),
                   num_parallel_calls=3, deterministic=True))
    for number, output in enumerate(mapped.as_numpy_iterator()):
        np.testing.assert_array_equal(output, op(x, seed(number)).numpy())


def test_simclr_chain_gives_normalised_float32_of_the_crop_size():
    output = run(simclr_image_ops(24), image())
    assert output.shape == (24, 24, 3) and output.dtype == np.float32
    lowest = (0 - np.array(augment.IMAGENET_MEAN)) / np.array(augment.IMAGENET_STD)
    highest = (1 - np.array(augment.IMAGENET_MEAN)) / np.array(augment.IMAGENET_STD)
    assert np.all(output >= lowest - 1e-5) and np.all(output <= highest + 1e-5)


def test_random_resized_crop_has_the_requested_size_and_range():
    for number in range(5):
        output = run("random_resized_crop((20, 12))", image(), number)
        assert output.shape == (20, 12, 3) and output.dtype == np.float32
        assert output.min() >= 0.0 and output.max() <= 1.0


def test_random_resized_crop_of_the_full_area_is_a_plain_resize():
    x = image()
    crop = run("random_resized_crop(16, scale=(1.0, 1.0), ratio=(1.0, 1.0))", x)
    np.testing.assert_allclose(crop, tf.image.resize(augment.to_unit_float(x), (16, 16)).numpy(),
                               atol=1e-6)


def test_eval_resize_and_center_crop_sizes():
    assert run("resize(20)", image()).shape == (20, 20, 3)
    center = run("center_crop(16)", image())
    np.testing.assert_allclose(center, unit_image().numpy()[8:24, 8:24], atol=1e-7)


@pytest.mark.parametrize("spec", ["color_jitter(p=0.0)", "grayscale(p=0.0)",
                                  "gaussian_blur(p=0.0)", "flip_lr(p=0.0)",
                                  "gaussian_noise(p=0.0)", "drop_steps(p=0.0)", "crop_steps(p=0.0)"])
def test_probability_zero_is_the_identity(spec):
    x = unit_image()
    for number in range(5):
        np.testing.assert_array_equal(run(spec, x, number), x.numpy())


def test_color_jitter_stays_in_range_and_brightness_scales_by_a_bounded_factor():
    x = unit_image()
    output = run("color_jitter(p=1.0)", x)
    assert output.min() >= 0.0 and output.max() <= 1.0
    dim = x.numpy() * 0.5
    brightened = run("color_jitter(0.4, 0.0, 0.0, 0.0, p=1.0)", tf.constant(dim))
    factor = brightened.sum() / dim.sum()
    assert 0.6 <= factor <= 1.4
    np.testing.assert_allclose(brightened, dim * factor, atol=1e-5)


def test_color_jitter_applies_with_probability_p():
    x = unit_image()
    fraction = applied_fraction("color_jitter(p=0.8)", x, lambda y: not np.array_equal(y, x))
    assert 0.72 <= fraction <= 0.88


def test_grayscale_gives_equal_channels_with_probability_p():
    x = unit_image()
    output = run("grayscale(p=1.0)", x)
    np.testing.assert_allclose(output[..., 0], output[..., 1], atol=1e-7)
    np.testing.assert_allclose(output[..., 0], output[..., 2], atol=1e-7)
    fraction = applied_fraction("grayscale(p=0.2)", x, lambda y: np.allclose(y[..., 0], y[..., 1]))
    assert 0.13 <= fraction <= 0.27


def high_frequency_energy(x: np.ndarray) -> float:
    return float(np.sum(np.diff(x, axis=0) ** 2) + np.sum(np.diff(x, axis=1) ** 2))


def test_gaussian_blur_reduces_high_frequency_energy_and_keeps_the_mean():
    x = unit_image()
    blurred = run("gaussian_blur(sigma=(1.5, 2.0), p=1.0)", x)
    assert blurred.shape == x.shape
    assert high_frequency_energy(blurred) < 0.5 * high_frequency_energy(x.numpy())
    assert abs(blurred.mean() - float(tf.reduce_mean(x))) < 0.01


def test_flip_lr_mirrors_the_width_axis_half_of_the_time():
    x = unit_image()
    np.testing.assert_array_equal(run("flip_lr(p=1.0)", x), x.numpy()[:, ::-1])
    fraction = applied_fraction("flip_lr", x, lambda y: np.array_equal(y, x.numpy()[:, ::-1]))
    assert 0.42 <= fraction <= 0.58


def test_normalize_uses_imagenet_statistics_by_default():
    x = image()
    expected = (x.numpy() / 255.0 - augment.IMAGENET_MEAN) / augment.IMAGENET_STD
    output = run("normalize", x)
    assert output.dtype == np.float32
    np.testing.assert_allclose(output, expected, atol=1e-5)
    np.testing.assert_allclose(run("normalize(mean=0.5, std=0.5)", x), x.numpy() / 127.5 - 1,
                               atol=1e-5)


def test_mask_tokens_masks_about_the_rate_and_never_special_tokens():
    rng = np.random.default_rng(0)
    tokens = rng.integers(1000, 2000, 20000)
    tokens[::10] = 0
    tokens[1::10] = 101
    tokens[2::10] = 102
    output = run("mask_tokens(rate=0.15, mask_id=103, special_ids=(0, 101, 102, 103))",
                 tf.constant(tokens))
    special = np.isin(tokens, (0, 101, 102))
    np.testing.assert_array_equal(output[special], tokens[special])
    masked = output[~special] == 103
    assert abs(masked.mean() - 0.15) < 0.01
    np.testing.assert_array_equal(output[~special][~masked], tokens[~special][~masked])


def test_gaussian_noise_has_the_requested_std():
    x = tf.ones([500, 20])
    noise = run("gaussian_noise(std=0.1, p=1.0)", x) - 1.0
    assert abs(noise.std() - 0.1) < 0.005 and abs(noise.mean()) < 0.005


def test_drop_steps_zeroes_the_requested_fraction_of_whole_rows():
    x = tf.ones([100, 4])
    output = run("drop_steps(fraction=(0.25, 0.25), p=1.0)", x)
    zero_rows = np.all(output == 0, axis=1)
    assert zero_rows.sum() == 25
    assert np.all(output[~zero_rows] == 1)


def test_crop_steps_keeps_one_contiguous_window_of_the_requested_length():
    x = tf.ones([100])
    for number in range(5):
        kept = np.flatnonzero(run("crop_steps(scale=(0.3, 0.3), p=1.0)", x, number))
        assert len(kept) == 30 and np.all(np.diff(kept) == 1)


def test_crop_steps_with_resize_stretches_the_window_back_to_full_length():
    ramp = tf.reshape(tf.range(200, dtype=tf.float32), [100, 2])
    output = run("crop_steps(scale=(0.5, 0.5), p=1.0, resize=True)", ramp)
    assert output.shape == (100, 2)
    assert np.all(np.diff(output[:, 0]) >= 0)
    span = output[-1, 0] - output[0, 0]
    assert 80 <= span <= 100  # a 50-row window of a ramp with step 2 spans ~98
