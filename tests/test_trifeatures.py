"""Behavioural tests of the Bimodal Trifeatures TFDS builder and its numpy renderer.

The builds use the 32px configs in a temporary data_dir, generated once for the whole module.
"""

import numpy as np
import pytest
import tensorflow_datasets as tfds

import input_pipeline  # noqa: F401  (registers bimodal_trifeatures)
from configs import trifeatures as trifeatures_config
from input_pipeline import trifeatures
from input_pipeline import trifeatures_render as render

SIZE = 32
SPLITS = ("train", "test")
CLASS_LABELS = ("shape", "texture_1", "texture_2", "color_1", "color_2")
GREY_LEVEL = 127.5  # 0.5 * 255 before truncation to uint8


def _combination_key(shape: np.ndarray, color: np.ndarray, texture: np.ndarray) -> np.ndarray:
    return (np.asarray(shape) * 100 + np.asarray(color) * 10 + np.asarray(texture)).astype(int)


def _load(builder: tfds.core.DatasetBuilder, split: str, decode_images: bool = True) -> dict:
    decoders = None if decode_images else {
        "image_1": tfds.decode.SkipDecoding(), "image_2": tfds.decode.SkipDecoding()}
    return tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, decoders=decoders))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def builders(data_dir) -> dict[str, tfds.core.DatasetBuilder]:
    """The unbiased and biased 32px builds, each generated independently."""
    built = {}
    for name in ("32px", "32px_biased"):
        builder = tfds.builder(f"bimodal_trifeatures/{name}", data_dir=data_dir)
        builder.download_and_prepare()
        built[name] = builder
    return built


@pytest.fixture(scope="module")
def datasets(builders) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """datasets[config][split][feature]: whole splits as numpy arrays, images decoded."""
    return {name: {split: _load(builder, split) for split in SPLITS}
            for name, builder in builders.items()}


@pytest.fixture(scope="module")
def renders_by_combination() -> dict[int, set[bytes]]:
    """Combination key -> raw bytes of each of its renders, rendered directly (no TFDS)."""
    lookup: dict[int, set[bytes]] = {}
    for split in SPLITS:
        images = render.split_images(split)
        pixels = render.render_images(images, render.render_spec(SIZE))
        keys = _combination_key(images.shape, images.color, images.texture)
        for key, image in zip(keys.tolist(), pixels):
            lookup.setdefault(key, set()).add(image.tobytes())
    return lookup


def test_rendering_is_deterministic_and_independent_of_what_else_is_rendered():
    images = render.split_images("test")
    spec = render.render_spec(SIZE)
    first = render.render_images(images, spec)
    second = render.render_images(images, spec)
    assert first.tobytes() == second.tobytes()
    subset = np.arange(0, len(images), 7)[::-1]  # another batch composition and order
    alone = render.render_images(render.ImageAttributes(*(field[subset] for field in images)), spec)
    np.testing.assert_array_equal(alone, first[subset])


def test_two_generations_give_byte_identical_images(builders):
    """The biased build's test split is generated separately but must equal the unbiased one."""
    unbiased = _load(builders["32px"], "test", decode_images=False)
    biased = _load(builders["32px_biased"], "test", decode_images=False)
    order_unbiased, order_biased = np.argsort(unbiased["id"]), np.argsort(biased["id"])
    for feature in unbiased:
        same = list(unbiased[feature][order_unbiased]) == list(biased[feature][order_biased])
        assert same, feature


@pytest.mark.parametrize("config", ["32px", "32px_biased"])
def test_both_images_of_every_pair_are_renders_of_their_labels(datasets, renders_by_combination,
                                                              config):
    """So both images of a pair have the pair's shape, and the per-image labels are right."""
    for split in SPLITS:
        data = datasets[config][split]
        for image_name, color, texture in (("image_1", "color_1", "texture_1"),
                                           ("image_2", "color_2", "texture_2")):
            keys = _combination_key(data["shape"], data[color], data[texture])
            mismatches = sum(image.tobytes() not in renders_by_combination[key]
                             for key, image in zip(keys.tolist(), data[image_name]))
            assert mismatches == 0, (config, split, image_name)


