"""MultiBench from tiny files in the original formats: MultiBench's cleaning and split, clear errors on
missing or malformed files, padding invisible end to end, and builder -> training -> evaluation of the
`configs/multibench.py` configs with 2 and 3 modalities."""

from __future__ import annotations

import os
import pickle
import random

import numpy as np
import pytest

import input_pipeline  # noqa: F401  (registers the builders)
from comm_jax import evaluate as evaluate_mod
from comm_jax import models, train as train_mod
from configs import multibench as multibench_config
from input_pipeline import multibench_affect, multibench_mimic, multibench_vision_touch
from input_pipeline.manual_files import MalformedFileError
from input_pipeline.pipeline import load_split, make_eval_iterator
from tests import multibench_fakes as fakes


def tiny_config(arg: str, data_dir: str, manual_dir: str):
    """`configs/multibench.py:<arg>,cpu` shrunk to 3 steps of batch 8 on the tiny files."""
    cfg = multibench_config.get_config(f"{arg},cpu")
    cfg.num_steps, cfg.batch_size, cfg.ckpt_every, cfg.log_every = 3, 8, 3, 1
    cfg.data.data_dir, cfg.data.manual_dir = data_dir, manual_dir
    cfg.evals.batch_size = 8
    return cfg


def test_affect_cleaning_drops_textless_clips_trims_front_padding_and_binarises_labels(tmp_path):
    fmt = multibench_affect.DATASETS["mosi"]
    split = fakes.affect_split(fmt, 6, np.random.default_rng(0), label_shape=(1,))
    records = multibench_affect.clean_split({"train": split}, "mosi_data.pkl", "train", fmt)
    assert len(records) == 5                                   # the last clip has no text
    for index, record in enumerate(records):
        length = 3 + index % (fakes.AFFECT_STEPS - 3)
        assert {record[m].shape[0] for m in ("vision", "audio", "text")} == {length}
        np.testing.assert_array_equal(record["vision"], split["vision"][index, -length:])
        assert np.all(np.isfinite(record["audio"])) and np.any(record["text"][0] != 0)
        assert record["label"] == int(split["labels"][index, 0] > 0)
        assert record["regression"] == pytest.approx(split["labels"][index, 0])
    assert records[2]["audio"][-1, 0] == 0.0                   # -inf -> 0


def test_mimic_split_is_multibench_seeded_shuffle_and_features_are_cleaned(tmp_path):
    splits = multibench_mimic.split_indices(57)
    reference = list(range(57))
    random.seed(10)
    random.shuffle(reference)
    np.testing.assert_array_equal(np.concatenate([splits["valid"], splits["test"], splits["train"]]), reference)
    assert (len(splits["valid"]), len(splits["test"])) == (5, 6)
    data = multibench_mimic.read_mimic(fakes.write_mimic(str(tmp_path)))
    assert np.all(np.isfinite(data["timeseries"]))
    np.testing.assert_allclose(data["timeseries"].mean(axis=(0, 1)), 0.0, atol=1e-5)
    np.testing.assert_allclose(data["tabular"].std(axis=0), 1.0, atol=1e-5)
    admission = np.zeros((3, 6))
    admission[0, 3], admission[1, [2, 4]] = 1.0, 1.0
    np.testing.assert_array_equal(multibench_mimic.mortality_class(admission), [3, 2, 0])


def _broken_affect(directory: str) -> dict:
    data = {split: fakes.affect_split(multibench_affect.DATASETS["mosi"], 4, np.random.default_rng(1))
            for split in multibench_affect.SPLITS}
    del data["valid"]["text"]
    return data


@pytest.mark.parametrize("write, match", [
    (lambda d: None, r"mosi_data\.pkl"),
    (lambda d: fakes.write_affect(d, "mosi", **_broken_affect(d)), r"mosi_data\.pkl.*valid\['text'\]"),
    (lambda d: fakes.write_affect(d, "mosi", test=dict(fakes.affect_split(
        multibench_affect.DATASETS["mosei"], 4, np.random.default_rng(2)))), r"test\['vision'\].*\(4, 12, 35\)"),
    (lambda d: open(os.path.join(d, "mosi_data.pkl"), "wb").write(b"not a pickle"), r"mosi_data\.pkl: not a readable"),
])
def test_missing_or_malformed_affect_file_names_the_file_and_field(tmp_path, write, match):
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "README").write_text("the user's folder")
    write(str(manual))
    with pytest.raises((FileNotFoundError, MalformedFileError), match=match):
        load_split("multibench_affect/mosi", "train", ["text"], data_dir=str(tmp_path / "tfds"), prepare=True,
                   manual_dir=str(manual))


