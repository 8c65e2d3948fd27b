"""TFDS builder `bimodal_trifeatures_shift`: Bimodal Trifeatures with one shape, one texture and one
colour held out, and test sets that shift one modality, both, their interaction, or corrupt an image.

Held out (`trifeatures_shift_pairs.HELD_OUT`): the shape `circle`, the texture `dots` and the colour
`green`, which is M(`dots`) for the texture->colour mapping M of the synergy task, so M stays a
bijection between the nine in-distribution (ID) textures and the nine ID colours. Images are the
base dataset's renders (`trifeatures_render`); the labels are those of `bimodal_trifeatures`.

Configs `{size}px_{kind}` for every size of the base dataset (32 and 64 px build in seconds):

| kind | splits | pairs | information it touches |
| --- | --- | --- | --- |
| `id` | train, test | same-shape pairs of the base splits' images that show no held-out value (train: 10,000 drawn, test: all 2,486) | none: pretrain and probe on it |
| `id_biased` | train, test | the `id` images' pairs that satisfy M (train 10,000, test 287) | none: the ID data of synergy pretraining |
| `texture_1` | test | image 1 has the held-out texture, image 2 is an ID test image of the same shape | unique information of image 1 only |
| `texture_both` | test | both images have the held-out texture | unique information of both images |
| `color_1`, `color_both` | test | the same with the held-out colour | unique information of image 1 / of both |
| `shape_both` | test | both images have the held-out shape (pairs share their shape) | the shared (redundant) information |
| `synergy` | test | `id` test images paired so that colour(image 2) != M(texture(image 1)) | only the interaction, for a model pretrained on `id_biased`: each image alone is ID (for `id` pretraining these pairs are ID) |
| `blank_1` | test | the first 2,000 `id` test pairs, image 1 replaced by the background grey | image 1 missing: what only it carries is lost, the shape survives in image 2 |
| `noise_1` | test | the same pairs, Gaussian noise of std 0.25 x 255 added to image 1 | image 1 corrupted (low-level statistics) |
| `blur_1` | test | the same pairs, image 1 blurred (Gaussian, sigma = side / 16) | image 1 corrupted (texture detail lost) |

In a `*_1` kind the held-out value is only in image 1; image 2 is always ID. Novel-value images are
one render of each of the 81 combinations of the held-out value with ID values of the two other
attributes. Shifted splits hold at most 2,000 pairs. Every split's pairs come in one fixed shuffled
order, so its first N pairs (an evaluation cap) are a fair sample. Labels of a blanked or corrupted
image are those of the image before it was blanked or corrupted.

    import input_pipeline  # registers the builders
    ds = tfds.load("bimodal_trifeatures_shift/64px_texture_1", split="test", data_dir=data_dir)

`info.metadata` holds `held_out` ({attribute: value name}) and `texture_to_color` (M).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import tensorflow_datasets as tfds

from input_pipeline import trifeatures_render as render
from input_pipeline import trifeatures_shift_pairs as shifts
from input_pipeline.trifeatures import _CITATION, LABEL_NAMES, pair_features


@dataclasses.dataclass(eq=False, kw_only=True)
class BimodalTrifeaturesShiftConfig(tfds.core.BuilderConfig):
    """Resolution and shift kind (a key of `trifeatures_shift_pairs.KINDS`) of one variant."""

    image_size: int = 64
    kind: str = "id"

    def __post_init__(self) -> None:
        render.render_spec(self.image_size)  # ValueError for an unsupported resolution
        if self.kind not in shifts.KINDS:
            raise ValueError(f"unknown shift kind {self.kind!r}; known: {shifts.KINDS}")


def _make_config(image_size: int, kind: str) -> BimodalTrifeaturesShiftConfig:
    return BimodalTrifeaturesShiftConfig(name=f"{image_size}px_{kind}",
                                         description=f"{image_size}x{image_size} images; kind {kind}.",
                                         image_size=image_size, kind=kind)


class BimodalTrifeaturesShift(tfds.core.GeneratorBasedBuilder):
    """Held-out and shifted Bimodal Trifeatures pairs, generated offline (see the module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [_make_config(size, kind) for kind in shifts.KINDS for size in sorted(render.RENDER_SPECS)]
    DEFAULT_CONFIG_NAME = "64px_id"

    def _info(self) -> tfds.core.DatasetInfo:
        names = {"shape": render.SHAPE_NAMES, "texture": render.TEXTURE_NAMES, "color": render.COLOR_NAMES}
        return self.dataset_info_from_configs(
            description=__doc__,
            features=pair_features(self.builder_config.image_size),
            # Examples are kept in the order generated (TFDS would reorder them by a hash of their keys),
            # so the corrupted kinds' pairs are the `id` test split's first pairs, in the same order.
            disable_shuffling=True,
            homepage="https://github.com/Duplums/CoMM",
            citation=_CITATION,
            metadata=tfds.core.MetadataDict(
                held_out={attribute: names[attribute][value] for attribute, value in shifts.HELD_OUT.items()},
                texture_to_color=render.synergy_mapping().tolist()),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        del dl_manager  # generated, nothing to download
        kind = self.builder_config.kind
        splits = ("train", "test") if kind in shifts.ID_KINDS else ("test",)
        return {split: self._generate_examples(shifts.pair_set(kind, split)) for split in splits}

    def _generate_examples(self, pair_set: shifts.PairSet) -> Iterator[tuple[int, dict]]:
        """Renders and PNG-encodes each pool image once (and its corrupted version once), then yields
        the pairs."""
        images, pairs = pair_set.images, pair_set.pairs
        labels = render.pair_labels(images, pairs, render.synergy_mapping())
        image_feature = self.info.features["image_1"]
        used = set(pairs.ravel().tolist())
        first_images = set(pairs[:, 0].tolist())
        clean: dict[int, bytes] = {}
        corrupted: dict[int, bytes] = {}
        for members, pixels in render.iter_rendered_groups(images, render.render_spec(self.builder_config.image_size)):
            for index, image in zip(members.tolist(), pixels):
                if index not in used:
                    continue
                clean[index] = image_feature.encode_example(image)
                if pair_set.corrupt_first and index in first_images:
                    key = tuple(int(field[index]) for field in images)
                    corrupted[index] = image_feature.encode_example(
                        shifts.corrupt(image, pair_set.corrupt_first, key))
        firsts = corrupted if pair_set.corrupt_first else clean
        for pair_id, (first, second) in enumerate(pairs.tolist()):
            example = {name: labels[name][pair_id] for name in LABEL_NAMES}
            example.update(image_1=firsts[first], image_2=clean[second], id=pair_id)
            yield pair_id, example
