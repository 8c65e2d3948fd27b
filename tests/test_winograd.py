"""Winograd F(2x2, 3x3) against the direct convolution: same outputs and gradients, and AlexNet's
parameters unchanged by the choice."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from comm_jax.models.image_encoders import AlexNetFeatures
from comm_jax.models.winograd import winograd_conv3x3


def _direct(x, w, padding):
    return jax.lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        precision=jax.lax.Precision.HIGHEST)


@pytest.mark.parametrize("shape,padding", [((2, 13, 13, 5, 7), ((1, 1), (1, 1))),   # odd size: padded tiles
                                           ((3, 8, 6, 4, 3), ((1, 1), (1, 1))),     # non-square
                                           ((2, 9, 10, 3, 2), ((0, 2), (2, 0)))])  # asymmetric padding
def test_winograd_matches_direct_convolution_forward_and_gradient(shape, padding):
    n, h, w, c, o = shape
    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (n, h, w, c))
    kernel = jax.random.normal(kw, (3, 3, c, o))
    want = _direct(x, kernel, padding)
    got = winograd_conv3x3(x, kernel, padding, precision=jax.lax.Precision.HIGHEST)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    cotangent = jax.random.normal(kg, want.shape)
    loss = lambda f: lambda x, k: jnp.sum(f(x, k) * cotangent)
    want_grads = jax.grad(loss(lambda x, k: _direct(x, k, padding)), argnums=(0, 1))(x, kernel)
    got_grads = jax.grad(loss(lambda x, k: winograd_conv3x3(x, k, padding, precision=jax.lax.Precision.HIGHEST)),
                         argnums=(0, 1))(x, kernel)
    for got_g, want_g in zip(got_grads, want_grads):
        np.testing.assert_allclose(got_g, want_g, rtol=1e-5, atol=1e-3)


def test_winograd_rejects_other_kernel_sizes():
    with pytest.raises(ValueError, match="3x3"):
        winograd_conv3x3(jnp.zeros((1, 8, 8, 2)), jnp.zeros((5, 5, 2, 2)))


def test_alexnet_winograd_keeps_parameters_and_outputs():
    direct = AlexNetFeatures(3, rngs=nnx.Rngs(0))
    winograd = AlexNetFeatures(3, conv3x3="winograd", rngs=nnx.Rngs(0))
    state_d, state_w = nnx.state(direct, nnx.Param), nnx.state(winograd, nnx.Param)
    assert jax.tree.structure(state_d) == jax.tree.structure(state_w)
    for a, b in zip(jax.tree.leaves(state_d), jax.tree.leaves(state_w)):
        assert a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    x = jax.random.normal(jax.random.key(1), (2, 224, 224, 3))  # 13 px at the 3x3 layers: Winograd runs
    with jax.default_matmul_precision("highest"):
        want = direct(x)
        got = winograd(x)
        grad = lambda m: jax.grad(lambda s: jnp.sum(nnx.merge(nnx.graphdef(m), s)(x) ** 2))(nnx.state(m))
        want_g, got_g = grad(direct), grad(winograd)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(want))))
    for a, b in zip(jax.tree.leaves(got_g), jax.tree.leaves(want_g)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3 * float(jnp.max(jnp.abs(b))))


def test_alexnet_rejects_unknown_conv3x3():
    with pytest.raises(ValueError, match="conv3x3"):
        AlexNetFeatures(3, conv3x3="fft", rngs=nnx.Rngs(0))