def test_malformed_mimic_file_names_the_field_and_shapes(tmp_path):
    data = fakes.mimic_data()
    data["y_icd9"] = data["y_icd9"][:, :19]
    path = fakes.write_mimic(str(tmp_path), data)
    with pytest.raises(MalformedFileError, match=r"im\.pk: field 'y_icd9' has shape \(40, 19\)"):
        multibench_mimic.read_mimic(path)
    with open(path, "wb") as handle:
        pickle.dump({"ep_tdata": fakes.mimic_data()["ep_tdata"]}, handle)
    with pytest.raises(MalformedFileError, match=r"missing field 'adm_features_all'"):
        multibench_mimic.read_mimic(path)


def test_vision_touch_split_by_file_and_targets_follow_the_reference(tmp_path):
    paths = fakes.write_vision_touch(str(tmp_path), episodes=10)
    files = multibench_vision_touch.episode_files(str(tmp_path))
    order = np.arange(10)
    np.random.default_rng(42).shuffle(order)
    split = multibench_vision_touch.split_files(files)
    assert split["test"] == [files[i] for i in order[8:]] and len(split["train"]) == 8
    episode = multibench_vision_touch.read_episode(paths[0])
    examples = list(multibench_vision_touch.episode_examples(episode))
    assert [t for t, _ in examples] == [0, 1, 2, 3]
    t, example = examples[1]
    assert example["image"].shape == (128, 128, 3) and example["force"].shape == (32, 6)
    np.testing.assert_allclose(example["force"], np.tanh(episode["force"][1, -32:]), rtol=1e-6)
    np.testing.assert_allclose(example["ee_yaw_next"], episode["proprio"][2, :4], rtol=1e-6)
    assert example["contact_next"] == int(episode["contact"][2].sum() > 0)


def test_malformed_vision_touch_episode_names_the_file_and_field(tmp_path):
    import h5py

    path = fakes.write_vision_touch(str(tmp_path), episodes=2)[1]
    with h5py.File(path, "a") as handle:
        del handle["proprio"]
    with pytest.raises(MalformedFileError, match=r"episode_1\.h5: missing field\(s\) \['proprio'\]"):
        load_split("multibench_vision_touch", "train", ["force"], data_dir=str(tmp_path / "tfds"), prepare=True,
                   manual_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"no Vision&Touch episode \(\*\.h5\)"):
        multibench_vision_touch.episode_files(str(tmp_path / "tfds"))


def test_padding_is_invisible_to_the_fusion_model_end_to_end(tmp_path):
    """Z of MOSI clips read from the pickle is the same padded to 50 steps or to the longest clip."""
    manual = str(tmp_path / "manual")
    fakes.write_affect(manual, "mosi")
    cfg = tiny_config("mosi,modalities=3", str(tmp_path / "tfds"), manual)
    model = models.build_model(cfg.model)
    embeddings = []
    for steps in (multibench_config.MAX_STEPS, fakes.AFFECT_STEPS):
        batch = next(iter(make_eval_iterator(cfg.data, "test", batch_size=8,
                                             steps={m: steps for m in cfg.model.modalities})))
        assert batch["inputs"]["text"].shape[1] == steps and not batch["valid"]["text"].all()
        embeddings.append(np.asarray(model.embed(batch["inputs"], valid=batch["valid"])))
    np.testing.assert_allclose(embeddings[0], embeddings[1], atol=1e-5)


@pytest.mark.parametrize("arg", ["mosi,modalities=3", "mustard,loss=cross", "mimic", "ur_funny,loss=cmc,modalities=3",
                                 "vision_touch,modalities=3", "mosei,modalities=text+audio", "vision_touch,modalities=2"])
def test_config_builds_trains_and_evaluates_from_the_original_files(tmp_path, arg):
    dataset = arg.split(",")[0]
    manual = str(tmp_path / "manual")
    if dataset == "mimic":
        fakes.write_mimic(manual)
    elif dataset == "vision_touch":
        fakes.write_vision_touch(manual)
    else:
        fakes.write_affect(manual, dataset)
    cfg = tiny_config(arg, str(tmp_path / "tfds"), manual)
    modalities = dict(t.split("=") for t in arg.split(",") if "=" in t).get("modalities", "2")
    assert len(cfg.model.modalities) == (int(modalities) if modalities.isdigit() else len(modalities.split("+")))
    workdir = str(tmp_path / "run")
    last = train_mod.train(cfg, workdir)
    assert last["step"] == 3 and np.isfinite(last["loss"])
    rows = evaluate_mod.evaluate(cfg, workdir, timeout=60)
    final = rows[-1]
    assert final["step"] == 3
    assert 0.0 <= final["probe/label/accuracy"] <= 1.0
    if dataset != "mimic":     # affect sentiment, V&T next pose
        assert np.isfinite(final["probe/regression/mse"])
