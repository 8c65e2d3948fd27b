"""The Vision&Touch encoders equal MultiBench's robotics encoders, transcribed here in NumPy from the
PyTorch source (`CausalConv1D`, `ForceEncoder`, `ProprioEncoder`; alpha = 1): with the same weights the
outputs agree to float tolerance, and the force encoder's shapes and receptive field are the reference's."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from comm_jax import models
from comm_jax.models.sequence_encoders import CausalConvEncoder
from comm_jax.models.vector_encoders import VectorMLP
from configs import multibench as multibench_config

FORCE_CHANNELS = (6, 16, 32, 64, 128)


def leaky_relu(x: np.ndarray) -> np.ndarray:
    return np.where(x >= 0, x, 0.1 * x)


def causal_conv1d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, stride: int) -> np.ndarray:
    """MultiBench's `CausalConv1D`: torch's `Conv1d(padding=k - 1)` (zeros on both sides), then the last
    k - 1 outputs dropped. x `[batch, in, steps]` (channels first, as torch), weight `[out, in, k]`."""
    k = weight.shape[-1]
    padded = np.pad(x, ((0, 0), (0, 0), (k - 1, k - 1)))
    starts = range(0, padded.shape[-1] - k + 1, stride)
    out = np.stack([np.einsum("bik,oik->bo", padded[:, :, s:s + k], weight) for s in starts], axis=-1)
    out = out + bias[None, :, None]
    return out[:, :, :-(k - 1)] if k > 1 else out


def force_encoder(force: np.ndarray, layers: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """`ForceEncoder.frc_encoder`: CausalConv1D(kernel 2, stride 2) + LeakyReLU(0.1) per layer; `[b, 6, L]`."""
    for weight, bias in layers:
        force = leaky_relu(causal_conv1d(force, weight, bias, stride=2))
    return force


def proprio_encoder(proprio: np.ndarray, layers: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """`ProprioEncoder.proprio_encoder`: Linear + LeakyReLU(0.1) per layer (torch weights `[out, in]`)."""
    for weight, bias in layers:
        proprio = leaky_relu(proprio @ weight.T + bias)
    return proprio


def torch_like_layers(widths, rng, kernel: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Weights in torch's layout (`[out, in, k]` or `[out, in]`), uniform in +-1/sqrt(fan_in) as torch's init."""
    layers = []
    for a, b in zip(widths, widths[1:]):
        fan_in = a * (kernel or 1)
        shape = (b, a, kernel) if kernel else (b, a)
        bound = 1.0 / np.sqrt(fan_in)
        layers.append((rng.uniform(-bound, bound, shape), rng.uniform(-bound, bound, b)))
    return layers


def load_conv_weights(encoder: CausalConvEncoder, layers) -> None:
    for conv, (weight, bias) in zip(encoder.convs, layers, strict=True):
        conv.kernel[...] = jnp.asarray(weight.transpose(2, 1, 0), jnp.float32)     # [k, in, out]
        conv.bias[...] = jnp.asarray(bias, jnp.float32)


@pytest.fixture(scope="module")
def force_pair():
    """The force encoder (out 96) and the reference's weights copied into it."""
    encoder = CausalConvEncoder(6, out=96, rngs=nnx.Rngs(0))
    layers = torch_like_layers((*FORCE_CHANNELS, 96), np.random.default_rng(0), kernel=2)
    load_conv_weights(encoder, layers)
    return encoder, layers


@pytest.mark.parametrize("steps", [32, 64, 40, 48])
def test_force_encoder_equals_multibench_on_copied_weights(force_pair, steps):
    """Equal outputs and lengths at the configs' 32 steps and at lengths that are not multiples of 32."""
    encoder, layers = force_pair
    force = np.random.default_rng(steps).normal(size=(3, steps, 6))
    ours = np.asarray(encoder(jnp.asarray(force, jnp.float32)))
    reference = force_encoder(force.transpose(0, 2, 1), layers).transpose(0, 2, 1)
    assert ours.shape == reference.shape
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-6)


def test_force_encoder_shapes_and_receptive_field(force_pair):
    """[b, 32, 6] -> [b, 1, out]; output j sees the steps 32j-31 .. 32j, so of 32 steps the first alone
    (the reference's one-step front padding and dropped last output, five times)."""
    encoder, _ = force_pair
    force = jnp.asarray(np.random.default_rng(1).normal(size=(2, 64, 6)), jnp.float32)
    out = np.asarray(encoder(force))
    assert encoder(force[:, :32]).shape == (2, 1, 96) and out.shape == (2, 2, 96)
    changed = np.asarray(encoder(force.at[:, 1:].add(5.0)))
    np.testing.assert_array_equal(changed[:, 0], out[:, 0])
    assert not np.allclose(changed[:, 1], out[:, 1])
    np.testing.assert_array_equal(np.asarray(encoder(force.at[:, 33:].add(5.0))), out)
    assert not np.allclose(np.asarray(encoder(force.at[:, 0].add(5.0)))[:, 0], out[:, 0])


def test_proprio_encoder_equals_multibench_on_copied_weights():
    """The config's proprioception MLP (8-32-64-128-out, leaky ReLU after every layer) is MultiBench's."""
    spec = multibench_config.get_config("vision_touch,modalities=3,cpu").model.encoders.proprio
    encoder = VectorMLP(8, rngs=nnx.Rngs(0), **spec.encoder_args)
    layers = torch_like_layers((8, 32, 64, 128, encoder.out_channels), np.random.default_rng(2))
    for layer, (weight, bias) in zip(encoder.layers, layers, strict=True):
        layer.kernel[...] = jnp.asarray(weight.T, jnp.float32)
        layer.bias[...] = jnp.asarray(bias, jnp.float32)
    proprio = np.random.default_rng(3).normal(size=(5, 8))
    np.testing.assert_allclose(np.asarray(encoder(jnp.asarray(proprio, jnp.float32))),
                               proprio_encoder(proprio, layers), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="activation must be one of"):
        VectorMLP(8, activation="gelu", rngs=nnx.Rngs(0))


def test_config_builds_the_multibench_force_and_proprio_encoders():
    """`configs/multibench.py:vision_touch` gives the force encoder [b, 32, 6] -> one token, and the
    proprioception encoder [b, 8] -> a vector, both of the model's width."""
    cfg = multibench_config.get_config("vision_touch,modalities=3,cpu")
    model = models.build_model(cfg.model)
    force, proprio = model.encoders["force"].encoder, model.encoders["proprio"].encoder
    assert isinstance(force, CausalConvEncoder) and isinstance(proprio, VectorMLP)
    assert force(jnp.zeros((2, 32, 6))).shape == (2, 1, force.out_channels)
    assert proprio(jnp.zeros((2, 8))).shape == (2, proprio.out_channels)
