"""The sharded train step equals the single-device step (loss, gradients, parameters after a few
steps) for CoMM and every baseline, and never recompiles after the first step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from comm_jax.mesh import make_mesh
from comm_jax.train_state import create_train_state
from comm_jax.train_step import make_loss_fn, make_train_step, put_batch
from configs import trifeatures


def tiny_config(loss="comm"):
    cfg = trifeatures.get_config(f"cpu,loss={loss}")
    cfg.data.augment_on_device = False      # the step takes the two views as given
    cfg.batch_size = 16
    cfg.model.width, cfg.model.heads, cfg.model.head_hidden, cfg.model.head_out = 32, 4, 32, 16
    for name in cfg.model.modalities:
        cfg.model.encoders[name].input_shape = (16, 16, 3)
        cfg.model.encoders[name].encoder_args.channels = (8, 16)
    return cfg


def synthetic_batch(cfg, seed=0):
    rng = np.random.default_rng(seed)
    view = lambda: {m: rng.normal(size=(cfg.batch_size, *cfg.model.encoders[m].input_shape)).astype(np.float32)
                    for m in cfg.model.modalities}
    return {"view1": view(), "view2": view()}


# Parameters whose true gradient is exactly zero, so that any computed value is rounding noise:
# biases followed by a BatchNorm (directly, or through the linear layer before it: the MLP head's
# first layers, and the fusion's final LayerNorm bias, which reaches the head's first BatchNorm
# through fc1; under a linear projection it reaches the loss), and the key bias of attention (it
# shifts all of a query's logits equally; the softmax ignores it).
def zero_gradient(cfg):
    if cfg.model.get("projection", "mlp") == "linear":
        return ()
    return ("['head']['fc1']['bias']", "['head']['fc2']['bias']", "['fusion']['norm']['bias']")


def signal_leaves(tree, zero=()):
    leaves = []
    for k, v in jax.tree_util.tree_leaves_with_path(tree):
        name, v = jax.tree_util.keystr(k), np.asarray(v)
        if zero and name.startswith(zero):
            continue
        if "['qkv']['bias']" in name:   # keep the query and value thirds
            third = v.shape[-1] // 3
            v = np.concatenate([v[:third], v[2 * third:]])
        leaves.append(v)
    return leaves


def assert_close_by_norm(actual, expected, tol):
    """||actual - expected|| <= tol * ||expected||: float tolerance robust to near-zero entries."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    err = np.linalg.norm(actual - expected)
    assert err <= tol * max(np.linalg.norm(expected), 1e-12), (err, np.linalg.norm(expected))


def run_steps(cfg, n_devices, batches):
    mesh = make_mesh([("data", n_devices)], devices=jax.devices()[:n_devices])
    graphdef, state, shardings, tx, schedule = create_train_state(cfg, mesh)
    step = make_train_step(graphdef, cfg, mesh, tx, schedule, shardings, put_batch(batches[0], mesh))
    losses = []
    for batch in batches:
        state, metrics = step(state, put_batch(batch, mesh))
        losses.append(float(metrics["loss"]))
    return state, losses, step


@pytest.mark.parametrize("loss", ["comm", "cross", "cross_self", "cmc", "simclr"])
def test_sharded_loss_and_grads_match_single_device(loss):
    cfg = tiny_config(loss)
    batch = synthetic_batch(cfg)
    results = []
    for n in (1, 8):
        mesh = make_mesh([("data", n)], devices=jax.devices()[:n])
        graphdef, state, *_ = create_train_state(cfg, mesh)
        loss_fn = make_loss_fn(graphdef, cfg.loss, mesh)
        value_and_grad = jax.jit(jax.value_and_grad(lambda v, b: loss_fn(v, b)[0]))
        value, (grads, _) = value_and_grad((state.params, state.batch_stats), put_batch(batch, mesh))
        results.append((float(value), jax.tree.map(np.asarray, grads)))
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-5)
    zero = zero_gradient(cfg)
    flat1, flat8 = signal_leaves(results[0][1], zero), signal_leaves(results[1][1], zero)
    assert len(flat1) == len(flat8) > 0
    whole = np.linalg.norm(np.concatenate([g.ravel() for g in flat1]))
    for k, g in jax.tree_util.tree_leaves_with_path(results[0][1]):
        if zero and jax.tree_util.keystr(k).startswith(zero):
            assert np.linalg.norm(g) < 1e-5 * whole, jax.tree_util.keystr(k)
    for g1, g8 in zip(flat1, flat8):
        assert_close_by_norm(g8, g1, 1e-4)


def test_training_on_1_and_8_devices_gives_same_parameters_and_no_recompiles():
    cfg = tiny_config("comm")
    batches = [synthetic_batch(cfg, seed) for seed in range(3)]
    state1, losses1, _ = run_steps(cfg, 1, batches)
    state8, losses8, step8 = run_steps(cfg, 8, batches)
    np.testing.assert_allclose(losses8, losses1, rtol=1e-5)
    # Adam turns the rounding noise of exactly-zero gradients into +-lr steps: those leaves are
    # left out; every other parameter must agree.
    zero = zero_gradient(cfg)
    for p1, p8 in zip(signal_leaves(state1.params, zero), signal_leaves(state8.params, zero)):
        assert_close_by_norm(p8, p1, 5e-4)
    assert int(state8.step) == 3
    assert step8._cache_size() == 1      # one compiled executable for all steps


def test_weight_decay_skips_biases_norms_and_cls():
    from comm_jax.train_state import decay_mask
    cfg = tiny_config("cross")
    mesh = make_mesh([("data", 1)], devices=jax.devices()[:1])
    _, state, *_ = create_train_state(cfg, mesh)
    mask = decay_mask(state.params)
    flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(mask)}
    assert any(v for k, v in flat.items() if "kernel" in k)
    assert not any(v for k, v in flat.items() if "bias" in k or "scale" in k or "cls" in k)


def test_step_drawing_views_on_the_devices_matches_across_meshes_and_compiles_once():
    cfg = tiny_config("comm")
    cfg.data.augment_on_device = True
    for m in cfg.model.modalities:
        cfg.data.augment[m] = "random_resized_crop(16, scale=(0.2, 1.0))|color_jitter(p=0.8)|grayscale(p=0.2)|flip_lr|normalize"
    rng = np.random.default_rng(0)
    batches = [{"raw": {m: rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8) for m in cfg.model.modalities},
                "key": rng.integers(0, 2 ** 32, (16, 2), dtype=np.uint32)} for _ in range(3)]
    _, losses1, _ = run_steps(cfg, 1, batches)
    state8, losses8, step8 = run_steps(cfg, 8, batches)
    # The views agree to float rounding (test_device_augment); Adam amplifies it after the first step.
    np.testing.assert_allclose(losses8[0], losses1[0], rtol=1e-5)
    np.testing.assert_allclose(losses8, losses1, rtol=1e-3)
    assert step8._cache_size() == 1
    reshuffled = dict(batches[0], key=batches[0]["key"][::-1].copy())     # other keys, other views
    _, other, _ = run_steps(cfg, 1, [reshuffled])
    assert abs(other[0] - losses1[0]) > 1e-3
