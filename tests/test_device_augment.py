"""On-device augmentation (`comm_jax.device_augment`) against the tf.data ops' arithmetic: the same
crop-and-resize as `tf.image.resize` of a slice, the same colour adjustments (hue from
`tf.image.adjust_hue`), the same blur, torchvision's crop-box distribution; and its use in training."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from comm_jax import device_augment as da
from comm_jax.view_recipes import simclr_image_ops
from input_pipeline import augment as host


def _images(batch=6, size=20, seed=0):
    return np.random.default_rng(seed).random((batch, size, size, 3)).astype(np.float32)


def _keys(batch, seed=0):
    return jax.random.split(jax.random.key(seed), batch)


def test_crop_and_resize_matches_tf_resize_of_the_slice():
    images = _images(size=24)
    boxes = np.array([[0, 0, 24, 24], [3, 5, 10, 7], [10, 0, 14, 24], [0, 20, 1, 4], [7, 7, 9, 9], [2, 1, 22, 3]],
                     np.int32)
    got = np.asarray(da.crop_and_resize(jnp.asarray(images), jnp.asarray(boxes), (16, 18)))
    for image, (top, left, h, w), out in zip(images, boxes, got):
        expected = tf.image.resize(image[top:top + h, left:left + w], (16, 18), method="bilinear").numpy()
        np.testing.assert_allclose(out, expected, atol=2e-6)


def _torchvision_box_size(rng, height, width, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """(h, w) of torchvision's RandomResizedCrop.get_params, written from its description."""
    for _ in range(10):
        target = height * width * rng.uniform(*scale)
        aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
        w, h = int(round(np.sqrt(target * aspect))), int(round(np.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return h, w
    return height, width


def test_crop_boxes_follow_torchvision_distribution_and_fall_back_to_the_whole_image():
    keys = _keys(20000)
    boxes = np.asarray(da.sample_crop_boxes(keys, 64, 48, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)))
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 64).all() and (left + w <= 48).all()
    reference = np.array([_torchvision_box_size(rng, 64, 48) for rng in [np.random.default_rng(9)] for _ in range(20000)])
    for got, expected in ((h * w, reference[:, 0] * reference[:, 1]), (w / h, reference[:, 1] / reference[:, 0])):
        for q in (0.1, 0.25, 0.5, 0.75, 0.9):
            assert np.quantile(got, q) == pytest.approx(np.quantile(expected, q), rel=0.05)
    assert len({tuple(b) for b in boxes}) > 1000  # positions vary
    impossible = np.asarray(da.sample_crop_boxes(keys[:10], 30, 30, scale=(2.0, 3.0), ratio=(1.0, 1.0)))
    np.testing.assert_array_equal(impossible, np.tile([0, 0, 30, 30], (10, 1)))


@pytest.mark.parametrize("name", ["brightness", "contrast", "saturation", "hue"])
def test_colour_adjustments_match_the_tf_ops(name):
    images = _images()
    factors = np.linspace(0.6, 1.4, len(images)).astype(np.float32)
    deltas = np.linspace(-0.1, 0.1, len(images)).astype(np.float32)
    device = {"brightness": lambda x: da.adjust_brightness(x, factors), "contrast": lambda x: da.adjust_contrast(x, factors),
              "saturation": lambda x: da.adjust_saturation(x, factors), "hue": lambda x: da.adjust_hue(x, deltas)}
    reference = {"brightness": lambda x, i: host._adjust_brightness(x, factors[i]),
                 "contrast": lambda x, i: host._adjust_contrast(x, factors[i]),
                 "saturation": lambda x, i: host._adjust_saturation(x, factors[i]),
                 "hue": lambda x, i: tf.image.adjust_hue(x, deltas[i])}
    got = np.asarray(device[name](jnp.asarray(images)))
    for i, image in enumerate(images):
        np.testing.assert_allclose(got[i], reference[name](tf.constant(image), i).numpy(), atol=2e-5)