def test_combination_split_is_800_train_200_test_disjoint_and_fixed(datasets):
    train, test = render.combination_split()
    train_keys = set(_combination_key(*train.T).tolist())
    test_keys = set(_combination_key(*test.T).tolist())
    assert (len(train_keys), len(test_keys)) == (800, 200)
    assert not train_keys & test_keys and len(train_keys | test_keys) == 1000
    again_train, again_test = render.combination_split()
    np.testing.assert_array_equal(again_train, train)
    np.testing.assert_array_equal(again_test, test)
    for config, splits in datasets.items():
        for split, expected in (("train", train_keys), ("test", test_keys)):
            data = splits[split]
            used = set()
            for color, texture in (("color_1", "texture_1"), ("color_2", "texture_2")):
                used |= set(_combination_key(data["shape"], data[color], data[texture]).tolist())
            assert used <= expected, (config, split)
    assert used == test_keys  # the test split uses every test combination


def test_test_split_is_exactly_every_ordered_same_shape_pair(datasets):
    _, test = render.combination_split()
    expected = {(tuple(first), tuple(second)) for first in test.tolist() for second in test.tolist()
                if first[0] == second[0]}  # self-pairs included, as the reference
    for config in datasets:
        data = datasets[config]["test"]
        pairs = list(zip(zip(data["shape"].tolist(), data["color_1"].tolist(),
                             data["texture_1"].tolist()),
                         zip(data["shape"].tolist(), data["color_2"].tolist(),
                             data["texture_2"].tolist())))
        assert len(pairs) == len(set(pairs)) == len(expected)
        assert set(pairs) == expected


def test_split_sizes_and_ids(datasets, builders):
    for config, builder in builders.items():
        assert builder.info.splits["train"].num_examples == render.MAX_PAIRS
        for split in SPLITS:
            ids = datasets[config][split]["id"]
            np.testing.assert_array_equal(np.sort(ids), np.arange(len(ids)))


def test_labels_are_in_range(datasets, builders):
    features = builders["32px"].info.features
    assert features["shape"].names == list(render.SHAPE_NAMES)
    assert features["texture_1"].names == list(render.TEXTURE_NAMES)
    assert features["color_2"].names == list(render.COLOR_NAMES)
    assert features["synergy"].num_classes == 2
    for splits in datasets.values():
        for data in splits.values():
            for label in CLASS_LABELS:
                assert data[label].min() >= 0 and data[label].max() < render.NUM_VALUES, label
            assert set(np.unique(data["synergy"]).tolist()) <= {0, 1}


def test_synergy_is_about_ten_percent_positive_on_unbiased_splits(datasets):
    for data in (datasets["32px"]["train"], datasets["32px"]["test"],
                 datasets["32px_biased"]["test"]):
        assert 0.07 < data["synergy"].mean() < 0.14


def test_biased_train_split_always_satisfies_the_mapping(datasets):
    data = datasets["32px_biased"]["train"]
    mapping = render.synergy_mapping()
    assert np.all(data["synergy"] == 1)
    np.testing.assert_array_equal(data["color_2"], mapping[data["texture_1"]])


def test_mapping_is_the_same_for_biased_and_unbiased_builds(datasets, builders):
    mapping = render.synergy_mapping()
    assert sorted(mapping.tolist()) == list(range(render.NUM_VALUES))  # one colour per texture
    for builder in builders.values():
        assert list(builder.info.metadata["texture_to_color"]) == mapping.tolist()
    biased_train = datasets["32px_biased"]["train"]
    for texture in range(render.NUM_VALUES):
        paired_colors = set(biased_train["color_2"][biased_train["texture_1"] == texture].tolist())
        assert paired_colors == {mapping[texture]}
    for splits in datasets.values():
        for data in splits.values():
            np.testing.assert_array_equal(
                data["synergy"], (data["color_2"] == mapping[data["texture_1"]]).astype(int))


def test_images_are_uint8_rgb_of_the_configured_size(datasets):
    for splits in datasets.values():
        for data in splits.values():
            for name in ("image_1", "image_2"):
                images = data[name]
                assert images.dtype == np.uint8 and images.shape[1:] == (SIZE, SIZE, 3)
                spread = images.reshape(len(images), -1)
                assert np.all(spread.max(axis=1) > spread.min(axis=1))  # never a blank image


