"""The 3x3 layers at 13 px (224 px input) and 3 px (64 px input): direct convolution vs Winograd F(2x2, 3x3),
forward and forward+backward, CPU-time/wall medians in ms, and the largest relative differences."""
import time, statistics, os
import jax, jax.numpy as jnp
from comm_jax.models.winograd import winograd_conv3x3
B = int(os.environ.get("B", 32)); N = int(os.environ.get("N", 5))
def conv(x, w): return jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
def t(f, *a):
    jax.block_until_ready(f(*a)); ws, cs = [], []
    for _ in range(N):
        t0, c0 = time.perf_counter(), time.process_time(); jax.block_until_ready(f(*a)); ws.append(time.perf_counter() - t0); cs.append(time.process_time() - c0)
    return f"{statistics.median(cs)*1e3:6.1f}/{statistics.median(ws)*1e3:6.1f}"
for h, ci, co in ((13, 192, 384), (13, 384, 256), (13, 256, 256), (3, 192, 384), (3, 384, 256), (3, 256, 256)):
    x = jax.random.normal(jax.random.key(0), (B, h, h, ci)); w = jax.random.normal(jax.random.key(1), (3, 3, ci, co)) * 0.05
    res = {}
    for name, f in (("plain", conv), ("winograd", winograd_conv3x3)):
        loss = (lambda f: lambda x, w: jnp.sum(jax.nn.relu(f(x, w))))(f)
        fb = jax.jit(jax.grad(loss, argnums=(0, 1))); fw = jax.jit(f)
        res[name] = (fw(x, w), fb(x, w))
        print(f"{h}x{h}x{ci}->{co} {name:8s} fwd {t(fw, x, w)} fwd+bwd {t(fb, x, w)}", flush=True)
    (y0, g0), (y1, g1) = res["plain"], res["winograd"]
    rel = lambda a, b: float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
    print("  rel err fwd", rel(y1, y0), "dx", rel(g1[0], g0[0]), "dw", rel(g1[1], g0[1]))
