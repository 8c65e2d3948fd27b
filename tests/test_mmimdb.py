"""MM-IMDb from tiny files in both original formats: the genres and plots the builders store, clear errors on
missing or malformed files, frozen-tower feature extraction (with a test double of the CLIP towers) that
resumes from its complete shards, then `configs/mmimdb.py` training and the multi-label probe's F1 scores."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn.metrics import f1_score

import input_pipeline  # noqa: F401  (registers the builders)
from comm_jax import evaluate as evaluate_mod
from comm_jax import extract_features
from comm_jax import train as train_mod
from comm_jax.evaluators.linear_probe import linear_probe
from configs import mmimdb as mmimdb_config
from input_pipeline import mmimdb, mmimdb_features
from input_pipeline.manual_files import MalformedFileError
from tests import mmimdb_fakes as fakes


def prepared(name: str, manual_dir: str, data_dir: str):
    builder = tfds.builder(name, data_dir=data_dir)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    return builder


def examples_by_id(builder, split: str) -> dict[str, dict]:
    return {e["imdb_id"].decode(): e for e in builder.as_dataset(split=split).as_numpy_iterator()}


def expected_genres(names) -> np.ndarray:
    return np.array([g in {n.lower() for n in names} for g in mmimdb.GENRES], np.int64)


def test_both_formats_give_the_same_genres_in_the_reference_order_and_the_longest_plot(tmp_path):
    ids = fakes.write_original(str(tmp_path / "original"))
    fakes.write_hdf5(str(tmp_path / "hdf5"))
    original = prepared("mmimdb/original", str(tmp_path / "original"), str(tmp_path / "tfds"))
    hdf5 = prepared("mmimdb/hdf5", str(tmp_path / "hdf5"), str(tmp_path / "tfds"))
    assert list(mmimdb.GENRES) == sorted(mmimdb.GENRES) and len(mmimdb.GENRES) == 23   # MultiLabelBinarizer's
    for split, count in fakes.COUNTS.items():
        assert original.info.splits[split].num_examples == hdf5.info.splits[split].num_examples == count
    rows, h5_rows = examples_by_id(original, "train"), examples_by_id(hdf5, "train")
    assert sorted(rows) == ids["train"]
    for imdb_id, row in rows.items():
        with open(tmp_path / "original" / "dataset" / f"{imdb_id}.json") as handle:
            meta = json.load(handle)
        np.testing.assert_array_equal(row["genres"], expected_genres(meta["genres"]))   # Reality-TV ignored
        np.testing.assert_array_equal(h5_rows[imdb_id]["genres"], row["genres"])
        assert row["plot"].decode() == max(meta["plot"], key=len)
        assert h5_rows[imdb_id]["plot"] == row["plot"]        # read back from "sequences" + metadata.npy
        assert row["image"].shape[-1] == 3                    # the greyscale poster stored as RGB
    assert rows["0000001"]["image"].shape == (28, 20, 3) and h5_rows["0000001"]["image"].shape == (32, 20, 3)
    assert h5_rows["0000001"]["word2vec"].shape == (300,)


def test_hdf5_without_split_attribute_uses_multibench_ranges(tmp_path):
    path = fakes.write_hdf5(str(tmp_path), split_attribute=False)
    with h5py.File(path, "r") as handle:
        with pytest.raises(MalformedFileError, match=r"multimodal_imdb\.hdf5: 24 examples and no 'split' attribute"):
            mmimdb.hdf5_split_ranges(handle, path, 24)
        ranges = mmimdb.hdf5_split_ranges(handle, path, 25959)
    assert ranges == {"train": (0, 15552), "dev": (15552, 18160), "test": (18160, 25959)}


def test_hdf5_posters_read_in_chunks_are_the_files_rows(tmp_path):
    fakes.write_hdf5(str(tmp_path))
    path, data, ranges = mmimdb.read_hdf5(str(tmp_path))
    vocabulary = mmimdb.read_vocabulary(str(tmp_path))
    whole = list(mmimdb.hdf5_examples(path, data, *ranges["test"], vocabulary))
    chunked = list(mmimdb.hdf5_examples(path, data, *ranges["test"], vocabulary, chunk=4))
    with h5py.File(path, "r") as handle:
        posters = handle["images"][ranges["test"][0]:ranges["test"][1]]
    assert len(whole) == len(chunked) == fakes.COUNTS["test"]
    for a, b, poster in zip(whole, chunked, posters):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["image"], poster.transpose(1, 2, 0))     # [3, H, W] -> [H, W, 3]
        assert a["imdb_id"] == b["imdb_id"] and a["plot"] == b["plot"]


def _set_json(path, edit):
    with open(path) as handle:
        data = json.load(handle)
    edit(data)
    with open(path, "w") as handle:
        json.dump(data, handle)


@pytest.mark.parametrize("name, write, match", [
    ("original", lambda d: None, r"manual directory .* does not exist or is empty"),
    ("original", lambda d: (fakes.write_original(d), os.remove(os.path.join(d, "split.json"))),
     r"expected the original file 'split\.json'"),
    ("original", lambda d: (fakes.write_original(d), _set_json(os.path.join(d, "split.json"), lambda s: s.pop("dev"))),
     r"split\.json: missing field 'dev'"),
    ("original", lambda d: (fakes.write_original(d), _set_json(os.path.join(d, "dataset", "0000013.json"),
                                                                 lambda m: m.pop("genres"))),
     r"0000013\.json: missing field 'genres'"),
    ("original", lambda d: (fakes.write_original(d), os.remove(os.path.join(d, "dataset", "0000020.jpeg"))),
     r"expected the original file '0000020\.jpeg'"),
    ("original", lambda d: (fakes.write_original(d), open(os.path.join(d, "dataset", "0000002.jpeg"), "wb").write(b"no")),
     r"0000002\.jpeg: not a readable JPEG"),
    ("hdf5", lambda d: fakes.write_hdf5(d, drop="genres"), r"multimodal_imdb\.hdf5: missing field\(s\) \['genres'\]"),
    ("hdf5", lambda d: fakes.write_hdf5(d, target_names=False), r"field 'genres' lacks the attribute 'target_names'"),
    ("hdf5", lambda d: open(os.path.join(d, "multimodal_imdb.hdf5"), "wb").write(b"x"), r"not a readable HDF5"),
])
def test_missing_or_malformed_files_name_the_file_and_field(tmp_path, name, write, match):
    manual = tmp_path / "manual"
    manual.mkdir()
    write(str(manual))
    with pytest.raises((FileNotFoundError, MalformedFileError), match=match):
        prepared(f"mmimdb/{name}", str(manual), str(tmp_path / "tfds"))


def test_multilabel_probe_thresholds_at_one_half_and_its_f1_is_scikit_learns():
    """Weighted and macro F1 of the probe's 0/1 predictions match F1 computed by hand and scikit-learn's."""
    rng = np.random.default_rng(0)
    labels = (rng.uniform(size=(300, 5)) < [0.5, 0.3, 0.2, 0.1, 0.4]).astype(np.int64)
    features = labels @ rng.normal(size=(5, 8)) + rng.normal(0, 1.0, size=(300, 8))
    result = linear_probe(features[:200], labels[:200], features[200:], labels[200:], Cs=(0.1, 1.0))
    assert result.kind == "multilabel" and set(np.unique(result.predictions)) <= {0, 1}
    truth, predicted = labels[200:], result.predictions
    tp = (truth * predicted).sum(0)
    per_class = np.where(truth.sum(0) + predicted.sum(0) > 0, 2 * tp / np.maximum(truth.sum(0) + predicted.sum(0), 1), 0)
    support = truth.sum(0)
    assert result.metrics["f1_macro"] == pytest.approx(per_class.mean())
    assert result.metrics["f1_weighted"] == pytest.approx((per_class * support).sum() / support.sum())
    assert result.metrics["f1_weighted"] == pytest.approx(f1_score(truth, predicted, average="weighted"))
    assert result.metrics["f1_macro"] == pytest.approx(f1_score(truth, predicted, average="macro"))


def test_text_lengths_end_at_the_last_token():
    ids = np.array([[1, 5, 100, 0, 0], [1, 100, 0, 0, 0], [1, 2, 3, 4, 100], [0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(extract_features.text_lengths(ids), [3, 2, 5, 0])


class PooledTowers(fakes.FakeClipTowers):
    """A wrong double: one pooled vector per image instead of tokens."""

    def image_tokens(self, images):
        return super().image_tokens(images).mean(axis=1)


def test_towers_giving_pooled_vectors_are_refused():
    runner = extract_features.TowerRunner(PooledTowers(), batch_size=8)
    with pytest.raises(ValueError, match=r"image tokens \[batch, T, D\] .* got \(2, 16\)"):
        runner(np.zeros((2, 16, 16, 3), np.float32), ["a plot", "another plot"])


def test_extraction_resumes_from_complete_shards_then_comm_trains_and_probes(tmp_path):
    fakes.write_original(str(tmp_path / "manual"))
    output, towers = str(tmp_path / "features"), fakes.FakeClipTowers()
    kwargs = dict(output=output, manual_dir=str(tmp_path / "manual"), data_dir=str(tmp_path / "tfds"),
                  batch_size=8, examples_per_shard=8, encoder_name="fake")
    manifest = extract_features.extract(towers, prepare_tfds=False, **kwargs)
    assert manifest["splits"]["train"] == {"examples": 12, "shards": 2}
    assert manifest["image_tokens"] == [17, 16] and manifest["text_tokens"] == [12, 16]
    shards = os.path.join(output, "shards")
    second = mmimdb_features.shard_path(shards, "train", 1, 2)
    before = mmimdb_features.read_shard(second)
    os.remove(second)
    calls = towers.image_calls
    extract_features.extract(towers, **kwargs)                      # only the missing shard is computed
    assert towers.image_calls == calls + 1
    after = mmimdb_features.read_shard(second)
    for field in mmimdb_features.SHARD_FIELDS:
        np.testing.assert_array_equal(before[field], after[field])
    with pytest.raises(ValueError, match=r"manifest\.json was written for other settings \(\['examples_per_shard'\]"):
        extract_features.extract(towers, **{**kwargs, "examples_per_shard": 16})

    features = tfds.builder("mmimdb_features", data_dir=os.path.join(output, "tfds"))
    rows = list(features.as_dataset(split="test").as_numpy_iterator())
    assert len(rows) == 9 and rows[0]["image"].shape == (17, 16) and rows[0]["image"].dtype == np.float16
    assert all(1 < len(r["text"]) <= 12 for r in rows)              # tokens up to the end of the plot

    cfg = mmimdb_config.get_config(f"features={output},cpu")
    assert cfg.model.encoders.text.input_shape == (12, 16) and cfg.model.encoders.text.adapter == "linear"
    cfg.num_steps, cfg.batch_size, cfg.ckpt_every, cfg.log_every, cfg.optimizer.warmup_steps = 3, 8, 3, 1, 1
    cfg.evals.batch_size = 8
    cfg.evals.evaluators.probe.Cs = (1.0,)
    workdir = str(tmp_path / "run")
    last = train_mod.train(cfg, workdir)
    assert last["step"] == 3 and np.isfinite(last["loss"])
    final = evaluate_mod.evaluate(cfg, workdir, timeout=60)[-1]
    assert final["step"] == 3
    assert 0.0 <= final["probe/genres/f1_weighted"] <= 1.0 and 0.0 <= final["probe/genres/f1_macro"] <= 1.0


def test_extraction_reads_the_hdf5_format(tmp_path):
    fakes.write_hdf5(str(tmp_path / "manual"))
    manifest = extract_features.extract(fakes.FakeClipTowers(), output=str(tmp_path / "features"),
                                        source="mmimdb/hdf5", manual_dir=str(tmp_path / "manual"),
                                        data_dir=str(tmp_path / "tfds"), splits=("dev",), batch_size=8,
                                        examples_per_shard=8, prepare_tfds=False)
    shard = mmimdb_features.read_shard(mmimdb_features.shard_path(str(tmp_path / "features" / "shards"), "dev", 0, 1))
    assert manifest["source"] == "mmimdb/hdf5" and shard["image"].shape == (3, 17, 16)
    assert sorted(shard["imdb_id"]) == ["0000012", "0000013", "0000014"]
    fakes.write_hdf5(str(tmp_path / "no_vocabulary"), metadata=False)       # no plot text without metadata.npy
    extract_features.extract(fakes.FakeClipTowers(), output=str(tmp_path / "features"), source="mmimdb/hdf5",
                             manual_dir=str(tmp_path / "manual"), data_dir=str(tmp_path / "tfds"),
                             splits=("dev", "test"), batch_size=8, examples_per_shard=8)
    built = tfds.builder("mmimdb_features", data_dir=str(tmp_path / "features" / "tfds"))
    assert {s: built.info.splits[s].num_examples for s in built.info.splits} == {"dev": 3, "test": 9}
    extract_features.extract(fakes.FakeClipTowers(), output=str(tmp_path / "features"), source="mmimdb/hdf5",
                             manual_dir=str(tmp_path / "manual"), data_dir=str(tmp_path / "tfds"),
                             splits=("train",), batch_size=8, examples_per_shard=8)   # a split added later
    built = tfds.builder("mmimdb_features", data_dir=str(tmp_path / "features" / "tfds"))
    assert sorted(built.info.splits) == ["dev", "test", "train"] and built.info.splits["train"].num_examples == 12
    with pytest.raises(ValueError, match=r"mmimdb/hdf5:dev has examples without plot text .* metadata\.npy"):
        extract_features.extract(fakes.FakeClipTowers(), output=str(tmp_path / "other"), source="mmimdb/hdf5",
                                 manual_dir=str(tmp_path / "no_vocabulary"), data_dir=str(tmp_path / "tfds2"),
                                 splits=("dev",), batch_size=8, examples_per_shard=8, prepare_tfds=False)
