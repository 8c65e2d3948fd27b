"""Properties of the tf.data pipelines, checked on a tiny throwaway TFDS dataset built in a tmp dir:
determinism, exact resume, sharding, padded evaluation, record-level errors, and variable-length
sequences padded per batch with masks that make padding invisible to the model."""

from __future__ import annotations

import json

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from comm_jax.batch import BatchSpec, view_specs
from comm_jax.view_recipes import simclr_image_ops
from input_pipeline import augment, pipeline

NUM_TRAIN, NUM_TEST, SIZE = 40, 13, 16
MAX_STEPS, SEQ_FEATURES = 7, 3
BAD_SHAPE_ID, NAN_ID = 7, 11


class TinyPairsForPipelineTest(tfds.core.GeneratorBasedBuilder):
    """Two 16 px images, a float vector, a label and an id per record; configs inject one defect."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=name) for name in ("clean", "bad_shape", "nan")]

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image_a": tfds.features.Image(shape=(None, None, 3)),
            "image_b": tfds.features.Image(shape=(SIZE, SIZE, 3)),
            "vector": tfds.features.Tensor(shape=(6,), dtype=np.float32),
            "sequence": tfds.features.Tensor(shape=(None, SEQ_FEATURES), dtype=np.float32),
            "label": tfds.features.ClassLabel(num_classes=4),
            "id": np.int64,
        }))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(NUM_TRAIN, 0),
                "test": self._generate_examples(NUM_TEST, 1000)}

    def _generate_examples(self, count: int, first_id: int):
        rng = np.random.default_rng(first_id)
        for offset in range(count):
            record_id = first_id + offset
            height = SIZE + 4 if self.builder_config.name == "bad_shape" and record_id == BAD_SHAPE_ID else SIZE
            vector = rng.normal(size=6).astype(np.float32)
            if self.builder_config.name == "nan" and record_id == NAN_ID:
                vector[2] = np.nan
            steps = 2 + record_id % (MAX_STEPS - 1)          # 2 .. 7 steps
            yield record_id, {
                "sequence": rng.normal(size=(steps, SEQ_FEATURES)).astype(np.float32),
                "image_a": rng.integers(0, 256, (height, SIZE, 3), dtype=np.uint8),
                "image_b": rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8),
                "vector": vector, "label": record_id % 4, "id": record_id}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    directory = str(tmp_path_factory.mktemp("tfds"))
    for config in ("clean", "bad_shape", "nan"):
        tfds.builder(f"tiny_pairs_for_pipeline_test/{config}", data_dir=directory).download_and_prepare(
            download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return directory


OPS = {"image": simclr_image_ops(SIZE), "tabular": "gaussian_noise(p=1.0)|drop_steps(p=0.5)"}


def make_cfg(data_dir: str, config: str = "clean", **overrides) -> ml_collections.ConfigDict:
    fields = {
        "name": f"tiny_pairs_for_pipeline_test/{config}", "data_dir": data_dir,
        "train_split": "train",
        "modalities": {"image": "image_a", "tabular": "vector", "ident": "id"},
    }
    return ml_collections.ConfigDict(fields | overrides)


def make_spec(cfg, ops=None, steps=None) -> BatchSpec:
    """Two views of `cfg`'s modalities with `ops` (default OPS); `steps` {modality: length} marks
    variable-length modalities padded to that length."""
    ops = OPS if ops is None else ops
    modalities = tuple(cfg.modalities)
    steps = steps or {}
    shapes = {m: (steps[m], SEQ_FEATURES) if m in steps else () for m in modalities}
    return BatchSpec(input_shapes=shapes, views={v: {m: ops.get(m, "") for m in modalities} for v in ("view1", "view2")},
                     on_device=False, variable_length=tuple(steps))


def train_iterator(cfg, ops=None, steps=None, **kwargs):
    return pipeline.make_train_iterator(cfg, make_spec(cfg, ops, steps), **kwargs)


def take(iterator, count: int) -> list:
    return [next(iterator) for _ in range(count)]


def assert_batches_equal(first: list, second: list) -> None:
    for batch_a, batch_b in zip(first, second, strict=True):
        for view in ("view1", "view2"):
            for modality, array in batch_a["views"][view].items():
                np.testing.assert_array_equal(array, batch_b["views"][view][modality])


def test_train_batches_have_two_views_with_per_host_shapes_and_dtypes(data_dir):
    batch = next(train_iterator(make_cfg(data_dir), batch_size=8, seed=0))
    assert set(batch) == {"views"} and set(batch["views"]) == {"view1", "view2"}
    views = batch["views"]
    for view in views.values():
        assert view["image"].shape == (8, SIZE, SIZE, 3) and view["image"].dtype == np.float32
        assert view["tabular"].shape == (8, 6) and view["tabular"].dtype == np.float32
        assert view["ident"].shape == (8,)
    np.testing.assert_array_equal(views["view1"]["ident"], views["view2"]["ident"])
    assert not np.allclose(views["view1"]["image"], views["view2"]["image"])
    assert not np.allclose(views["view1"]["tabular"], views["view2"]["tabular"])


def test_same_seed_gives_identical_batches_and_another_seed_does_not(data_dir):
    cfg = make_cfg(data_dir)
    first = take(train_iterator(cfg, batch_size=8, seed=3), 2)
    again = take(train_iterator(cfg, batch_size=8, seed=3), 2)
    other = take(train_iterator(cfg, batch_size=8, seed=4), 1)
    assert_batches_equal(first, again)
    assert not np.array_equal(first[0]["views"]["view1"]["image"], other[0]["views"]["view1"]["image"])


def test_resumed_iterator_continues_bit_for_bit_across_an_epoch_boundary(data_dir):
    cfg = make_cfg(data_dir)
    original = train_iterator(cfg, batch_size=12, seed=1)
    take(original, 2)
    state = json.loads(json.dumps(original.get_state()))
    # 40 examples in batches of 12: the next batches cover examples 24..59, crossing into epoch 1.
    continued = take(original, 3)
    from_position = train_iterator(cfg, batch_size=12, seed=1, position=state["position"])
    assert_batches_equal(continued, take(from_position, 3))
    from_state = train_iterator(cfg, batch_size=12, seed=1)
    from_state.set_state(state)
    assert_batches_equal(continued, take(from_state, 3))
    assert from_state.position == original.position == 5


def test_each_epoch_visits_every_record_once_in_a_new_order(data_dir):
    iterator = train_iterator(make_cfg(data_dir), batch_size=8, seed=0)
    ids = np.concatenate([batch["views"]["view1"]["ident"] for batch in take(iterator, 10)])
    first_epoch, second_epoch = ids[:NUM_TRAIN], ids[NUM_TRAIN:]
    assert sorted(first_epoch) == sorted(second_epoch) == list(range(NUM_TRAIN))
    assert not np.array_equal(first_epoch, second_epoch)


def test_process_shards_are_disjoint_equal_sized_and_cover_the_split(data_dir):
    count = 3
    per_process = NUM_TRAIN // count
    cfg = make_cfg(data_dir, modalities={"ident": "id"})
    shards = [next(train_iterator(
        cfg, ops={}, batch_size=per_process, seed=2, process_index=index,
        process_count=count))["views"]["view1"]["ident"] for index in range(count)]
    union = np.concatenate(shards)
    assert all(len(shard) == per_process for shard in shards)
    assert len(set(union.tolist())) == len(union) == count * per_process
    assert set(union.tolist()) <= set(range(NUM_TRAIN))


def test_state_from_another_stream_is_rejected(data_dir):
    iterator = train_iterator(make_cfg(data_dir), batch_size=8, seed=0)
    state = iterator.get_state() | {"batch_size": 16}
    with pytest.raises(ValueError, match="batch_size"):
        iterator.set_state(state)


def test_eval_batches_are_padded_masked_and_cover_each_record_once_across_hosts(data_dir):
    cfg = make_cfg(data_dir)
    seen, positions, steps = [], [], []
    for index in range(2):
        iterator = pipeline.make_eval_iterator(cfg, "test", batch_size=4, process_index=index,
                                               process_count=2, labels=("label", "id"))
        batches = list(iterator)
        steps.append(len(batches))
        assert len(batches) == len(iterator)
        for batch in batches:
            assert batch["inputs"]["image"].shape == (4, SIZE, SIZE, 3)
            assert batch["inputs"]["image"].dtype == np.float32
            assert batch["mask"].dtype == bool
            np.testing.assert_array_equal(batch["labels"]["label"][batch["mask"]],
                                          batch["labels"]["id"][batch["mask"]] % 4)
            seen.extend(batch["labels"]["id"][batch["mask"]].tolist())
            np.testing.assert_array_equal(batch["index"] >= 0, batch["mask"])
            assert all(p % 2 == index for p in batch["index"][batch["mask"]])
            positions.extend(batch["index"][batch["mask"]].tolist())
    assert steps == [2, 2]
    assert sorted(seen) == list(range(1000, 1000 + NUM_TEST))
    assert sorted(positions) == list(range(NUM_TEST))      # "index": the example's position in the split


def test_eval_inputs_are_not_augmented(data_dir):
    cfg = make_cfg(data_dir)
    first, second = (next(iter(pipeline.make_eval_iterator(cfg, "test", batch_size=4)))
                     for _ in range(2))
    np.testing.assert_array_equal(first["inputs"]["image"], second["inputs"]["image"])
    assert abs(float(np.mean(first["inputs"]["image"]))) < 1.5  # ImageNet-normalised


@augment.register("add_label_for_pipeline_test")
def _add_label():
    """Throwaway op reading a feature that is no modality: pixel values (0..255) plus the record's label."""
    return augment.reads_features(
        lambda x, seed, features: tf.cast(x, tf.float32) + tf.cast(features["label"], tf.float32), ["label"])


