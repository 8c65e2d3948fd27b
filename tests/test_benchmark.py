"""The benchmark's yardsticks: the analytic FLOP count agrees with XLA's cost analysis, and the
reference-style loss it races against computes the same loss and gradients as the fused one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from comm_jax import flops, losses
from comm_jax.bench import loss as loss_bench
from comm_jax.bench.train_step import bench_config
from comm_jax.mesh import make_mesh
from comm_jax.models import build_model
from configs import fusion_heavy, trifeatures

# Analytic counts cover convs, matmuls and attention only; XLA also counts elementwise work.
FORWARD_TOLERANCE = 0.05
TRAIN_STEP_TOLERANCE = 0.15
HEAD_TOLERANCE = 0.15     # a difference of two totals, each within FORWARD_TOLERANCE: a looser bound


def tiny_configs():
    cnn = trifeatures.get_config("cpu")
    cnn.model.width, cnn.model.heads, cnn.model.head_hidden, cnn.model.head_out = 64, 2, 64, 32
    for spec in cnn.model.encoders.values():
        spec["encoder_args"] = dict(channels=(16, 32))
        spec["input_shape"] = (16, 16, 3)
    tokens = fusion_heavy.get_config("cpu,tokens=6")
    tokens.model.depth = 2
    linear = tokens.copy_and_resolve_references()
    linear.model.projection = "linear"
    towers = trifeatures.get_config("cpu,loss=cross_self")
    towers.model.latent, towers.model.head_hidden, towers.model.head_out = 32, 64, 32
    for spec in towers.model.encoders.values():
        spec["encoder_args"] = dict(channels=(16, 32))
        spec["input_shape"] = (16, 16, 3)
    return {"small_cnn": cnn, "fusion_tokens": tokens, "linear_projection": linear, "towers": towers}


def compiled_forward_flops(cfg, batch: int) -> float:
    """XLA's FLOP count of the model's forward pass (the projected embeddings) for `batch` examples."""
    graphdef, state = nnx.split(build_model(cfg.model))
    inputs = {m: jnp.zeros((batch, *cfg.model.encoders[m].input_shape)) for m in cfg.model.modalities}
    forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)[1]).lower(state, inputs).compile()   # projected
    return flops.compiled_flops(forward)


@pytest.mark.parametrize("name", ["small_cnn", "fusion_tokens", "linear_projection", "towers"])
def test_analytic_forward_flops_match_cost_analysis(name):
    cfg = tiny_configs()[name]
    analytic = flops.model_forward(cfg.model, 4)["total"]
    assert analytic == pytest.approx(compiled_forward_flops(cfg, 4), rel=FORWARD_TOLERANCE)


def test_analytic_head_flops_follow_the_projection():
    """The head is a few % of the total, within the tolerance above: compare what switching the MLP head
    for the linear projection removes, analytically and as XLA counts it."""
    configs = tiny_configs()
    analytic, compiled = {}, {}
    for name in ("fusion_tokens", "linear_projection"):
        cfg = configs[name]
        analytic[name], compiled[name] = flops.model_forward(cfg.model, 4)["total"], compiled_forward_flops(cfg, 4)
    removed = analytic["fusion_tokens"] - analytic["linear_projection"]
    assert removed > 0
    assert removed == pytest.approx(compiled["fusion_tokens"] - compiled["linear_projection"], rel=HEAD_TOLERANCE)


@pytest.mark.parametrize("name", ["fusion_tokens", "towers"])
def test_analytic_train_step_flops_match_cost_analysis(name):
    cfg = tiny_configs()[name]
    cfg.batch_size = 8
    cfg.data.augment_on_device = False
    row = bench_config(cfg, make_mesh([("data", -1)], jax.devices()[:1]), steps=1, warmup=0, peaks={},
                       compile_only=True)
    assert row["analytic_over_compiled"] == pytest.approx(1.0, abs=TRAIN_STEP_TOLERANCE)


def test_reference_style_loss_matches_fused_loss_and_gradients():
    mesh = make_mesh([("data", -1)], jax.devices()[:4])
    v1, v2 = loss_bench.embeddings(mesh, n_emb=3, batch=32, dim=16)
    fns = loss_bench.objectives(mesh, temperature=0.1)
    (fused, fused_grads) = loss_bench.value_and_grad_step(fns["fused"], mesh)(v1, v2)
    (reference, reference_grads) = loss_bench.value_and_grad_step(fns["reference"], mesh)(v1, v2)
    single, _ = losses.comm_loss(np.asarray(v1), np.asarray(v2), 0.1)
    np.testing.assert_allclose(reference, fused, rtol=1e-5)
    np.testing.assert_allclose(reference, single, rtol=1e-5)
    for got, want in zip(reference_grads, fused_grads):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-6)