def test_color_jitter_applies_the_four_adjustments_in_each_rows_own_order():
    images, keys = _images(batch=8, seed=1), _keys(8, seed=1)
    got = np.asarray(da.color_jitter(0.4, 0.4, 0.4, 0.1, p=1.0)(jnp.asarray(images), keys))
    split = jax.vmap(lambda k: jax.random.split(k, 5))(keys)
    b, c, s = (np.asarray(da._uniform(split[:, i + 1], 1 - 0.4, 1 + 0.4)) for i in range(3))
    shift = np.asarray(da._uniform(split[:, 4], -0.1, 0.1))
    order = np.argsort(np.asarray(da._uniform(split[:, 0], 0.0, 1.0, (4,))), axis=-1)
    assert len({tuple(o) for o in order}) > 1
    for i, image in enumerate(images):
        x = tf.constant(image)
        steps = [lambda x: host._adjust_brightness(x, b[i]), lambda x: host._adjust_contrast(x, c[i]),
                 lambda x: host._adjust_saturation(x, s[i]), lambda x: tf.image.adjust_hue(x, shift[i])]
        for j in order[i]:
            x = steps[j](x)
        np.testing.assert_allclose(got[i], x.numpy(), atol=5e-5)


def test_gaussian_blur_matches_the_tf_op_for_the_drawn_sigmas():
    images, keys = _images(batch=4, size=32, seed=2), _keys(4, seed=2)
    got = np.asarray(da.gaussian_blur((0.1, 2.0), p=1.0)(jnp.asarray(images), keys))
    sigmas = np.asarray(da._uniform(keys, 0.1, 2.0))
    radius = 1                                   # int(32 * 0.1) // 2
    for i, image in enumerate(images):
        kernel = host.gaussian_kernel(tf.constant(sigmas[i]), radius)
        padded = tf.pad(image[None], [[0, 0], [radius, radius], [radius, radius], [0, 0]], "REFLECT")
        vertical = tf.tile(tf.reshape(kernel, [-1, 1, 1, 1]), [1, 1, 3, 1])
        x = tf.nn.depthwise_conv2d(padded, vertical, [1, 1, 1, 1], "VALID")
        x = tf.nn.depthwise_conv2d(x, tf.reshape(vertical, [1, -1, 3, 1]), [1, 1, 1, 1], "VALID")[0]
        np.testing.assert_allclose(got[i], x.numpy(), atol=2e-6)


def test_gates_apply_with_their_probability_and_the_full_spec_is_deterministic():
    images = jnp.asarray(_images(batch=2000, size=4, seed=3))
    keys = _keys(2000, seed=3)
    flipped = np.asarray(da.flip_lr(0.5)(images, keys))
    rate = np.mean(np.all(flipped == np.asarray(images)[:, :, ::-1], axis=(1, 2, 3)))
    assert 0.45 < rate < 0.55
    grey = np.asarray(da.grayscale(0.2)(images, keys))
    assert 0.16 < np.mean(np.ptp(grey, axis=-1).max(axis=(1, 2)) < 1e-6) < 0.24
    op = da.parse(simclr_image_ops(16))
    raw = jnp.asarray(np.random.default_rng(4).integers(0, 256, (8, 16, 16, 3)), jnp.uint8)
    first, again = op(raw, _keys(8)), op(raw, _keys(8))
    assert first.shape == (8, 16, 16, 3) and first.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(first)))
    np.testing.assert_array_equal(np.asarray(first), np.asarray(again))
    assert not np.allclose(np.asarray(first), np.asarray(op(raw, _keys(8, seed=5))))


def test_bad_specs_name_the_op():
    with pytest.raises(ValueError, match="unknown on-device augmentation op 'mask_tokens'"):
        da.parse("random_resized_crop(8)|mask_tokens")
    with pytest.raises(ValueError, match="bad arguments for on-device augmentation op 'flip_lr'"):
        da.parse("flip_lr(0.5, 3)")


def test_views_on_a_sharded_batch_equal_the_single_device_views():
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    op = da.parse(simclr_image_ops(16))
    raw = jnp.asarray(np.random.default_rng(6).integers(0, 256, (16, 16, 16, 3)), jnp.uint8)
    key_data = jnp.asarray(np.random.default_rng(7).integers(0, 2 ** 32, (16, 2)), jnp.uint32)
    run = jax.jit(lambda images, keys: op(images, da.view_keys(keys, 1, "image_1")))
    single = np.asarray(run(raw, key_data))
    mesh = Mesh(np.array(jax.devices()[:4]), ("data",))
    sharded = run(jax.device_put(raw, NamedSharding(mesh, P("data"))),
                  jax.device_put(key_data, NamedSharding(mesh, P("data"))))
    assert len(sharded.sharding.device_set) == 4
    np.testing.assert_allclose(np.asarray(sharded), single, atol=1e-5)      # float rounding only
    first_half = np.asarray(run(raw[:8], key_data[:8]))       # a row's views do not depend on its batch
    np.testing.assert_allclose(first_half, single[:8], atol=1e-5)
    assert not np.allclose(single[:8], single[8:], atol=0.1)
