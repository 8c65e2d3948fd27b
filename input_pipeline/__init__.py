"""Input pipeline of comm-jax: TFDS builders, augmentation ops and tf.data construction."""

from input_pipeline import controlled_augment  # noqa: F401  (registers the controlled ops)
from input_pipeline import mmimdb  # noqa: F401  (registers the TFDS builder)
from input_pipeline import mmimdb_features  # noqa: F401  (registers the TFDS builder)
from input_pipeline import multibench_affect  # noqa: F401  (registers the TFDS builder)
from input_pipeline import multibench_mimic  # noqa: F401  (registers the TFDS builder)
from input_pipeline import multibench_vision_touch  # noqa: F401  (registers the TFDS builder)
from input_pipeline import synthetic_info  # noqa: F401  (registers the TFDS builder)
from input_pipeline import trifeatures  # noqa: F401  (registers the TFDS builder)
from input_pipeline import trifeatures_shift  # noqa: F401  (registers the shifted variants)
