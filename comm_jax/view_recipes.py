"""The reference's augmentation recipes in the op-spec language: SimCLR's strong views and the weak view of
CLIP and the probes."""

from __future__ import annotations

# The reference's blur sigmas are in pixels at 224 px; smaller images get the same relative blur.
REFERENCE_IMAGE_SIZE = 224


def simclr_image_ops(size: int, crop_scale: tuple[float, float] = (0.08, 1.0)) -> str:
    """SimCLR's augmentation at output `size`: random resized crop, colour jitter (p=0.8), grayscale
    (p=0.2), Gaussian blur (p=0.5), horizontal flip, ImageNet normalisation."""
    blur = tuple(round(s * size / REFERENCE_IMAGE_SIZE, 3) for s in (0.1, 2.0))
    return (f"random_resized_crop({size}, scale={tuple(crop_scale)})|color_jitter(0.4, 0.4, 0.4, 0.1, p=0.8)"
            f"|grayscale(p=0.2)|gaussian_blur(sigma={blur}, p=0.5)|flip_lr|normalize")


def weak_image_ops(size: int) -> str:
    """The reference's `img_transform` (CLIP's and Cross+Self's cross-modal views): a random resized
    crop of scale (0.5, 1) and normalisation, no colour or blur."""
    return f"random_resized_crop({size}, scale=(0.5, 1.0))|normalize"
