"""Model properties: masking == dropping tokens, padding honoured, encoders run once per view,
reference shapes/parameter counts, CLIP-style init, per-mask BatchNorm, the linear projection,
precision, n = 2 and 3."""

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import pytest
from flax import nnx

from comm_jax.models import FusionTransformer, build_model, comm_subsets
from comm_jax.models.adapters import TabularAdapter, sincos_2d
from comm_jax.models.head import GroupedBatchNorm
from comm_jax.models.image_encoders import AlexNetFeatures, ResNet18Trunk, SmallCNN
from comm_jax.models.sequence_encoders import GRUEncoder
from comm_jax.models.transformer import ResidualBlock, TransformerStack
from configs import trifeatures


def rand(key, shape):
    return jax.random.normal(jax.random.key(key), shape)


def n_params(module):
    return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def model_config(n_mod=2, precision="float32", encoder="small_cnn"):
    encoders = {f"m{i}": dict(encoder=encoder, input_shape=(16, 16, 3), encoder_args=dict(channels=(8, 16)))
                for i in range(n_mod)}
    return mlc.ConfigDict(dict(modalities=tuple(encoders), encoders=encoders, width=32, depth=2, heads=4,
                               head_hidden=64, head_out=16, precision=precision))


def test_single_modality_mask_equals_pass_on_shortened_sequence():
    fusion = FusionTransformer(32, 2, 4, rngs=nnx.Rngs(0))
    tokens = [rand(1, (3, 5, 32)), rand(2, (3, 7, 32)), rand(3, (3, 5, 32))]
    out = fusion(tokens, subsets=comm_subsets(3) + [(0, 2)])
    for i in range(3):
        np.testing.assert_allclose(out[i], fusion([tokens[i]])[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[3], fusion(tokens)[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[4], fusion([tokens[0], tokens[2]])[0], rtol=1e-5, atol=1e-6)


def test_key_padding_equals_dropping_padded_tokens():
    fusion = FusionTransformer(32, 2, 4, rngs=nnx.Rngs(0))
    lengths = [2, 6, 4]
    tokens = [rand(4, (3, 6, 32)), rand(5, (3, 3, 32))]
    valid = [jnp.arange(6)[None] < jnp.asarray(lengths)[:, None], None]
    out = fusion(tokens, valid)[0]
    garbage = jnp.where(valid[0][..., None], tokens[0], 1e3)   # padding content must not matter
    np.testing.assert_allclose(fusion([garbage, tokens[1]], valid)[0], out, rtol=1e-5, atol=1e-5)
    for b, length in enumerate(lengths):
        short = fusion([tokens[0][b:b + 1, :length], tokens[1][b:b + 1]])[0, 0]
        np.testing.assert_allclose(out[b], short, rtol=1e-5, atol=1e-5)


def np_block(p, x):
    """One pre-LN residual block in NumPy, from the textbook definition (all query tokens)."""
    def ln(v, s, b):
        m, var = v.mean(-1, keepdims=True), v.var(-1, keepdims=True)
        return (v - m) / np.sqrt(var + 1e-6) * s + b
    heads, (t, w) = 4, x.shape
    h = ln(x, p["ln_1"]["scale"], p["ln_1"]["bias"])
    qkv = (h @ p["attn"]["qkv"]["kernel"] + p["attn"]["qkv"]["bias"]).reshape(t, 3, heads, w // heads)
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
    att = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(w // heads)
    att = np.exp(att - att.max(-1, keepdims=True))
    att /= att.sum(-1, keepdims=True)
    o = np.einsum("hqk,khd->qhd", att, v).reshape(t, w)
    x = x + o @ p["attn"]["out"]["kernel"] + p["attn"]["out"]["bias"]
    h = ln(x, p["ln_2"]["scale"], p["ln_2"]["bias"]) @ p["fc"]["kernel"] + p["fc"]["bias"]
    h = h / (1 + np.exp(-1.702 * h))
    return x + h @ p["proj"]["kernel"] + p["proj"]["bias"]


def test_block_matches_numpy_and_cls_only_is_exact():
    block = ResidualBlock(32, 4, depth=1, rngs=nnx.Rngs(1))
    params = jax.tree.map(np.asarray, nnx.state(block, nnx.Param).to_pure_dict())
    x = np.asarray(rand(6, (9, 32)), np.float64)
    np.testing.assert_allclose(block(jnp.asarray(x, jnp.float32)), np_block(params, x), rtol=1e-4, atol=1e-4)
    stack = TransformerStack(32, 3, 4, rngs=nnx.Rngs(2))
    full = stack(jnp.asarray(x, jnp.float32))[0]
    np.testing.assert_allclose(stack(jnp.asarray(x, jnp.float32), cls_only=True)[0], full, rtol=1e-5, atol=1e-5)


def test_clip_style_init():
    width, depth = 256, 4
    block = TransformerStack(width, depth, 8, rngs=nnx.Rngs(3)).blocks[0]
    expect = {"qkv": width ** -0.5, "out": width ** -0.5 * (2 * depth) ** -0.5,
              "fc": (2 * width) ** -0.5, "proj": width ** -0.5 * (2 * depth) ** -0.5}
    got = {"qkv": block.attn.qkv.kernel[...].std(), "out": block.attn.out.kernel[...].std(),
           "fc": block.fc.kernel[...].std(), "proj": block.proj.kernel[...].std()}
    for k in expect:
        assert abs(float(got[k]) / expect[k] - 1) < 0.05, (k, got[k], expect[k])


def test_reference_encoder_shapes_and_parameter_counts():
    # torchvision: alexnet().features has 2,469,696 parameters; resnet18 has 11,689,512 of which fc 513,000.
    alex = AlexNetFeatures(rngs=nnx.Rngs(0))
    assert n_params(alex) == 2_469_696
    assert jax.eval_shape(alex, jnp.zeros((2, 224, 224, 3))).shape == (2, 6, 6, 256)
    resnet = ResNet18Trunk(rngs=nnx.Rngs(0))
    resnet.eval()   # running statistics: shape inference must not update batch stats
    assert n_params(resnet) == 11_689_512 - 513_000
    assert jax.eval_shape(resnet, jnp.zeros((1, 224, 224, 3))).shape == (1, 7, 7, 512)


@pytest.mark.parametrize("res", [32, 64, 128])
def test_trifeatures_cpu_cnn_gives_a_4x4_grid_at_every_size(res):
    """The CPU variant adds a CNN stage per doubling of the image side, so the fusion sees 4 x 4 tokens."""
    encoder = trifeatures.get_config(f"cpu,res={res}").model.encoders["image_1"]
    assert tuple(encoder.input_shape) == (res, res, 3)
    cnn = SmallCNN(**encoder.encoder_args, rngs=nnx.Rngs(0))
    assert jax.eval_shape(cnn, jnp.zeros((1, res, res, 3))).shape[1:3] == (4, 4)


def test_trifeatures_config_names_an_unsupported_resolution():
    with pytest.raises(ValueError, match="res=96 must be one of"):
        trifeatures.get_config("cpu,res=96")


def test_sincos_and_tabular_adapter_formulas():
    emb = sincos_2d(3, 5, 8)
    omega = 1.0 / 10000 ** (np.arange(2) / 2)
    r, c = 2, 4   # position (row 2, column 4) is token 2 * 5 + 4
    np.testing.assert_allclose(emb[14], np.concatenate([np.sin(r * omega), np.cos(r * omega),
                                                        np.sin(c * omega), np.cos(c * omega)]), rtol=1e-6)
    adapter = TabularAdapter(4, 8, rngs=nnx.Rngs(0))
    x = rand(7, (3, 4))
    expect = np.asarray(x)[..., None] * np.asarray(adapter.weight[...]) + np.asarray(adapter.bias[...])
    np.testing.assert_allclose(adapter(x)[0], expect, rtol=1e-6)


def test_grouped_batchnorm_normalises_each_mask_separately():
    bn = GroupedBatchNorm(6, rngs=nnx.Rngs(0))
    x = np.asarray(rand(8, (3, 10, 6))) * np.array([1.0, 5.0, 0.1])[:, None, None] + 3.0
    y = np.asarray(bn(jnp.asarray(x)))
    ref = (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(bn.mean[...], 0.1 * x.mean(1).mean(0), rtol=1e-5)


def test_gru_skips_padding_like_packed_sequences():
    gru = GRUEncoder(5, 8, rngs=nnx.Rngs(0))
    x = rand(9, (2, 6, 5))
    valid = jnp.arange(6)[None] < jnp.asarray([[3], [6]])
    out = gru(x.at[0, 3:].set(99.0), valid)
    np.testing.assert_allclose(out[0, :3], gru(x[:1, :3])[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[1], gru(x[1:])[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n_mod", [2, 3])
def test_model_masks_and_embed_agree(n_mod):
    cfg = model_config(n_mod)
    model = build_model(cfg)
    model.eval()
    x = {name: rand(10 + i, (4, 16, 16, 3)) for i, name in enumerate(cfg.modalities)}
    z, proj = jax.jit(model)(x)
    assert z.shape == (n_mod + 1, 4, 32) and proj.shape == (n_mod + 1, 4, 16)
    embed = jax.jit(model.embed, static_argnums=1)
    for i, name in enumerate(cfg.modalities):
        # the masked pass equals a forward pass given that modality's input alone
        np.testing.assert_allclose(z[i], embed({name: x[name]}, (name,)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(z[-1], embed(x, None), rtol=1e-5, atol=1e-6)


def test_each_encoder_runs_once_per_view():
    cfg = model_config(3)
    model = build_model(cfg)
    model.eval()   # running statistics: tracing must not update batch stats
    x = {name: jnp.zeros((2, 16, 16, 3)) for name in cfg.modalities}
    convs = lambda f: str(jax.make_jaxpr(f)(x)).count("conv_general_dilated")
    assert convs(lambda inp: model(inp)[0]) == convs(lambda inp: model.embed(inp)) == 3 * 2


def test_bfloat16_precision_keeps_float32_params_and_tracks_float32():
    cfg32, cfg16 = model_config(2), model_config(2, precision="bfloat16")
    m32, m16 = build_model(cfg32, seed=1), build_model(cfg16, seed=1)
    assert {v.dtype for v in jax.tree.leaves(nnx.state(m16, nnx.Param))} == {jnp.dtype(jnp.float32)}
    x = {name: rand(20 + i, (4, 16, 16, 3)) for i, name in enumerate(cfg32.modalities)}
    z32, z16 = m32(x)[0], m16(x)[0]
    assert z16.dtype == jnp.bfloat16
    rel = jnp.linalg.norm(z16.astype(jnp.float32) - z32) / jnp.linalg.norm(z32)
    assert float(rel) < 3e-2


def test_bad_model_config_names_the_key():
    cfg = model_config(2)
    cfg.encoders.m0.encoder = "vgg"
    with pytest.raises(ValueError, match="model.encoders.m0.encoder"):
        build_model(cfg)
    cfg = model_config(2)
    cfg.heads = 5
    with pytest.raises(ValueError, match="divisible"):
        build_model(cfg)
    cfg = model_config(2)
    cfg.projection = "mlp3"
    with pytest.raises(ValueError, match="model.projection"):
        build_model(cfg)


def test_linear_projection_maps_each_mask_by_its_own_bias_free_matrix():
    cfg = model_config(2)
    cfg.projection = "linear"
    model = build_model(cfg, seed=3)
    x = {name: rand(30 + i, (5, 16, 16, 3)) for i, name in enumerate(cfg.modalities)}
    z, proj = model(x)
    kernel = np.asarray(model.head.kernel[...])
    assert kernel.shape == (3, 32, 16)      # each modality alone, then both
    assert n_params(model.head) == 3 * 32 * 16
    z = np.asarray(z, np.float64)
    for g in range(3):
        np.testing.assert_allclose(proj[g], z[g] @ kernel[g], rtol=1e-5, atol=1e-5)
    # distinct maps per mask, drawn as CLIP's N(0, width^-1/2)
    assert not np.allclose(kernel[0], kernel[1])
    assert np.std(kernel) == pytest.approx(32 ** -0.5, rel=0.1)
    # linear and bias-free: the projection of a sum is the sum of the projections
    lin = model.head
    a, b = rand(40, (3, 4, 32)), rand(41, (3, 4, 32))
    np.testing.assert_allclose(lin(a + b), lin(a) + lin(b), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(lin(jnp.zeros((3, 4, 32))), 0.0)