def _shift_from_grey(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float64) - GREY_LEVEL  # [N, H, W, 3]


def test_background_is_grey_and_other_pixels_blend_grey_with_the_colour(datasets):
    data = datasets["32px"]["test"]
    shift = _shift_from_grey(data["image_1"])
    colour_shift = render.COLOR_RGB[data["color_1"]].astype(np.float64) * 255 - GREY_LEVEL
    colour_shift = colour_shift[:, None, None, :]
    coverage = (shift * colour_shift).sum(-1) / (colour_shift ** 2).sum(-1)
    residual = np.linalg.norm(shift - coverage[..., None] * colour_shift, axis=-1)
    assert residual.max() < 2.0  # uint8 truncation only
    assert coverage.min() > -0.02 and coverage.max() < 1.01
    grey = np.all(data["image_1"] == 127, axis=-1)
    assert grey.mean(axis=(1, 2)).min() > 0.5  # the shape never fills half the image


def test_colour_is_recoverable_from_the_mean_shift_from_grey(datasets):
    data = datasets["32px"]["test"]
    mean_shift = _shift_from_grey(data["image_2"]).mean(axis=(1, 2))  # [N, 3]
    colour_shifts = render.COLOR_RGB.astype(np.float64) * 255 - GREY_LEVEL  # [10, 3]
    cosine = (mean_shift / np.linalg.norm(mean_shift, axis=-1, keepdims=True)) @ (
        colour_shifts / np.linalg.norm(colour_shifts, axis=-1, keepdims=True)).T
    assert np.mean(cosine.argmax(axis=-1) == data["color_2"]) > 0.99


@pytest.mark.parametrize("texture, density", [
    ("solid", 1.0), ("stripes", 0.3), ("grid", 0.51), ("dots", np.pi * 0.4 ** 2),
    ("noise", 0.5), ("triangles", 0.32), ("zigzags", 0.4)])
@pytest.mark.parametrize("size", sorted(render.RENDER_SPECS))
def test_texture_covers_the_fraction_of_the_shape_its_pattern_predicts(texture, density, size):
    """White squares: the lit area over the square's area recovers the texture's duty cycle, at every size."""
    renders = 10
    images = render.ImageAttributes(
        shape=np.full(renders, render.SHAPE_NAMES.index("square")),
        color=np.full(renders, render.COLOR_NAMES.index("white")),
        texture=np.full(renders, render.TEXTURE_NAMES.index(texture)),
        render=np.arange(renders))
    pixels = render.render_images(images, render.render_spec(size))
    coverage = _shift_from_grey(pixels).mean(-1) / (255 - GREY_LEVEL)
    square_area = (render.TEMPLATE_FRACTION * size) ** 2
    assert coverage.sum(axis=(1, 2)).mean() / square_area == pytest.approx(density, abs=0.05)


def test_builder_configs_cover_resolutions_and_bias(data_dir):
    expected = {f"{size}px{suffix}": (size, suffix == "_biased")
                for size in (32, 64, 128, 224) for suffix in ("", "_biased")}
    configs = {config.name: (config.image_size, config.biased)
               for config in trifeatures.BimodalTrifeatures.BUILDER_CONFIGS}
    assert configs == expected
    assert sorted(trifeatures_config.RESOLUTIONS) == sorted({size for size, _ in expected.values()})
    builder = tfds.builder("bimodal_trifeatures/64px", data_dir=data_dir)  # no generation
    assert builder.info.features["image_2"].shape == (64, 64, 3)


def test_bad_arguments_raise_value_errors_that_name_them():
    with pytest.raises(ValueError, match="image_size 48"):
        render.render_spec(48)
    with pytest.raises(ValueError, match="image_size 48"):
        trifeatures.BimodalTrifeaturesConfig(name="48px", image_size=48)
    with pytest.raises(ValueError, match="split 'validation'"):
        render.split_images("validation")
    with pytest.raises(ValueError, match="max_pairs"):
        render.sample_pairs(render.split_images("test"), max_pairs=0)
