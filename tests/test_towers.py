"""The baselines' unimodal towers against NumPy: the reference's flatten -> linear pooling, masked
mean pooling that padding cannot change, each modality through its own head, and Z of a subset as
the concatenation of its modalities' vectors; parameter counts of the full-size towers against
torchvision's AlexNet."""

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import pytest
from flax import nnx

from comm_jax.models import build_model
from configs import trifeatures


def rand(key, shape):
    return jax.random.normal(jax.random.key(key), shape)


def towers_config(projection="mlp", representation="pooled"):
    encoders = {
        "image": dict(encoder="small_cnn", input_shape=(16, 16, 3), encoder_args=dict(channels=(8, 16))),
        "sequence": dict(encoder="none", input_shape=(6, 5), pool="mean", variable_length=True),
    }
    return mlc.ConfigDict(dict(architecture="towers", modalities=("image", "sequence"), encoders=encoders,
                               latent=12, head_hidden=20, head_out=7, projection=projection,
                               representation=representation))


def test_flatten_pooling_is_a_linear_map_of_the_whole_feature_map():
    model = build_model(towers_config(), seed=0)
    x = rand(1, (3, 16, 16, 3))
    tower = model.towers["image"]
    features = np.asarray(tower.encoder(x), np.float64)                 # [3, 4, 4, 16]
    expected = features.reshape(3, -1) @ np.asarray(tower.linear.kernel[...]) + np.asarray(tower.linear.bias[...])
    np.testing.assert_allclose(model.pooled({"image": x}, ["image"])[0], expected, rtol=1e-5, atol=1e-5)


def test_mean_pooling_ignores_padding_steps():
    model = build_model(towers_config(), seed=0)
    seq = rand(2, (2, 4, 5))
    padded = jnp.concatenate([seq, 100.0 * jnp.ones((2, 2, 5))], axis=1)
    valid = jnp.arange(6)[None, :] < 4
    tower = model.towers["sequence"]
    expected = np.asarray(seq, np.float64).mean(1) @ np.asarray(tower.linear.kernel[...]) + np.asarray(tower.linear.bias[...])
    got = model.pooled({"sequence": padded}, ["sequence"], valid={"sequence": jnp.broadcast_to(valid, (2, 6))})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("projection", ["mlp", "linear"])
def test_each_modality_goes_through_its_own_head(projection):
    model = build_model(towers_config(projection), seed=3)
    inputs = {"image": rand(3, (5, 16, 16, 3)), "sequence": rand(4, (5, 6, 5))}
    pooled, projected = model(inputs)
    assert pooled.shape == (2, 5, 12) and projected.shape == (2, 5, 7)
    for i, name in enumerate(model.modalities):
        if projection == "linear":
            kernel = np.asarray(model.head.kernel[...])[i]
            np.testing.assert_allclose(projected[i], np.asarray(pooled[i]) @ kernel, rtol=1e-5, atol=1e-5)
        else:
            alone = model.heads[name](pooled[i][None])[0]      # the head on this modality's batch alone
            np.testing.assert_allclose(projected[i], alone, rtol=1e-5, atol=1e-5)
    if projection == "linear":      # CLIP's init: N(0, latent^-1/2), bias-free
        assert np.std(np.asarray(model.head.kernel[...])) == pytest.approx(12 ** -0.5, rel=0.25)


@pytest.mark.parametrize("representation", ["pooled", "projected"])
def test_z_of_a_subset_is_its_modalities_vectors_concatenated(representation):
    model = build_model(towers_config("linear", representation), seed=4)
    model.eval()
    inputs = {"image": rand(5, (4, 16, 16, 3)), "sequence": rand(6, (4, 6, 5))}
    pooled, projected = model(inputs)
    per_modality = projected if representation == "projected" else pooled
    z_both, z_seq, z_reversed = model.representations(inputs, [("image", "sequence"), ("sequence",),
                                                               ("sequence", "image")])
    np.testing.assert_allclose(z_both, np.concatenate([per_modality[0], per_modality[1]], -1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(z_seq, per_modality[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(z_reversed, np.concatenate([per_modality[1], per_modality[0]], -1), rtol=1e-5, atol=1e-6)
    assert model.feature_dim(("image", "sequence")) == z_both.shape[-1]


def n_params(module):
    return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


@pytest.mark.parametrize("loss, head_params", [   # per image
    ("cross", 256 * 512),                                                       # CLIP: bias-free linear
    ("cross_self", (256 * 1024 + 1024) + 2 * 1024 + (1024 * 1024 + 1024) + 2 * 1024 + (1024 * 256 + 256)),
])
def test_full_size_towers_have_the_reference_parameter_counts(loss, head_params):
    """torchvision's AlexNet features (2,469,696) + Linear(256*6*6 -> 256) per image, and the head."""
    cfg = trifeatures.get_config(f"loss={loss}")
    model = nnx.eval_shape(lambda: build_model(cfg.model))
    per_tower = 2_469_696 + 256 * 6 * 6 * 256 + 256
    assert n_params(model.towers["image_1"]) == per_tower
    heads = model.head if loss == "cross" else model.heads       # one head per image
    assert n_params(heads) == 2 * head_params
