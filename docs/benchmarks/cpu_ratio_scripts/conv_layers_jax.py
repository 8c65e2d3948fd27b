"""AlexNet conv layers alone in JAX (batch 32 = one encoder, two views of 16): forward, input gradient and
weight gradient jitted separately, plus the weight gradient as per-tap matmuls; CPU-time/wall medians in ms."""
import time, statistics, os
import jax, jax.numpy as jnp
from alexnet_layers import B, LAYERS, N, SIZES, shapes
def conv(x, w, s, p):
    return jax.lax.conv_general_dilated(x, w, (s, s), ((p, p), (p, p)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
def wgrad_taps(x, g, k, s, p):
    n, h, _, c = x.shape; ho = g.shape[1]
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0))); gm = g.reshape(-1, g.shape[-1])
    rows = [jnp.stack([xp[:, i:i + s * (ho - 1) + 1:s, j:j + s * (ho - 1) + 1:s, :].reshape(-1, c).T @ gm for j in range(k)]) for i in range(k)]
    return jnp.stack(rows)
def t(f, *a):
    jax.block_until_ready(f(*a)); ws, cs = [], []
    for _ in range(N):
        t0, c0 = time.perf_counter(), time.process_time(); jax.block_until_ready(f(*a)); ws.append(time.perf_counter() - t0); cs.append(time.process_time() - c0)
    return f"{statistics.median(cs)*1e3:6.1f}/{statistics.median(ws)*1e3:6.1f}"
for size in SIZES:
    for i, (h, (ci, co, k, s, p)) in enumerate(zip(shapes(size), LAYERS)):
        x = jax.random.normal(jax.random.key(0), (B, h, h, ci)); w = jax.random.normal(jax.random.key(1), (k, k, ci, co)) * 0.05
        y = conv(x, w, s, p); g = jax.random.normal(jax.random.key(2), y.shape)
        fwd = jax.jit(lambda x, w: conv(x, w, s, p))
        dgrad = jax.jit(lambda w, g: jax.vjp(lambda x: conv(x, w, s, p), x)[1](g)[0])
        wgrad = jax.jit(lambda x, g: jax.vjp(lambda w: conv(x, w, s, p), w)[1](g)[0])
        wtaps = jax.jit(lambda x, g: wgrad_taps(x, g, k, s, p))
        err = float(jnp.max(jnp.abs(wtaps(x, g) - wgrad(x, g))) / jnp.max(jnp.abs(wgrad(x, g))))
        print(f"jax {size}px conv{i+1} cpu/wall ms: fwd {t(fwd, x, w)} dgrad {t(dgrad, w, g)} wgrad {t(wgrad, x, g)} wgrad_taps {t(wtaps, x, g)} (rel {err:.0e})", flush=True)
