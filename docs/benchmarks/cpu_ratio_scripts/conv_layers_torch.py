"""AlexNet conv layers alone in eager torch (2 threads, batch 32): forward, input gradient, weight gradient
through aten.convolution_backward; CPU-time/wall medians in ms. Run with OMP_WAIT_POLICY=PASSIVE."""
import time, statistics, os
import torch
from torch.nn.grad import conv2d_input, conv2d_weight
torch.set_num_threads(2)
from alexnet_layers import B, LAYERS, N, SIZES, shapes
def t(f):
    f(); ws, cs = [], []
    for _ in range(N):
        t0, c0 = time.perf_counter(), time.process_time(); f(); ws.append(time.perf_counter() - t0); cs.append(time.process_time() - c0)
    return f"{statistics.median(cs)*1e3:6.1f}/{statistics.median(ws)*1e3:6.1f}"
with torch.no_grad():
  for size in SIZES:
    for i, (h, (ci, co, k, s, p)) in enumerate(zip(shapes(size), LAYERS)):
        x = torch.randn(B, ci, h, h); w = torch.randn(co, ci, k, k) * 0.05
        y = torch.nn.functional.conv2d(x, w, None, s, p); g = torch.randn_like(y)
        # autograd's convolution_backward is what the step uses
        def bwd(mask):
            return lambda: torch.ops.aten.convolution_backward(g, x, w, None, (s, s), (p, p), (1, 1), False, (0, 0), 1, mask)
        print(f"torch {size}px conv{i+1} cpu/wall ms: fwd {t(lambda: torch.nn.functional.conv2d(x, w, None, s, p))} "
              f"dgrad {t(bwd([True, False, False]))} wgrad {t(bwd([False, True, False]))}", flush=True)
