"""Analytic FLOP counts (2 per multiply-add) of the model's convolutions, matmuls and attention,
and of the method's objective (`Method.loss_flops`), from the config alone; cross-checked against
XLA's cost analysis.

Only matmul-like work is counted (elementwise ops, norms, softmax and the optimizer are not), and a
train step is 3x the forward (backward = 2x forward, the usual convention for MFU).
"""

from __future__ import annotations

from typing import Any, Mapping

from comm_jax import methods
from comm_jax.models.fusion import comm_subsets
from comm_jax.models.image_encoders import AlexNetFeatures


def conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def kernel_taps(size: int, kernel: int, stride: int, pad: int) -> int:
    """Kernel taps that land inside the input, summed over the output positions of one dimension
    (taps on zero padding do no useful work and XLA's cost analysis does not count them)."""
    return sum(sum(1 for j in range(kernel) if 0 <= o * stride - pad + j < size)
               for o in range(conv_out(size, kernel, stride, pad)))


def conv_flops(batch: int, h: int, w: int, kernel: int, stride: int, pad: int, c_in: int, c_out: int) -> int:
    """A 2D convolution over a `[batch, h, w, c_in]` input."""
    return 2 * batch * kernel_taps(h, kernel, stride, pad) * kernel_taps(w, kernel, stride, pad) * c_in * c_out


def dense_flops(rows: int, d_in: int, d_out: int) -> int:
    return 2 * rows * d_in * d_out


def alexnet(batch: int, h: int, w: int, c: int, conv3x3: str = "direct") -> tuple[int, tuple[int, int, int]]:
    """FLOPs of AlexNet `features` and its output `(h, w, channels)`: the direct convolutions' count, the
    model's FLOPs whichever `conv3x3` computes them (Winograd does fewer multiplies for the same result)."""
    total = 0
    for out, k, s, p, pool in AlexNetFeatures.LAYERS:
        total += conv_flops(batch, h, w, k, s, p, c, out)
        h, w = conv_out(h, k, s, p), conv_out(w, k, s, p)
        c = out
        if pool:
            h, w = conv_out(h, 3, 2, 0), conv_out(w, 3, 2, 0)
    return total, (h, w, c)


def small_cnn(batch: int, h: int, w: int, c: int,
              channels=(32, 64, 128, 128)) -> tuple[int, tuple[int, int, int]]:
    total = 0
    for out in channels:
        total += conv_flops(batch, h, w, 3, 2, 1, c, out)
        h, w = conv_out(h, 3, 2, 1), conv_out(w, 3, 2, 1)
        c = out
    return total, (h, w, c)


def resnet18(batch: int, h: int, w: int, c: int) -> tuple[int, tuple[int, int, int]]:
    total = conv_flops(batch, h, w, 7, 2, 3, c, 64)
    h, w = conv_out(h, 7, 2, 3), conv_out(w, 7, 2, 3)
    h, w, c = conv_out(h, 3, 2, 1), conv_out(w, 3, 2, 1), 64
    for stage, width in enumerate((64, 128, 256, 512)):
        for i in range(2):
            stride = 2 if (i == 0 and stage > 0) else 1
            h2, w2 = conv_out(h, 3, stride, 1), conv_out(w, 3, stride, 1)
            total += conv_flops(batch, h, w, 3, stride, 1, c, width) + conv_flops(batch, h2, w2, 3, 1, 1, width, width)
            if stride != 1 or c != width:
                total += conv_flops(batch, h, w, 1, stride, 0, c, width)
            h, w, c = h2, w2, width
    return total, (h, w, c)


IMAGE_ENCODERS = {"alexnet": alexnet, "small_cnn": small_cnn, "resnet18": resnet18}


def transformer_block(lead: int, tokens: int, width: int, mlp_ratio: int = 4,
                      queries: int | None = None) -> int:
    """One pre-LN block over `lead` sequences of `tokens`; with `queries`, only the first
    `queries` tokens' outputs are computed (keys and values still come from every token)."""
    q = tokens if queries is None else queries
    qkv = dense_flops(lead * tokens, width, 3 * width)
    attention = 2 * 2 * lead * q * tokens * width          # q k^T and weights v, all heads
    out = dense_flops(lead * q, width, width)
    mlp = 2 * dense_flops(lead * q, width, mlp_ratio * width)
    return qkv + attention + out + mlp


def transformer_stack(lead: int, tokens: int, width: int, depth: int, mlp_ratio: int = 4,
                      cls_only: bool = False) -> int:
    return sum(transformer_block(lead, tokens, width, mlp_ratio,
                                 1 if (cls_only and i == depth - 1) else None) for i in range(depth))


