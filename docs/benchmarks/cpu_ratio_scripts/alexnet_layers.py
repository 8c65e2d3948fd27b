"""What the per-layer profiles share: the AlexNet convolutions (in, out, kernel, stride, padding), the
input size each one sees, and the batch, repeat count and image sizes read from the environment."""
import os

B = int(os.environ.get("B", 32))
N = int(os.environ.get("N", 5))
SIZES = tuple(int(s) for s in os.environ.get("SIZES", "224,64").split(","))
LAYERS = ((3, 64, 11, 4, 2), (64, 192, 5, 1, 2), (192, 384, 3, 1, 1), (384, 256, 3, 1, 1), (256, 256, 3, 1, 1))


def shapes(size):
    """The side of the feature map each layer receives (max pools after layers 1, 2 and 5)."""
    h, out = size, []
    for i, (_, _, k, s, p) in enumerate(LAYERS):
        out.append(h)
        h = (h + 2 * p - k) // s + 1
        if i in (0, 1, 4):
            h = (h - 3) // 2 + 1
    return out
