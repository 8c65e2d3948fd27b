"""FactorCL: its loss and its CLUB critics' loss equal a float64 NumPy transcription of the reference's
formulas (critics scored on tiled pairs, as the reference does); sharded over 8 devices and on one
they agree; the step trains the CLUB critics only by their own loss, `critic_steps` times."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from comm_jax import methods
from comm_jax.mesh import make_mesh, put_batch
from comm_jax.train_step import build_train_step, sharded_objective
from configs import synthetic_info as synthetic_info_config

BATCH = 16


def tiny_config():
    cfg = synthetic_info_config.get_config("cpu,loss=factorcl")
    cfg.batch_size = BATCH
    cfg.model.latent = 8
    cfg.model.head_hidden = 8
    cfg.model.head_out = 8
    for m in cfg.model.modalities:
        cfg.model.encoders[m].encoder_args = dict(hidden=(16,), out=8)
    cfg.loss.critic_hidden = 16
    cfg.loss.critic_steps = 3
    return cfg


def views(seed=0):
    rng = np.random.default_rng(seed)
    return {"views": {v: {m: rng.normal(size=(BATCH, 100)).astype(np.float32) for m in ("x1", "x2")}
                      for v in ("view1", "view2")}}


# ------------------------------------------------------------------ float64 reference transcription

def np_mlp(layers, x):
    for i in range(len(layers)):
        x = x @ np.asarray(layers[i]["kernel"], np.float64) + np.asarray(layers[i]["bias"], np.float64)
        if i < len(layers) - 1:
            x = np.maximum(x, 0)
    return x


def np_logsumexp(a, axis):
    top = a.max(axis=axis, keepdims=True)
    return (top + np.log(np.exp(a - top).sum(axis=axis, keepdims=True))).squeeze(axis)


def np_tiles(x, y):
    n = y.shape[0]
    return np.repeat(x[None], n, axis=0), np.repeat(y[:, None], n, axis=1)   # x_tile[i,j] = x_j; y_tile[i,j] = y_i


def np_infonce_critic(f, x, y):   # InfoNCECritic.forward: -lower_bound
    x_tile, y_tile = np_tiles(x, y)
    t0 = np_mlp(f, np.concatenate([x, y], -1))
    t1 = np_mlp(f, np.concatenate([x_tile, y_tile], -1))
    return -(t0.mean() - (np_logsumexp(t1, axis=1).mean() - np.log(len(y))))


def np_club_critic(f, x, y):      # CLUBInfoNCECritic.forward
    x_tile, y_tile = np_tiles(x, y)
    t0 = np_mlp(f, np.concatenate([y, x], -1))
    t1 = np_mlp(f, np.concatenate([y_tile, x_tile], -1))
    return t0.mean() - t1.mean()


def np_club_learning_loss(f, x, y):
    x_tile, y_tile = np_tiles(x, y)
    t0 = np_mlp(f, np.concatenate([y, x], -1))
    t1 = np_mlp(f, np.concatenate([y_tile, x_tile], -1))
    return -(t0.mean() - (np_logsumexp(t1, axis=1).mean() - np.log(len(y))))


def np_factorcl_ssl(params, e1, e2, a1, a2):
    """FactorCLSSL.forward and .learning_loss on backbone outputs (x_embed, x_aug_embed)."""
    P = {k: v["layers"] for k, v in params["projections"].items()}
    C = {k: v["layers"] for k, v in params["critics"].items()}

    def lin(name, x):
        return np_mlp(P[name], x)

    cat = np.concatenate
    forward = (np_infonce_critic(C["infonce_x1x2"], lin("infonce_x1x2_1", e1), lin("infonce_x1x2_2", e2))
               + np_club_critic(C["club_x1x2"], lin("club_x1x2_1", e1), lin("club_x1x2_2", e2))
               + np_infonce_critic(C["infonce_x1y"], lin("infonce_x1y", e1), lin("infonce_x1y", a1))
               + np_infonce_critic(C["infonce_x2y"], lin("infonce_x2y", e2), lin("infonce_x2y", a2))
               + np_infonce_critic(C["infonce_x1x2_cond"],
                                   cat([lin("infonce_x1x2_cond_1", e1), lin("infonce_x1x2_cond_1", a1)], 1),
                                   cat([lin("infonce_x1x2_cond_2", e2), lin("infonce_x1x2_cond_2", a2)], 1))
               + np_club_critic(C["club_x1x2_cond"],
                                cat([lin("club_x1x2_cond_1", e1), lin("club_x1x2_cond_1", e1)], 1),
                                cat([lin("club_x1x2_cond_2", e2), lin("club_x1x2_cond_2", e2)], 1)))
    learning = (np_club_learning_loss(C["club_x1x2"], lin("club_x1x2_1", e1), lin("club_x1x2_2", e2))
                + np_club_learning_loss(C["club_x1x2_cond"],
                                        cat([lin("club_x1x2_cond_1", e1), lin("club_x1x2_cond_1", e1)], 1),
                                        cat([lin("club_x1x2_cond_2", e2), lin("club_x1x2_cond_2", e2)], 1)))
    return forward, learning


@pytest.fixture(scope="module")
def built_pair():
    cfg = tiny_config()
    return cfg, {n: build_train_step(cfg, make_mesh([("data", n)], devices=jax.devices()[:n])) for n in (1, 8)}


def test_losses_match_the_reference_formulas_and_sharded_equals_single_device(built_pair):
    cfg, built = built_pair
    method = built[1].method
    rng = np.random.default_rng(3)
    embeddings = {v: rng.normal(size=(2, BATCH, 8)).astype(np.float32) for v in ("view1", "view2")}
    params = jax.tree.map(np.asarray, built[1].state.params)
    scalars = jax.tree.map(np.asarray, method.scalars(_extra(built[1])))
    e = {v: embeddings[v].astype(np.float64) for v in embeddings}
    forward, learning = np_factorcl_ssl(jax.tree.map(np.asarray, scalars), e["view1"][0], e["view1"][1],
                                        e["view2"][0], e["view2"][1])
    for n in (1, 8):
        mesh = make_mesh([("data", n)], devices=jax.devices()[:n])
        loss, metrics = jax.jit(sharded_objective(method, mesh))(embeddings, scalars)
        critic, _ = jax.jit(sharded_objective(method, mesh, method.critic_objective))(embeddings, scalars)
        np.testing.assert_allclose(float(loss), forward, rtol=2e-5, atol=2e-5)
        np.testing.assert_allclose(float(critic), learning, rtol=2e-5, atol=2e-5)
    assert params["extra"]["critics"]["club_x1x2"]["layers"][0]["kernel"].shape == (16, 16)


def _extra(built):
    from flax import nnx
    return nnx.merge(built.graphdef, built.state.params, built.state.batch_stats).extra


def test_gradients_sharded_equal_single_device_and_the_step_moves_the_critics(built_pair):
    """Gradients of the loss and of the critic loss agree on 1 and 8 devices (not the parameters
    after Adam, which scales coordinates whose gradient is zero up to rounding to steps of about lr);
    one step moves the CLUB critics and the InfoNCE critics."""
    from flax import nnx
    cfg, built = built_pair
    method = built[1].method
    grads = {}
    for n, b in built.items():
        mesh = make_mesh([("data", n)], devices=jax.devices()[:n])
        batch = put_batch(views(), mesh)["views"]
        main = sharded_objective(method, mesh)
        critic = sharded_objective(method, mesh, method.critic_objective)

        def losses(params):
            trainable = nnx.merge(b.graphdef, params, b.state.batch_stats)
            embeddings = method.embeddings(trainable.model, batch, None)
            scalars = method.scalars(trainable.extra)
            return main(embeddings, scalars)[0], critic(embeddings, scalars)[0]

        grads[n] = [jax.tree.map(np.asarray, jax.jit(jax.grad(lambda p, i=i: losses(p)[i]))(b.state.params))
                    for i in (0, 1)]
    for g1, g8 in zip(grads[1], grads[8]):
        scale = np.linalg.norm(np.concatenate([x.ravel() for x in jax.tree.leaves(g1)]))
        for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g1), jax.tree.leaves(g8)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * scale, err_msg=jax.tree_util.keystr(path))
    state, metrics = built[8].step(jax.tree.map(jnp.copy, built[8].state),
                                   put_batch(views(), make_mesh([("data", 8)])))
    assert np.isfinite(float(metrics["loss"])) and "critic_loss_club_x1x2" in metrics
    before, after = built[8].state.params["extra"]["critics"], state.params["extra"]["critics"]
    for name in ("club_x1x2", "club_x1x2_cond", "infonce_x1x2"):
        assert not np.allclose(before[name]["layers"][0]["kernel"][...], after[name]["layers"][0]["kernel"][...])


def test_critic_updates_follow_adam_on_the_critic_loss_alone():
    """With the main learning rate at zero, the CLUB critics after one step are `critic_steps` Adam
    steps on the critic loss, and nothing else moves."""
    import optax
    from flax import nnx
    cfg = tiny_config()
    cfg.optimizer.lr = 1e-30
    cfg.loss.critic_lr = 1e-2
    mesh = make_mesh([("data", 1)], devices=jax.devices()[:1])
    built = build_train_step(cfg, mesh)
    method = built.method
    batch = put_batch(views(1), mesh)
    start = jax.tree.map(jnp.copy, built.state.params)
    state, _ = built.step(jax.tree.map(jnp.copy, built.state), batch)
    embeddings = jax.jit(lambda p, v: method.embeddings(
        nnx.merge(built.graphdef, p, built.state.batch_stats).model, v, None))(start, batch["views"])
    objective = sharded_objective(method, mesh, method.critic_objective)
    tx = optax.masked(optax.adam(1e-2), method.critic_mask)
    params, opt = start, tx.init(start)
    critic_grad = jax.jit(jax.grad(lambda p: objective(embeddings, method.scalars(
        nnx.merge(built.graphdef, p, built.state.batch_stats).extra))[0]))
    for _ in range(cfg.loss.critic_steps):
        grads = critic_grad(params)
        updates, opt = tx.update(grads, opt, params)
        # optax.masked passes the other leaves' gradients through: those must not move.
        updates = jax.tree.map(lambda u, c: u if c else jnp.zeros_like(u), updates, method.critic_mask(params))
        params = optax.apply_updates(params, updates)
    moved = [jax.tree_util.keystr(path) for (path, a), b, critic in zip(
        jax.tree_util.tree_leaves_with_path(start), jax.tree.leaves(state.params), jax.tree.leaves(method.critic_mask(start)))
        if not critic and not np.allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)]
    assert moved == [], moved
    for (path, want), got in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(state.params)):
        name = jax.tree_util.keystr(path)
        if "['critics']" in name and "[2]['bias']" in name:
            continue   # shift-invariant bounds: a rounding-level gradient that Adam scales to about lr
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-6, err_msg=name)
    assert methods.get("factorcl").name == "factorcl"


@pytest.mark.parametrize("arg, critic_hidden", [("cpu,loss=factorcl", 128), ("loss=factorcl", 512)])
def test_trifeatures_pairs_each_image_as_it_is_with_one_strong_view(arg, critic_hidden):
    """On Trifeatures, view1 is the image normalised as for the probes (FactorCL's x), view2 a strong
    view (its x'); the critics' hidden width is the reference's 512 at latent 256 and 128 at the CPU
    variant's latent 64, and the built critics have it."""
    from flax import nnx
    from comm_jax import batch as batch_lib
    from comm_jax.train_step import device_views
    from configs import trifeatures
    cfg = trifeatures.get_config(arg)
    method = methods.build(cfg)
    spec = batch_lib.batch_spec(cfg, method)
    res = spec.input_shapes["image_1"][0]
    rng = np.random.default_rng(0)
    raw = {m: rng.integers(0, 256, size=(4, res, res, 3), dtype=np.uint8) for m in spec.modalities}
    drawn = jax.jit(device_views(spec))({"raw": raw, "key": rng.integers(0, 2**32, size=(4, 2), dtype=np.uint32)})
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    for m in spec.modalities:
        np.testing.assert_allclose(np.asarray(drawn["views"]["view1"][m]), (raw[m] / 255.0 - mean) / std,
                                   rtol=0, atol=1e-5)
        assert not np.allclose(np.asarray(drawn["views"]["view2"][m]), (raw[m] / 255.0 - mean) / std, atol=0.1)
    extra = nnx.eval_shape(lambda: method.init_extra(nnx.Rngs(0)))
    kernel = extra.critics["infonce_x1x2"].layers[0].kernel
    assert kernel.shape == (2 * cfg.model.latent, critic_hidden)
    assert cfg.loss.critic_steps == 5
