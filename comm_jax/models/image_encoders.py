"""Image encoders returning feature maps `[batch, h, w, channels]` (NHWC): AlexNet `features`,
a ResNet-18 trunk, and a small CNN for CPU-sized runs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from comm_jax.models.winograd import winograd_conv3x3

CONV3X3_IMPLS = ("direct", "winograd")


def _max_pool(x: jax.Array, size: int, stride: int, pad: int = 0) -> jax.Array:
    return nnx.max_pool(x, (size, size), (stride, stride), ((pad, pad), (pad, pad)))


class AlexNetFeatures(nnx.Module):
    """torchvision AlexNet `features`: 5 convs, 3 max-pools, ReLU. 224 px -> `[batch, 6, 6, 256]`."""

    out_channels = 256
    # (out channels, kernel, stride, padding, max-pool after)
    LAYERS = ((64, 11, 4, 2, True), (192, 5, 1, 2, True), (384, 3, 1, 1, False),
              (256, 3, 1, 1, False), (256, 3, 1, 1, True))

    def __init__(self, in_channels: int = 3, *, conv3x3: str = "direct", dtype=jnp.float32, rngs: nnx.Rngs):
        """`conv3x3="winograd"` computes the 3x3 layers as Winograd F(2x2, 3x3) (`comm_jax.models.winograd`)
        on the same parameters where the feature map is at least 8 px; "direct" uses `nnx.Conv`."""
        if conv3x3 not in CONV3X3_IMPLS:
            raise ValueError(f"conv3x3 must be one of {CONV3X3_IMPLS}, got {conv3x3!r}")
        self.conv3x3 = conv3x3
        convs, pools, c = [], [], in_channels
        for out, k, s, p, pool in self.LAYERS:
            convs.append(nnx.Conv(c, out, (k, k), strides=(s, s), padding=((p, p), (p, p)),
                                  dtype=dtype, rngs=rngs))
            pools.append(pool)
            c = out
        self.convs = nnx.List(convs)
        self.pools = tuple(pools)

    def __call__(self, x: jax.Array) -> jax.Array:
        for conv, pool in zip(self.convs, self.pools):
            use_winograd = (self.conv3x3 == "winograd" and conv.kernel_size == (3, 3)
                            and tuple(conv.strides) == (1, 1) and min(x.shape[1:3]) >= 8)
            x = jax.nn.relu(_winograd(conv, x) if use_winograd else conv(x))
            if pool:
                x = _max_pool(x, 3, 2)
        return x


def _winograd(conv: nnx.Conv, x: jax.Array) -> jax.Array:
    """`conv(x)` for a stride-1 3x3 `nnx.Conv` with explicit padding, through `winograd_conv3x3`."""
    x, kernel, bias = conv.promote_dtype((x, conv.kernel[...], conv.bias[...]), dtype=conv.dtype)
    return winograd_conv3x3(x, kernel, tuple(conv.padding), precision=conv.precision) + bias


class BasicBlock(nnx.Module):
    """ResNet basic block: two 3x3 convs with BatchNorm, projection shortcut when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int, *, dtype, rngs: nnx.Rngs):
        conv = lambda a, b, k, s: nnx.Conv(a, b, (k, k), strides=(s, s), padding=((k // 2,) * 2,) * 2,
                                           use_bias=False, dtype=dtype, rngs=rngs)
        bn = lambda c: nnx.BatchNorm(c, momentum=0.9, dtype=dtype, rngs=rngs)
        self.conv1, self.bn1 = conv(c_in, c_out, 3, stride), bn(c_out)
        self.conv2, self.bn2 = conv(c_out, c_out, 3, 1), bn(c_out)
        projected = stride != 1 or c_in != c_out
        self.shortcut_conv = conv(c_in, c_out, 1, stride) if projected else None
        self.shortcut_bn = bn(c_out) if projected else None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jax.nn.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        if self.shortcut_conv is not None:
            x = self.shortcut_bn(self.shortcut_conv(x))
        return jax.nn.relu(x + y)


class ResNet18Trunk(nnx.Module):
    """ResNet-18 without pooling and classifier: 224 px -> `[batch, 7, 7, 512]`."""

    out_channels = 512

    def __init__(self, in_channels: int = 3, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.stem = nnx.Conv(in_channels, 64, (7, 7), strides=(2, 2), padding=((3, 3), (3, 3)),
                             use_bias=False, dtype=dtype, rngs=rngs)
        self.stem_bn = nnx.BatchNorm(64, momentum=0.9, dtype=dtype, rngs=rngs)
        blocks, c = [], 64
        for stage, width in enumerate((64, 128, 256, 512)):
            for i in range(2):
                stride = 2 if (i == 0 and stage > 0) else 1
                blocks.append(BasicBlock(c, width, stride, dtype=dtype, rngs=rngs))
                c = width
        self.blocks = nnx.List(blocks)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = _max_pool(jax.nn.relu(self.stem_bn(self.stem(x))), 3, 2, pad=1)
        for block in self.blocks:
            x = block(x)
        return x


class SmallCNN(nnx.Module):
    """A few stride-2 3x3 convs with ReLU, for CPU-sized runs: 64 px, 4 stages -> `[batch, 4, 4, C]`."""

    def __init__(self, in_channels: int = 3, channels: tuple[int, ...] = (32, 64, 128, 128), *,
                 dtype=jnp.float32, rngs: nnx.Rngs):
        convs, c = [], in_channels
        for out in channels:
            convs.append(nnx.Conv(c, out, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                                  dtype=dtype, rngs=rngs))
            c = out
        self.convs = nnx.List(convs)
        self.out_channels = c

    def __call__(self, x: jax.Array) -> jax.Array:
        for conv in self.convs:
            x = jax.nn.relu(conv(x))
        return x
