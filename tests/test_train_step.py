"""The sharded train step equals the single-device step (loss, gradients, parameters after a few
steps) for CoMM and every baseline, and never recompiles after the first step; what each method's
step reads and updates is the reference's (CLIP's clamped logit scale, Cross+Self's weak view,
SimCLR's single modality)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from comm_jax import methods
from comm_jax.mesh import make_mesh, put_batch
from comm_jax.train_step import build_train_step, make_loss_fn
from configs import trifeatures
from tests_support import tiny_trifeatures


tiny_config = tiny_trifeatures


def synthetic_batch(cfg, seed=0):
    rng = np.random.default_rng(seed)
    view = lambda: {m: rng.normal(size=(cfg.batch_size, *cfg.model.encoders[m].input_shape)).astype(np.float32)
                    for m in cfg.model.modalities}
    return {"views": {v: view() for v in methods.get(cfg.loss.name).views}}


# Parameters whose true gradient is exactly zero, so that any computed value is rounding noise:
# biases followed by a BatchNorm (directly, or through the linear layer before it: the MLP heads'
# first layers, the fusion's final LayerNorm bias and the towers' pooling bias, which reach a head's
# first BatchNorm through fc1), and the key bias of attention (it shifts all of a query's logits
# equally; the softmax ignores it).
def zero_gradient(cfg):
    if cfg.model.get("projection", "mlp") == "linear":
        return ()
    if cfg.model.architecture == "fusion":
        return ("['model']['head']['fc1']['bias']", "['model']['head']['fc2']['bias']",
                "['model']['fusion']['norm']['bias']")
    return tuple(f"['model']['{part}']['{m}']{leaf}" for m in cfg.model.modalities
                 for part, leaf in (("heads", "['fc1']['bias']"), ("heads", "['fc2']['bias']"),
                                    ("towers", "['linear']['bias']")))


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


def run_steps(cfg, n_devices, batches, metric="loss"):
    mesh = make_mesh([("data", n_devices)], devices=jax.devices()[:n_devices])
    built = build_train_step(cfg, mesh, put_batch(batches[0], mesh))
    state, losses = built.state, []
    for batch in batches:
        state, metrics = built.step(state, put_batch(batch, mesh))
        losses.append(float(metrics[metric]))
    return state, losses, built.step


@pytest.mark.parametrize("loss", ["comm", "cross", "cross_self", "cmc", "simclr"])
def test_sharded_loss_and_grads_match_single_device(loss):
    cfg = tiny_config(loss)
    batch = synthetic_batch(cfg)
    results = []
    for n in (1, 8):
        mesh = make_mesh([("data", n)], devices=jax.devices()[:n])
        built = build_train_step(cfg, mesh)
        loss_fn = make_loss_fn(built.graphdef, built.method, mesh)
        value_and_grad = jax.jit(jax.value_and_grad(lambda v, b: loss_fn(v, b, None)[0]))
        value, (grads, _) = value_and_grad((built.state.params, built.state.batch_stats),
                                           put_batch(batch, mesh)["views"])
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
    mask = decay_mask(build_train_step(cfg, mesh).state.params)
    flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(mask)}
    assert any(v for k, v in flat.items() if "kernel" in k)
    assert not any(v for k, v in flat.items() if "bias" in k or "scale" in k or "cls" in k)


def test_step_drawing_views_on_the_devices_matches_across_meshes_and_compiles_once():
    cfg = tiny_config("comm")
    cfg.data.augment_on_device = True
    ops = "random_resized_crop(16, scale=(0.2, 1.0))|color_jitter(p=0.8)|grayscale(p=0.2)|flip_lr|normalize"
    cfg.data.views = {v: {m: ops for m in cfg.model.modalities} for v in ("view1", "view2")}
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


def test_clip_logit_scale_is_clamped_before_the_update_and_the_loss_sees_it_unclamped():
    """As the reference's training_step: the loss uses exp of the parameter as it is, then the
    parameter is clamped to [0, ln 100] and the optimizer's update is added to the clamped value."""
    cfg = tiny_config("cross")
    cfg.optimizer.lr = 1e-12
    mesh = make_mesh([("data", 1)], devices=jax.devices()[:1])
    batch = put_batch(synthetic_batch(cfg), mesh)
    built = build_train_step(cfg, mesh, batch)
    for start, expected in ((5.0, np.log(100.0)), (-0.5, 0.0), (2.0, 2.0)):
        params = jax.tree_util.tree_map_with_path(
            lambda path, leaf: jnp.full_like(leaf, start) if "log_logit_scale" in jax.tree_util.keystr(path) else leaf,
            built.state.params)
        state, metrics = built.step(built.state.replace(params=params), batch)
        np.testing.assert_allclose(float(metrics["logit_scale"]), np.exp(start), rtol=1e-6)
        np.testing.assert_allclose(float(state.params["extra"]["log_logit_scale"][...]), expected, atol=1e-6)
        built = build_train_step(cfg, mesh, batch)      # the step donated the state


def test_cross_self_cross_term_reads_the_weak_view_and_its_self_terms_the_strong_views():
    cfg = tiny_config("cross_self")
    mesh = make_mesh([("data", 1)], devices=jax.devices()[:1])
    base = synthetic_batch(cfg, 0)
    other = synthetic_batch(cfg, 1)["views"]

    def metrics_with(**swap):
        batch = {"views": dict(base["views"], **{v: other[v] for v in swap})}
        built = build_train_step(cfg, mesh)
        loss_fn = make_loss_fn(built.graphdef, built.method, mesh)
        _, (metrics, _) = jax.jit(loss_fn)((built.state.params, built.state.batch_stats),
                                           put_batch(batch, mesh)["views"], None)
        return {k: float(v) for k, v in metrics.items()}

    first, strong_changed, weak_changed = metrics_with(), metrics_with(view1=1), metrics_with(weak=1)
    assert strong_changed["cross_loss"] == first["cross_loss"]
    assert strong_changed["self_loss"] != first["self_loss"]
    assert weak_changed["cross_loss"] != first["cross_loss"]
    assert weak_changed["self_loss"] == first["self_loss"]


def test_simclr_trains_one_modality_and_cross_needs_two():
    cfg = trifeatures.get_config("cpu,loss=simclr")
    assert tuple(cfg.model.modalities) == ("image_1",) and set(cfg.data.modalities) == {"image_1"}
    bad = trifeatures.get_config("cpu,loss=cross")
    bad.model.modalities = ("image_1",)
    bad.data.modalities = {"image_1": "image_1"}
    with pytest.raises(ValueError, match="needs at least 2 modalities"):
        methods.build(bad)
