"""Each loss against a NumPy implementation written from its formula (the 2B x 2B similarity
matrix with the diagonal removed), gradients, permutation invariance, and sharded == single-device."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from comm_jax import losses


def np_normalize(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def np_nt_xent(a, b, tau):
    """SimCLR NT-Xent: Z = [a; b], S = Z Z^T / tau, S_ii removed, positive of row i is row i +- B."""
    z = np_normalize(np.concatenate([a, b]).astype(np.float64))
    n = len(a)
    s = z @ z.T / tau
    np.fill_diagonal(s, -np.inf)
    pos = np.concatenate([np.arange(n, 2 * n), np.arange(n)])
    logz = np.log(np.exp(s - s.max(1, keepdims=True)).sum(1)) + s.max(1)
    loss = np.mean(logz - s[np.arange(2 * n), pos])
    acc = 100 * np.mean(np.argmax(s[:n, n:], axis=1) == np.arange(n))
    return loss, acc


def np_comm(v1, v2, tau, weights=None):
    n_emb = len(v1)
    terms = [(np_nt_xent(v1[e], v2[-1], tau)[0] + np_nt_xent(v2[e], v1[-1], tau)[0]) / 2 for e in range(n_emb)]
    accs = [(np_nt_xent(v1[e], v2[-1], tau)[1] + np_nt_xent(v2[e], v1[-1], tau)[1]) / 2 for e in range(n_emb)]
    w = np.ones(n_emb) if weights is None else np.asarray(weights)
    return np.mean(np.asarray(terms) * w), terms, np.mean(accs)


def np_clip(z, scale):
    """CLIP over the unimodal embeddings `z` `[n, B, D]` of one view, mean over modality pairs."""
    terms = []
    z = np_normalize(z.astype(np.float64))
    for i, j in itertools.combinations(range(len(z)), 2):
        logits = scale * z[i] @ z[j].T
        ce = lambda l: np.mean(np.log(np.exp(l).sum(1)) - np.diag(l))
        terms.append((ce(logits) + ce(logits.T)) / 2)
    return np.mean(terms)


def views(key, n_emb, batch, dim, scale=1.0):
    k1, k2, k3 = jax.random.split(jax.random.key(key), 3)
    base = jax.random.normal(k1, (n_emb, batch, dim))
    return (np.asarray(base + scale * jax.random.normal(k2, base.shape)),
            np.asarray(base + scale * jax.random.normal(k3, base.shape)))


@pytest.mark.parametrize("batch,dim,tau", [(4, 3, 0.1), (16, 32, 0.5), (33, 8, 0.07)])
def test_nt_xent_matches_numpy(batch, dim, tau):
    a, b = views(batch, 2, batch, dim)
    loss, acc = losses.nt_xent(a[0], b[0], tau)
    ref_loss, ref_acc = np_nt_xent(a[0], b[0], tau)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    np.testing.assert_allclose(acc, ref_acc, atol=1e-4)


@pytest.mark.parametrize("n_mod,batch,dim,tau", [(2, 8, 16, 0.1), (3, 5, 4, 0.3), (2, 32, 64, 0.1), (4, 6, 8, 1.0)])
def test_comm_loss_matches_numpy(n_mod, batch, dim, tau):
    v1, v2 = views(n_mod * 7 + batch, n_mod + 1, batch, dim)
    loss, metrics = losses.comm_loss(v1, v2, tau)
    ref, ref_terms, ref_acc = np_comm(v1, v2, tau)
    np.testing.assert_allclose(loss, ref, rtol=1e-5)
    for e, t in enumerate(ref_terms):
        np.testing.assert_allclose(metrics[f"ssl_loss_{e}"], t, rtol=1e-5)
    np.testing.assert_allclose(metrics["ssl_acc"], ref_acc, atol=1e-4)
    # Formed a column chunk at a time: the same loss, terms and accuracy as the transcription.
    chunk = batch // 2 if batch % 2 == 0 else 1
    loss, metrics = losses.comm_loss_blockwise(v1, v2, tau, chunk=chunk)
    np.testing.assert_allclose(loss, ref, rtol=1e-5)
    for e, t in enumerate(ref_terms):
        np.testing.assert_allclose(metrics[f"ssl_loss_{e}"], t, rtol=1e-5)
    np.testing.assert_allclose(metrics["ssl_acc"], ref_acc, atol=1e-4)


def test_comm_loss_blockwise_weights_gradients_and_chunk_check():
    v1, v2 = (jnp.asarray(v) for v in views(4, 3, 12, 8))
    w = (0.5, 2.0, 1.0)
    whole = jax.value_and_grad(lambda a, b: losses.comm_loss(a, b, 0.2, w)[0], argnums=(0, 1))(v1, v2)
    blocks = jax.value_and_grad(lambda a, b: losses.comm_loss_blockwise(a, b, 0.2, w, chunk=4)[0], argnums=(0, 1))(v1, v2)
    np.testing.assert_allclose(blocks[0], whole[0], rtol=1e-6)
    for gb, gw in zip(blocks[1], whole[1]):
        np.testing.assert_allclose(gb, gw, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="not a multiple of chunk=5"):
        losses.comm_loss_blockwise(v1, v2, chunk=5)


def test_comm_loss_weights():
    v1, v2 = views(3, 3, 8, 16)
    w = [0.5, 2.0, 1.0]
    np.testing.assert_allclose(losses.comm_loss(v1, v2, 0.2, weights=w)[0], np_comm(v1, v2, 0.2, w)[0], rtol=1e-5)
    with pytest.raises(ValueError, match="weights"):
        losses.comm_loss(v1, v2, 0.2, weights=[1.0, 1.0])


def test_comm_loss_perfect_alignment_is_low_and_accurate():
    v1, _ = views(4, 3, 16, 64, scale=0.0)
    same = np.broadcast_to(v1[-1], v1.shape)   # both views and every mask give the same embedding
    loss, metrics = losses.comm_loss(same, same, 0.1)
    assert float(metrics["ssl_acc"]) == 100.0
    random_loss = losses.comm_loss(*views(5, 3, 16, 64, scale=10.0), 0.1)[0]
    assert float(loss) < float(random_loss)


def test_baselines_match_numpy():
    weak, v1, v2 = views(6, 3, 10, 12) + views(16, 3, 10, 12)[:1]   # 3 modalities, no fused entry
    tau = 0.2
    pairs = list(itertools.combinations(range(3), 2))
    cmc_ref = np.mean([np_nt_xent(weak[i], weak[j], tau)[0] for i, j in pairs])
    np.testing.assert_allclose(losses.cmc_loss(weak, tau)[0], cmc_ref, rtol=1e-5)
    self_ref = np.mean([np_nt_xent(v1[i], v2[i], tau)[0] for i in range(3)])
    np.testing.assert_allclose(losses.cross_self_loss(weak, v1, v2, tau, ssl_scale=0.7)[0],
                               cmc_ref + 0.7 * self_ref, rtol=1e-5)
    np.testing.assert_allclose(losses.simclr_loss(v1[1], v2[1], tau)[0], np_nt_xent(v1[1], v2[1], tau)[0], rtol=1e-5)
    for scale in (1 / 0.07, 100.0, 500.0):       # the loss takes the scale as given (clamping is the method's)
        np.testing.assert_allclose(losses.clip_loss(weak, jnp.log(scale))[0], np_clip(weak, scale), rtol=1e-5)


BASELINES = {
    "cmc": lambda w, a, b, axis_name=None: losses.cmc_loss(w, axis_name=axis_name),
    "cross_self": lambda w, a, b, axis_name=None: losses.cross_self_loss(w, a, b, axis_name=axis_name),
    "clip": lambda w, a, b, axis_name=None: losses.clip_loss(w, jnp.log(1 / 0.07), axis_name=axis_name),
}


def test_losses_invariant_to_common_batch_permutation():
    v1, v2 = views(7, 3, 12, 8)
    perm = np.random.default_rng(0).permutation(12)
    np.testing.assert_allclose(losses.comm_loss(v1, v2)[0], losses.comm_loss(v1[:, perm], v2[:, perm])[0], rtol=1e-5)
    for fn in BASELINES.values():
        np.testing.assert_allclose(fn(v1, v2, v1)[0], fn(v1[:, perm], v2[:, perm], v1[:, perm])[0], rtol=1e-5)


def test_gradients_finite_and_nonzero():
    v1, v2 = views(8, 3, 8, 16)
    fns = [losses.comm_loss] + [lambda a, b, fn=fn: fn(a, b, b) for fn in BASELINES.values()]
    for fn in fns:
        g1, g2 = jax.grad(lambda a, b: fn(a, b)[0], argnums=(0, 1))(jnp.asarray(v1), jnp.asarray(v2))
        assert bool(jnp.all(jnp.isfinite(g1)) and jnp.all(jnp.isfinite(g2)))
        assert float(jnp.abs(g1).sum()) > 0


def _sharded(fn, mesh):
    spec = P(None, "data", None)
    return jax.jit(jax.shard_map(lambda a, b: fn(a, b, axis_name="data"), mesh=mesh,
                                 in_specs=(spec, spec), out_specs=P()))


@pytest.mark.parametrize("name", ["comm", "comm_blockwise", "cmc", "cross_self", "simclr", "clip"])
def test_sharded_loss_and_grads_match_single_device(name):
    assert jax.device_count() == 8
    fns = {"comm": losses.comm_loss,
           "comm_blockwise": lambda a, b, axis_name=None: losses.comm_loss_blockwise(a, b, axis_name=axis_name, chunk=8),
           "simclr": lambda a, b, axis_name=None: losses.simclr_loss(a[0], b[0], axis_name=axis_name),
           **{k: (lambda a, b, axis_name=None, f=f: f(a, b, b[::-1], axis_name=axis_name)) for k, f in BASELINES.items()}}
    fn = fns[name]
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    v1, v2 = (jnp.asarray(v) for v in views(9, 3, 32, 16))
    single = lambda a, b: fn(a, b)[0]
    sharded = _sharded(lambda a, b, axis_name: fn(a, b, axis_name=axis_name)[0], mesh)
    np.testing.assert_allclose(sharded(v1, v2), single(v1, v2), rtol=1e-5)
    g_single = jax.grad(single, argnums=(0, 1))(v1, v2)
    g_sharded = jax.grad(sharded, argnums=(0, 1))(v1, v2)
    for gs, gd in zip(g_single, g_sharded):
        np.testing.assert_allclose(gd, gs, rtol=1e-4, atol=1e-7)
    metrics_single = fn(v1, v2)[1]
    metrics_sharded = _sharded(lambda a, b, axis_name: fn(a, b, axis_name=axis_name)[1], mesh)(v1, v2)
    for k in metrics_single:
        np.testing.assert_allclose(metrics_sharded[k], metrics_single[k], rtol=1e-5, err_msg=k)