def test_ops_that_read_example_features_get_them_in_training_and_evaluation(data_dir):
    cfg = make_cfg(data_dir, eval_ops={"image": "add_label_for_pipeline_test|to_float"})
    plain = make_cfg(data_dir, eval_ops={"image": "to_float"})
    batch = next(train_iterator(cfg, ops={"image": "flip_lr(p=0.0)|add_label_for_pipeline_test"}, batch_size=8, seed=0))
    for view in batch["views"].values():
        shift = view["image"] - (view["ident"] % 4)[:, None, None, None]
        np.testing.assert_array_equal(shift, np.round(shift))        # raw pixels plus exactly the label
        assert shift.min() >= 0 and shift.max() <= 255 and len(set(view["ident"] % 4)) > 1
    got, raw = (next(iter(pipeline.make_eval_iterator(c, "test", batch_size=4, labels=("id",)))) for c in (cfg, plain))
    label = (got["labels"]["id"] % 4)[:, None, None, None]
    np.testing.assert_array_equal(got["inputs"]["image"], raw["inputs"]["image"] * 255 + label)


@pytest.mark.parametrize("config, modalities, pattern", [
    ("bad_shape", {"image": "image_a"}, f"id={BAD_SHAPE_ID} .*'image_a'.*shape"),
    ("nan", {"tabular": "vector"}, f"id={NAN_ID} .*'vector'.*NaN"),
    ("clean", {"image": "image_a", "text": "no_such_feature"}, "no_such_feature"),
])
def test_corrupt_records_raise_errors_naming_record_and_field(data_dir, config, modalities, pattern):
    cfg = make_cfg(data_dir, config, modalities=modalities)
    with pytest.raises(ValueError, match=pattern):
        train_iterator(cfg, ops={}, batch_size=4, seed=0)


