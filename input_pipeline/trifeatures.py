"""TFDS builder `bimodal_trifeatures`: CoMM's controlled dataset of same-shape image pairs.

Each example is a pair (image_1, image_2) of Trifeatures images (10 shapes x 10 colours x 10
textures) that share their shape; the other attributes are independent. Labels: `shape`
(redundancy), `texture_1` / `texture_2` (uniqueness), `synergy` (1 iff the texture of image 1 and
the colour of image 2 match the fixed mapping M), plus `color_1`, `color_2` and the pair `id`.

Configs `32px`, `64px`, `128px`, `224px` (the paper's resolution, the default) hold unbiased pairs; their
`_biased` twins hold a training split where every pair satisfies M (synergy pretraining). The test
split is always unbiased: every ordered same-shape pair of the 200 held-out combinations.

The data are generated offline and deterministically by `trifeatures_render` (no download):

    import input_pipeline  # registers the builder
    ds = tfds.load("bimodal_trifeatures/64px", split="train", data_dir=data_dir)

With `data_dir=None` TFDS uses its default, `$TFDS_DATA_DIR` or else `~/tensorflow_datasets`.
The mapping M is in `info.metadata["texture_to_color"]` (M[texture] = colour).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from input_pipeline import trifeatures_render as render

_CITATION = """\
@inproceedings{dufumier2025what,
  title={What to align in multimodal contrastive learning?},
  author={Dufumier, Benoit and Castillo-Navarro, Javiera and Tuia, Devis and Thiran, Jean-Philippe},
  booktitle={International Conference on Learning Representations (ICLR)},
  year={2025}
}
@inproceedings{hermann2020shapes,
  title={What shapes feature representations? Exploring datasets, architectures, and training},
  author={Hermann, Katherine L. and Lampinen, Andrew K.},
  booktitle={Advances in Neural Information Processing Systems (NeurIPS)},
  year={2020}
}"""

LABEL_NAMES = ("shape", "texture_1", "texture_2", "color_1", "color_2", "synergy")


@dataclasses.dataclass(eq=False, kw_only=True)
class BimodalTrifeaturesConfig(tfds.core.BuilderConfig):
    """Resolution and pair bias of one Bimodal Trifeatures variant."""

    image_size: int = 224
    biased: bool = False

    def __post_init__(self) -> None:
        render.render_spec(self.image_size)  # ValueError for an unsupported resolution


def _make_config(image_size: int, biased: bool) -> BimodalTrifeaturesConfig:
    pairs = ("train pairs satisfy the texture->colour mapping M (synergy pretraining)"
             if biased else "unbiased pairs")
    return BimodalTrifeaturesConfig(
        name=f"{image_size}px" + ("_biased" if biased else ""),
        description=f"{image_size}x{image_size} images; {pairs}; test pairs unbiased.",
        image_size=image_size, biased=biased)


def pair_features(image_size: int) -> tfds.features.FeaturesDict:
    """The features of one example: two `[image_size, image_size, 3]` uint8 PNG images and the labels."""
    image = tfds.features.Image(shape=(image_size, image_size, 3), dtype=np.uint8, encoding_format="png")
    shapes = tfds.features.ClassLabel(names=render.SHAPE_NAMES)
    textures = tfds.features.ClassLabel(names=render.TEXTURE_NAMES)
    colors = tfds.features.ClassLabel(names=render.COLOR_NAMES)
    return tfds.features.FeaturesDict({
        "image_1": image,
        "image_2": image,
        "shape": shapes,
        "texture_1": textures,
        "texture_2": textures,
        "color_1": colors,
        "color_2": colors,
        "synergy": tfds.features.ClassLabel(num_classes=2),
        "id": np.int64,
    })


class BimodalTrifeatures(tfds.core.GeneratorBasedBuilder):
    """Bimodal Trifeatures pairs, generated offline (see the module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [_make_config(size, biased)
                       for biased in (False, True) for size in sorted(render.RENDER_SPECS)]
    DEFAULT_CONFIG_NAME = "224px"

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=pair_features(self.builder_config.image_size),
            homepage="https://github.com/Duplums/CoMM",
            citation=_CITATION,
            metadata=tfds.core.MetadataDict(
                texture_to_color=render.synergy_mapping().tolist()),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        del dl_manager  # generated, nothing to download
        return {
            "train": self._generate_examples(split="train", biased=self.builder_config.biased),
            "test": self._generate_examples(split="test", biased=False),
        }

    def _generate_examples(self, split: str, biased: bool) -> Iterator[tuple[int, dict]]:
        """Renders every image of the split once, PNG-encodes it once, and yields the pairs."""
        images = render.split_images(split)
        texture_to_color = render.synergy_mapping()
        pairs = render.sample_pairs(images, texture_to_color=texture_to_color if biased else None)
        labels = render.pair_labels(images, pairs, texture_to_color)
        image_feature = self.info.features["image_1"]
        encoded: list[bytes] = [b""] * len(images)
        spec = render.render_spec(self.builder_config.image_size)
        for members, pixels in render.iter_rendered_groups(images, spec):
            for index, image in zip(members.tolist(), pixels):
                encoded[index] = image_feature.encode_example(image)
        for pair_id, (first, second) in enumerate(pairs.tolist()):
            example = {name: labels[name][pair_id] for name in LABEL_NAMES}
            example.update(image_1=encoded[first], image_2=encoded[second], id=pair_id)
            yield pair_id, example
