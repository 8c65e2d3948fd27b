"""PID of (X1, X2; Y) from continuous features without clustering: the BATCH estimator's idea (Liang et
al. 2023, "Quantifying & Modeling Multimodal Interactions"), written in JAX.

1. Learned conditionals: small MLP classifiers p(y|x1), p(y|x2), p(y|x1,x2), fit by cross-entropy on
   part of the rows (`holdout` of them kept for estimation; early stopping on a slice of the fitted part).
2. A coupling per batch: for B rows, the BROJA program's set Delta_P restricted to the batch is the joints
   q[a, b, y] over (row a's x1, row b's x2, y) with q(a, y) = p(y|x1_a) / B and q(b, y) = p(y|x2_b) / B.
   Its members are parametrised by alignment networks g1, g2 (each x -> [classes, embed]): logits
   <g1(x1_a)[y], g2(x2_b)[y]> / sqrt(embed), scaled per y by log-domain Sinkhorn iterations onto those
   two marginals (per y both are rescaled to the mean of their two totals, which agree up to the
   classifiers' error).
3. min I_q(X1,X2;Y) over the alignment networks' parameters by Adam on random batches; then, on the held-out
   rows in batches of B, I_q(X1;Y), I_q(X2;Y), I_q(X1,X2;Y) from the coupling and I_p(X1,X2;Y) from the
   joint classifier give R, U1, U2, S as `pid.broja` defines them, averaged over the batches.

With exact conditionals, the batch program's minimum is the BROJA minimum of the batch's joint (rows with
equal inputs may be merged or split without changing I_q), so the estimate converges to `pid.broja`'s as B
grows and the classifiers and alignment approach their optima. A coupling that misses the minimum gives
I_q too high: R and S too low and U1, U2 too high by the same amount. Cost is linear in the rows:
[B, B, classes] per batch.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from comm_jax.information.pid import PID_PARTS

_LOG2 = math.log(2.0)
_TINY = 1e-12


@dataclasses.dataclass(frozen=True)
class BatchPIDSettings:
    """The estimator's sizes and schedules (defaults fit 10^3-10^5 rows of up to a few hundred features on a CPU)."""

    batch_size: int = 256           # rows per coupling (B) of the estimate
    align_batch: int = 128          # rows per coupling while training the alignment
    holdout: float = 0.5            # share of rows kept for estimation
    hidden: int = 64                # width of every MLP's hidden layers
    layers: int = 2                 # hidden layers per MLP
    embed: int = 16                 # alignment embedding per class
    classifier_steps: int = 1500    # Adam steps per classifier (early-stopped on held-out cross-entropy)
    classifier_lr: float = 3e-3
    weight_decay: float = 1e-4
    align_steps: int = 400          # Adam steps of the alignment networks
    align_lr: float = 3e-3
    sinkhorn_iters: int = 20        # Sinkhorn sweeps while training the alignment
    eval_sinkhorn_iters: int = 300  # Sinkhorn sweeps of the estimate
    check_every: int = 100          # classifier steps between early-stopping checks


@dataclasses.dataclass(frozen=True)
class BatchPIDEstimate:
    """parts: {R, U1, U2, S} in bits, the mean over the estimation batches; batch_parts: [batches, 4] in
    PID_PARTS order; stderr: part -> standard error of that mean over batches; information: the batch means
    of I(X1;Y), I(X2;Y), I(X1,X2;Y) (joint classifier) and min I_q(X1,X2;Y), in bits; cross_entropy: each
    classifier's held-out cross-entropy in bits ("x1", "x2", "x1x2"); marginal_error: the largest total
    variation, over batches, between the coupling's (x2, y) marginal and its target (its (x1, y) marginal
    is exact): a coupling off Delta_P can put I_q below the minimum."""

    parts: dict[str, float]
    batch_parts: np.ndarray
    stderr: dict[str, float]
    information: dict[str, float]
    cross_entropy: dict[str, float]
    marginal_error: float


def _init_mlp(key: jax.Array, sizes: list[int]) -> list[tuple[jax.Array, jax.Array]]:
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        key, sub = jax.random.split(key)
        params.append((jax.random.normal(sub, (fan_in, fan_out)) * jnp.sqrt(2.0 / fan_in), jnp.zeros(fan_out)))
    return params