def test_view_entry_for_an_unknown_modality_or_a_missing_view_is_rejected():
    data = ml_collections.ConfigDict({"views": {"view1": {"imag": "flip_lr"}, "view2": {}}})
    with pytest.raises(ValueError, match=r"views.view1 has entries \['imag'\]"):
        view_specs(data, ("view1", "view2"), ("image",))
    with pytest.raises(ValueError, match=r"lacks the view\(s\) \['weak'\]"):
        view_specs(data, ("weak",), ("image",))


def sequence_lengths(ids: np.ndarray) -> np.ndarray:
    return 2 + ids % (MAX_STEPS - 1)


def test_variable_length_sequences_are_padded_per_batch_with_masks(data_dir):
    cfg = make_cfg(data_dir, modalities={"sequence": "sequence", "ident": "id"})
    batch = next(train_iterator(cfg, ops={"sequence": "gaussian_noise(std=0.1, p=1.0)"}, steps={"sequence": 9},
                                batch_size=8, seed=0))
    lengths = sequence_lengths(batch["views"]["view1"]["ident"])
    for view in ("view1", "view2"):
        x, valid = batch["views"][view]["sequence"], batch["valid"][view]["sequence"]
        assert x.shape == (8, 9, SEQ_FEATURES) and valid.shape == (8, 9) and valid.dtype == bool
        np.testing.assert_array_equal(valid, np.arange(9)[None] < lengths[:, None])
        assert np.all(x[~valid] == 0) and np.all(np.abs(x[valid]).sum(-1) > 0)
    evaluation = next(iter(pipeline.make_eval_iterator(cfg, "test", batch_size=4, steps={"sequence": 5},
                                                       labels=("id",))))
    lengths = np.minimum(sequence_lengths(evaluation["labels"]["id"]), 5)     # longer ones are cut
    np.testing.assert_array_equal(evaluation["valid"]["sequence"], np.arange(5)[None] < lengths[:, None])


