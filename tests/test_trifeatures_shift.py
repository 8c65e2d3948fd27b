"""The shifted Bimodal Trifeatures builder holds out exactly what it claims: the held-out values never
reach the ID splits and appear only in the images a kind names; synergy pairs break M while each
image stays ID; blanked, noisy and blurred images are what they say; generation is deterministic.
Everything is built at 32 px once for the module."""

import numpy as np
import pytest
import tensorflow_datasets as tfds
from scipy.ndimage import gaussian_filter

import input_pipeline  # noqa: F401  (registers the builders)
from input_pipeline import trifeatures_render as render
from input_pipeline import trifeatures_shift_pairs as shifts

SIZE = 32
HELD = {"shape": 3, "texture": 4, "color": 1}   # circle, dots, green: written out, not read from the module
M = render.synergy_mapping()


def _load(data_dir, kind, split, decode=True):
    builder = tfds.builder(f"bimodal_trifeatures_shift/{SIZE}px_{kind}", data_dir=data_dir)
    decoders = None if decode else {"image_1": tfds.decode.SkipDecoding(), "image_2": tfds.decode.SkipDecoding()}
    return tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, decoders=decoders))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("tfds_shift"))
    for kind in shifts.KINDS:
        tfds.builder(f"bimodal_trifeatures_shift/{SIZE}px_{kind}", data_dir=directory).download_and_prepare()
    return directory


@pytest.fixture(scope="module")
def data(data_dir):
    """data[kind][split]: whole splits as numpy arrays."""
    return {kind: {split: _load(data_dir, kind, split)
                   for split in (("train", "test") if kind in shifts.ID_KINDS else ("test",))}
            for kind in shifts.KINDS}


def _held(split, image):
    """bool [P, 3]: image `image` (1 or 2) of each pair shows the held-out shape / texture / colour."""
    return np.stack([split["shape"] == HELD["shape"], split[f"texture_{image}"] == HELD["texture"],
                     split[f"color_{image}"] == HELD["color"]], axis=1)


def test_held_out_values_are_the_documented_ones_and_keep_the_mapping_a_bijection_on_the_rest():
    assert shifts.HELD_OUT == HELD
    assert M[HELD["texture"]] == HELD["color"]
    rest = [t for t in range(10) if t != HELD["texture"]]
    assert sorted(M[rest]) == [c for c in range(10) if c != HELD["color"]]


@pytest.mark.parametrize("kind", shifts.ID_KINDS)
def test_id_splits_never_show_a_held_out_value(data, kind):
    for split in data[kind].values():
        assert len(split["shape"]) > 200
        assert not _held(split, 1).any() and not _held(split, 2).any()


def test_id_test_split_is_every_ordered_same_shape_pair_of_id_test_images(data):
    _, test = render.combination_split()
    kept = [tuple(c) for c in test.tolist() if c[0] != HELD["shape"] and c[1] != HELD["color"] and c[2] != HELD["texture"]]
    expected = {(a, b) for a in kept for b in kept if a[0] == b[0]}
    split = data["id"]["test"]
    got = list(zip(zip(split["shape"].tolist(), split["color_1"].tolist(), split["texture_1"].tolist()),
                   zip(split["shape"].tolist(), split["color_2"].tolist(), split["texture_2"].tolist())))
    assert len(got) == len(set(got)) and set(got) == expected


def test_biased_id_pairs_all_follow_the_mapping(data):
    for split in data["id_biased"].values():
        np.testing.assert_array_equal(M[split["texture_1"]], split["color_2"])
        assert (split["synergy"] == 1).all()


@pytest.mark.parametrize("kind,attribute,column", [("texture_1", "texture", 1), ("color_1", "color", 2),
                                                   ("texture_both", "texture", 1), ("color_both", "color", 2),
                                                   ("shape_both", "shape", 0)])
def test_novel_value_appears_only_in_the_images_the_kind_names(data, kind, attribute, column):
    split = data[kind]["test"]
    first, second = _held(split, 1), _held(split, 2)
    assert len(split["shape"]) > 500
    assert first[:, column].all()
    assert not np.delete(first, column, axis=1).any() and not np.delete(second, column, axis=1).any()
    if kind.endswith("_1"):
        assert not second.any()                       # image 2 is fully in distribution
    else:
        assert second[:, column].all()