def modality_flops(spec: Mapping[str, Any], width: int, batch: int) -> tuple[int, int]:
    """(FLOPs of one modality's encoder + latent converter, its token count)."""
    kind = spec.get("encoder", "none")
    args = dict(spec.get("encoder_args", {}))
    shape = tuple(spec["input_shape"])
    adapter = spec.get("adapter", "patch" if kind in IMAGE_ENCODERS else "identity")
    if kind in IMAGE_ENCODERS:
        total, (h, w, c) = IMAGE_ENCODERS[kind](batch, *shape, **args)
        tokens, rows = h * w, batch * h * w
    elif kind == "transformer":
        steps, features = shape
        hidden = args["width"]
        total = dense_flops(batch * steps, features, hidden) + transformer_stack(
            batch, steps, hidden, args.get("depth", 2))
        tokens, rows, c = steps, batch * steps, hidden
    elif kind == "gru":
        steps, features = shape
        hidden = args["hidden"]
        total = dense_flops(batch * steps, features + hidden, 3 * hidden)
        tokens, rows, c = steps, batch * steps, hidden
    elif kind == "none":
        c = shape[-1]
        tokens = 1 if len(shape) == 1 else shape[0]
        rows, total = batch * tokens, 0
    else:
        raise ValueError(f"no FLOP formula for encoder {kind!r}")
    if adapter in ("patch", "linear") or (adapter == "vector" and c != width):
        total += dense_flops(rows, c, width)
    return total, tokens


def _head(rows: int, width: int, cfg) -> int:
    if cfg.get("projection", "mlp") == "linear":
        return dense_flops(rows, width, cfg.head_out)
    hidden = cfg.head_hidden
    return dense_flops(rows, width, hidden) + dense_flops(rows, hidden, hidden) + dense_flops(rows, hidden, cfg.head_out)


def _towers_forward(model_cfg, batch: int) -> dict[str, int]:
    encoders = head = 0
    for name in model_cfg.modalities:
        spec = model_cfg.encoders[name]
        kind = spec.get("encoder", "none")
        if kind in IMAGE_ENCODERS:
            total, (h, w, c) = IMAGE_ENCODERS[kind](batch, *tuple(spec["input_shape"]), **dict(spec.get("encoder_args", {})))
            pooled_in = h * w * c if spec.get("pool", "flatten") == "flatten" else c
        elif kind == "none":
            total, pooled_in = 0, tuple(spec["input_shape"])[-1]
        else:
            raise ValueError(f"no FLOP formula for a towers encoder {kind!r}")
        encoders += total + dense_flops(batch, pooled_in, model_cfg.latent)
        head += _head(batch, model_cfg.latent, model_cfg)
    return {"encoders": encoders, "fusion": 0, "head": head, "total": encoders + head}


def model_forward(model_cfg, batch: int) -> dict[str, int]:
    """Forward FLOPs of one view through the model for `batch` examples, by part:
    encoders (+ latent converters or pooling), fusion (n + 1 passes; none for the towers), head;
    and their `total`."""
    if model_cfg.get("architecture", "fusion") == "towers":
        return _towers_forward(model_cfg, batch)
    width, depth = model_cfg.width, model_cfg.depth
    mlp_ratio = model_cfg.get("mlp_ratio", 4)
    encoders, tokens = 0, []
    for name in model_cfg.modalities:
        f, t = modality_flops(model_cfg.encoders[name], width, batch)
        encoders += f
        tokens.append(t)
    subsets = comm_subsets(len(tokens))
    fusion = sum(transformer_stack(batch, 1 + sum(tokens[i] for i in s), width, depth, mlp_ratio, cls_only=True)
                 for s in subsets)
    head = _head(len(subsets) * batch, width, model_cfg)
    return {"encoders": encoders, "fusion": fusion, "head": head, "total": encoders + fusion + head}


def train_step(cfg, batch: int | None = None) -> dict[str, int]:
    """FLOPs of one train step at global `batch` (default `cfg.batch_size`): every view the method
    trains on forward, its objective, and 3x for forward + backward. Keys: model_forward (one view),
    loss_forward, forward, train_step."""
    batch = batch or cfg.batch_size
    method = methods.build(cfg)
    model = model_forward(cfg.model, batch)
    loss = method.loss_flops(batch)
    forward = len(method.views) * model["total"] + loss
    return {"model_forward": model["total"], "encoders_forward": model["encoders"],
            "fusion_forward": model["fusion"], "head_forward": model["head"],
            "loss_forward": loss, "forward": forward, "train_step": 3 * forward}


def compiled_flops(compiled) -> float | None:
    """FLOPs XLA's cost analysis counts for a compiled executable (per device under SPMD)."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    if not analysis or "flops" not in analysis:
        return None
    return float(analysis["flops"])