def test_padding_never_changes_an_embedding_from_pipeline_to_z(data_dir):
    """Each test example through the eval pipeline padded to 7 and to 12 steps, then through the
    fusion model with its masks, gives the Z of the example's own steps alone, unpadded."""
    import jax.numpy as jnp
    from comm_jax.models import build_model

    model_cfg = ml_collections.ConfigDict(dict(
        modalities=("sequence", "tabular"), width=16, depth=1, heads=2, head_hidden=16, head_out=8,
        encoders={"sequence": dict(encoder="transformer", encoder_args=dict(width=16, depth=1, heads=2),
                                   input_shape=(MAX_STEPS, SEQ_FEATURES), variable_length=True),
                  "tabular": dict(encoder="none", adapter="tabular", input_shape=(6,))}))
    model = build_model(model_cfg, seed=1)
    model.eval()
    cfg = make_cfg(data_dir, modalities={"sequence": "sequence", "tabular": "vector"})
    zs = {}
    for steps in (MAX_STEPS, 12):
        batch = next(iter(pipeline.make_eval_iterator(cfg, "test", batch_size=NUM_TEST, steps={"sequence": steps})))
        zs[steps] = np.asarray(model.embed({k: jnp.asarray(v) for k, v in batch["inputs"].items()},
                                           valid={"sequence": jnp.asarray(batch["valid"]["sequence"])}))
        lengths = batch["valid"]["sequence"].sum(axis=1)
    alone = np.stack([np.asarray(model.embed({"sequence": jnp.asarray(batch["inputs"]["sequence"][i:i + 1, :n]),
                                              "tabular": jnp.asarray(batch["inputs"]["tabular"][i:i + 1])}))[0]
                      for i, n in enumerate(lengths)])
    assert len(set(lengths.tolist())) > 2
    np.testing.assert_allclose(zs[MAX_STEPS], alone, atol=1e-5)
    np.testing.assert_allclose(zs[12], alone, atol=1e-5)
