"""Input pipeline of comm-jax: TFDS builders, augmentations and tf.data construction."""

from input_pipeline import trifeatures  # registers the TFDS builder
from input_pipeline import trifeatures_shift  # registers the shifted variants