@pytest.mark.parametrize("kind", ["texture_1", "shape_both", "synergy"])
def test_shifted_images_are_renders_of_their_labels(data, kind):
    split = data[kind]["test"]
    for image in (1, 2):
        attributes = render.ImageAttributes(shape=split["shape"][:40], color=split[f"color_{image}"][:40],
                                            texture=split[f"texture_{image}"][:40], render=np.zeros(40, np.int64))
        np.testing.assert_array_equal(split[f"image_{image}"][:40],
                                      render.render_images(attributes, render.render_spec(SIZE)))


def test_synergy_pairs_break_the_mapping_and_each_image_alone_is_in_distribution(data):
    split = data["synergy"]["test"]
    assert len(split["shape"]) == shifts.MAX_SHIFT_PAIRS
    assert (M[split["texture_1"]] != split["color_2"]).all() and (split["synergy"] == 0).all()
    assert not _held(split, 1).any() and not _held(split, 2).any()
    biased = data["id_biased"]["train"]
    for image in (1, 2):           # every texture and colour of the pairs was seen in biased pretraining
        for attribute in ("texture", "color"):
            assert set(split[f"{attribute}_{image}"]) <= set(biased[f"{attribute}_{image}"])


@pytest.mark.parametrize("kind", ["blank_1", "noise_1", "blur_1"])
def test_corrupted_kinds_are_the_id_test_pairs_with_only_image_1_changed(data, kind):
    clean, shifted = data["id"]["test"], data[kind]["test"]
    n = len(shifted["shape"])
    assert n == shifts.MAX_SHIFT_PAIRS
    for key in ("image_2", "shape", "texture_1", "texture_2", "color_1", "color_2", "synergy"):
        np.testing.assert_array_equal(shifted[key], clean[key][:n])
    assert (shifted["image_1"] != clean["image_1"][:n]).any(axis=(1, 2, 3)).mean() > 0.99


def test_blank_image_is_uniform_background_grey(data):
    assert (data["blank_1"]["test"]["image_1"] == 127).all()


def test_noise_has_the_documented_spread_on_the_background(data):
    clean = data["id"]["test"]["image_1"][:200].astype(float)
    noisy = data["noise_1"]["test"]["image_1"][:200].astype(float)
    background = clean == 127
    assert 0.22 * 255 < np.std(noisy[background] - clean[background]) < 0.27 * 255
    assert abs(np.mean(noisy[background] - clean[background])) < 2


def test_blur_matches_a_gaussian_filter_of_the_clean_image(data):
    clean = data["id"]["test"]["image_1"][:50].astype(float)
    blurred = data["blur_1"]["test"]["image_1"][:50].astype(float)
    sigma = SIZE / 16
    reference = gaussian_filter(clean, sigma=(0, sigma, sigma, 0), mode="nearest", truncate=3.0)
    assert np.abs(blurred - reference).max() <= 1.0
    detail = lambda x: np.abs(np.diff(x, axis=2)).mean()
    assert detail(blurred) < 0.5 * detail(clean)


def test_generation_is_deterministic(data_dir, tmp_path):
    for kind, split in (("noise_1", "test"), ("texture_1", "test"), ("id_biased", "test")):
        again = str(tmp_path / kind)
        tfds.builder(f"bimodal_trifeatures_shift/{SIZE}px_{kind}", data_dir=again).download_and_prepare()
        first, second = _load(data_dir, kind, split, decode=False), _load(again, kind, split, decode=False)
        for feature in first:
            assert list(first[feature]) == list(second[feature]), (kind, feature)


def test_unknown_kind_or_split_is_an_error_naming_it():
    with pytest.raises(ValueError, match="kind 'rotation'"):
        shifts.pair_set("rotation", "test")
    with pytest.raises(ValueError, match="no split 'train'"):
        shifts.pair_set("texture_1", "train")
    from input_pipeline.trifeatures_shift import BimodalTrifeaturesShiftConfig
    with pytest.raises(ValueError, match="kind 'rotation'"):
        BimodalTrifeaturesShiftConfig(name="x", kind="rotation")