def _mlp(params, x: jax.Array) -> jax.Array:
    for w, b in params[:-1]:
        x = jax.nn.relu(x @ w + b)
    w, b = params[-1]
    return x @ w + b


def _standardise(fit: np.ndarray, *arrays: np.ndarray) -> list[np.ndarray]:
    mean, std = fit.mean(0), fit.std(0) + 1e-6
    return [((a - mean) / std).astype(np.float32) for a in arrays]


def _cross_entropy(params, x: jax.Array, y: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(_mlp(params, x), y).mean()


_held_out_cross_entropy = jax.jit(_cross_entropy)


@functools.partial(jax.jit, static_argnames=("steps", "batch", "lr", "weight_decay"))
def _classifier_steps(params, opt_state, x, y, key, *, steps: int, batch: int, lr: float, weight_decay: float):
    """`steps` AdamW steps of the cross-entropy on random batches of (x, y)."""
    optimiser = optax.adamw(lr, weight_decay=weight_decay)

    def step(carry, k):
        params, opt_state = carry
        rows = jax.random.randint(k, (batch,), 0, y.shape[0])
        grads = jax.grad(_cross_entropy)(params, x[rows], y[rows])
        updates, opt_state = optimiser.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    (params, opt_state), _ = jax.lax.scan(step, (params, opt_state), jax.random.split(key, steps))
    return params, opt_state


def fit_classifier(x: np.ndarray, y: np.ndarray, x_check: np.ndarray, y_check: np.ndarray, classes: int,
                   settings: BatchPIDSettings, key: jax.Array):
    """An MLP p(y|x) fit by AdamW on (x [n, d], y [n]) and early-stopped on the cross-entropy of
    (x_check, y_check); returns (predict: x -> probabilities [m, classes], held-out cross-entropy in nats)."""
    s = settings
    params = _init_mlp(key, [x.shape[1]] + [s.hidden] * s.layers + [classes])
    opt_state = optax.adamw(s.classifier_lr, weight_decay=s.weight_decay).init(params)
    x, y, x_check, y_check = (jnp.asarray(a) for a in (x, y, x_check, y_check))
    best, best_loss = params, float(_held_out_cross_entropy(params, x_check, y_check))
    for k in jax.random.split(jax.random.fold_in(key, 1), max(1, s.classifier_steps // s.check_every)):
        params, opt_state = _classifier_steps(params, opt_state, x, y, k, steps=s.check_every,
                                              batch=min(s.batch_size, int(y.shape[0])), lr=s.classifier_lr,
                                              weight_decay=s.weight_decay)
        current = float(_held_out_cross_entropy(params, x_check, y_check))
        if current < best_loss:
            best, best_loss = params, current

    def predict(features: np.ndarray) -> np.ndarray:
        return np.asarray(jax.nn.softmax(_mlp(best, jnp.asarray(features)), axis=-1), np.float64)

    return predict, best_loss


def _log_coupling(logits: jax.Array, p1: jax.Array, p2: jax.Array, iters: int) -> tuple[jax.Array, jax.Array]:
    """(log q [B, B, classes], label marginal [classes]): exp(logits) scaled per y so its row sums are
    p1[a, y] and its column sums p2[b, y], each rescaled to the mean of the two per-y totals, over B."""
    total1, total2 = p1.mean(0), p2.mean(0)
    mass = (total1 + total2) / 2
    n = p1.shape[0]
    log_rows = jnp.log(p1 * (mass / total1) / n + _TINY)            # [B, classes]
    log_cols = jnp.log(p2 * (mass / total2) / n + _TINY)

    def sweep(_, uv):
        u, v = uv
        u = log_rows - jax.nn.logsumexp(logits + v[None], axis=1)
        v = log_cols - jax.nn.logsumexp(logits + u[:, None], axis=0)
        return u, v

    zeros = jnp.zeros_like(log_rows)
    _, v = jax.lax.fori_loop(0, iters, sweep, (zeros, zeros))
    u = log_rows - jax.nn.logsumexp(logits + v[None], axis=1)      # rows exact, columns within the sweep's error
    return logits + u[:, None] + v[None], mass


def _alignment_logits(params, x1: jax.Array, x2: jax.Array, classes: int) -> jax.Array:
    """[B, B, classes]: <g1(x1_a)[y], g2(x2_b)[y]> / sqrt(embed)."""
    e1 = _mlp(params["g1"], x1).reshape(x1.shape[0], classes, -1)
    e2 = _mlp(params["g2"], x2).reshape(x2.shape[0], classes, -1)
    return jnp.einsum("aye,bye->aby", e1, e2) / jnp.sqrt(e1.shape[-1])


def _coupled_information(log_q: jax.Array, mass: jax.Array) -> jax.Array:
    """I_q(X1,X2;Y) in nats of a coupling whose label marginal is `mass`."""
    q = jnp.exp(log_q)
    log_pair = jax.nn.logsumexp(log_q, axis=-1, keepdims=True)
    return jnp.sum(q * (log_q - log_pair - jnp.log(mass + _TINY)))


def _marginal_information(log_joint: jax.Array) -> jax.Array:
    """I(A;Y) in nats of a joint given as log j[a, y] (summing to 1)."""
    joint = jnp.exp(log_joint)
    log_a = jax.nn.logsumexp(log_joint, axis=1, keepdims=True)
    log_y = jax.nn.logsumexp(log_joint, axis=0, keepdims=True)
    return jnp.sum(joint * (log_joint - log_a - log_y))


def _posterior_information(p: jax.Array) -> jax.Array:
    """I(X;Y) in nats of rows [B, classes] of p(y|x), each row of weight 1/B: mean KL(p(y|x) || mean p(y|x))."""
    marginal = p.mean(0)
    return jnp.mean(jnp.sum(p * (jnp.log(p + _TINY) - jnp.log(marginal + _TINY)), axis=-1))


def _alignment_objective(params, x1, x2, p1, p2, iters: int) -> jax.Array:
    logits = _alignment_logits(params, x1, x2, p1.shape[-1])
    log_q, mass = _log_coupling(logits, p1, p2, iters)
    return _coupled_information(log_q, mass)


@functools.partial(jax.jit, static_argnames=("steps", "batch", "lr", "iters"))
def _alignment_steps(params, x1, x2, p1, p2, key, *, steps: int, batch: int, lr: float, iters: int):
    """`steps` Adam steps of min I_q over random batches of rows of (x1, x2) with conditionals (p1, p2)."""
    optimiser = optax.adam(lr)

    def step(carry, k):
        params, opt_state = carry
        rows = jax.random.randint(k, (batch,), 0, x1.shape[0])
        grads = jax.grad(_alignment_objective)(params, x1[rows], x2[rows], p1[rows], p2[rows], iters)
        updates, opt_state = optimiser.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    (params, _), _ = jax.lax.scan(step, (params, optimiser.init(params)), jax.random.split(key, steps))
    return params


@functools.partial(jax.jit, static_argnames=("iters",))
def _estimate_batches(params, x1, x2, p1, p2, p12, *, iters: int) -> jax.Array:
    """[batches, 5]: I(X1;Y), I(X2;Y), I(X1,X2;Y), I_q(X1,X2;Y) in bits and the (x2, y) marginal's total
    variation from its target, of each batch ([batches, B, ...] inputs)."""

    def one(b1, b2, q1, q2, q12):
        log_q, mass = _log_coupling(_alignment_logits(params, b1, b2, q1.shape[-1]), q1, q2, iters)
        target2 = q2 * (mass / q2.mean(0)) / q2.shape[0]
        column_error = jnp.sum(jnp.abs(jnp.exp(jax.nn.logsumexp(log_q, axis=0)) - target2))
        bits = jnp.stack([_marginal_information(jax.nn.logsumexp(log_q, axis=1)),
                          _marginal_information(jax.nn.logsumexp(log_q, axis=0)),
                          _posterior_information(q12), _coupled_information(log_q, mass)]) / _LOG2
        return jnp.concatenate([bits, column_error[None]])

    return jax.lax.map(lambda args: one(*args), (x1, x2, p1, p2, p12))


def batch_pid(x1: np.ndarray, x2: np.ndarray, y: np.ndarray, classes: int | None = None,
              settings: BatchPIDSettings = BatchPIDSettings(), seed: int = 0) -> BatchPIDEstimate:
    """PID in bits of (x1 [n, d1], x2 [n, d2]; y [n] class indices), estimated as the module docstring says.

    Rows are split at random: `settings.holdout` of them estimate the parts, the rest fit the
    classifiers (a fifth of those early-stops them) and the alignment networks."""
    s = settings
    y = np.asarray(y, np.int64).reshape(-1)
    if not len(x1) == len(x2) == len(y):
        raise ValueError(f"row counts differ: {len(x1)}, {len(x2)}, {len(y)} labels")
    x1, x2 = np.asarray(x1, np.float64).reshape(len(y), -1), np.asarray(x2, np.float64).reshape(len(y), -1)
    classes = int(classes or y.max() + 1)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    n_hold = int(round(s.holdout * len(y)))
    if n_hold < s.batch_size:
        raise ValueError(f"{n_hold} estimation rows are fewer than one batch of {s.batch_size}")
    hold, fit = order[:n_hold], order[n_hold:]
    n_check = max(1, len(fit) // 5)
    check, train = fit[:n_check], fit[n_check:]
    x1_train, x1_check, x1_hold = _standardise(x1[train], x1[train], x1[check], x1[hold])
    x2_train, x2_check, x2_hold = _standardise(x2[train], x2[train], x2[check], x2[hold])
    x12 = [np.concatenate(pair, axis=1) for pair in
           ((x1_train, x2_train), (x1_check, x2_check), (x1_hold, x2_hold))]

    key = jax.random.PRNGKey(seed)
    k1, k2, k12, k_align, k_steps = jax.random.split(key, 5)
    predict1, ce1 = fit_classifier(x1_train, y[train], x1_check, y[check], classes, s, k1)
    predict2, ce2 = fit_classifier(x2_train, y[train], x2_check, y[check], classes, s, k2)
    predict12, ce12 = fit_classifier(x12[0], y[train], x12[1], y[check], classes, s, k12)

    # Alignment: conditionals fixed, min I_q over random batches of the fitting rows.
    fit_x1, fit_x2 = np.concatenate([x1_train, x1_check]), np.concatenate([x2_train, x2_check])
    ka, kb = jax.random.split(k_align)
    widths = [s.hidden] * s.layers + [classes * s.embed]
    params = {"g1": _init_mlp(ka, [x1.shape[1]] + widths), "g2": _init_mlp(kb, [x2.shape[1]] + widths)}
    params = _alignment_steps(params, *(jnp.asarray(a) for a in (fit_x1, fit_x2, predict1(fit_x1), predict2(fit_x2))),
                              k_steps, steps=s.align_steps, batch=min(s.align_batch, len(fit)), lr=s.align_lr,
                              iters=s.sinkhorn_iters)

    # Estimate on the held-out rows, in batches of B.
    batches = (n_hold // s.batch_size) * s.batch_size
    held = [a[:batches].reshape(-1, s.batch_size, *a.shape[1:]) for a in
            (x1_hold, x2_hold, predict1(x1_hold), predict2(x2_hold), predict12(x12[2]))]
    rows = np.asarray(_estimate_batches(params, *(jnp.asarray(a) for a in held), iters=s.eval_sinkhorn_iters))
    info = np.array(rows, np.float64)                          # [batches, 5]: I1, I2, I12, I_q, marginal error
    i1, i2, i12, i_q, column_error = info.T
    batch_parts = np.stack([i1 + i2 - i_q, i_q - i2, i_q - i1, i12 - i_q], axis=1)
    stderr = batch_parts.std(0, ddof=1) / np.sqrt(len(rows)) if len(rows) > 1 else np.zeros(4)
    return BatchPIDEstimate(
        parts={p: float(v) for p, v in zip(PID_PARTS, batch_parts.mean(0))},
        batch_parts=batch_parts,
        stderr={p: float(v) for p, v in zip(PID_PARTS, stderr)},
        information={"I_X1_Y": float(i1.mean()), "I_X2_Y": float(i2.mean()), "I_X1X2_Y": float(i12.mean()),
                     "I_Q_X1X2_Y": float(i_q.mean())},
        marginal_error=float(column_error.max()),
        cross_entropy={"x1": ce1 / _LOG2, "x2": ce2 / _LOG2, "x1x2": ce12 / _LOG2},
    )
