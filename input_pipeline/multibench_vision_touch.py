"""TFDS builder `multibench_vision_touch`: MultiBench's Vision&Touch robot episodes, the directory of
`.h5` files (one episode each) read from `manual_dir`.

File format (per episode of T steps): "image" [T, 128, 128, 3] uint8 (or [T, 3, 128, 128], then
transposed as the reference does), "ee_forces_continuous" [T, F >= 32, 6], "proprio" [T, >= 8],
"action" [T, A], "contact" [T, ...].

Split by file as the reference: the file names sorted, shuffled by `np.random.default_rng(42)`, the last
`int(0.2 * files)` are `test`, the rest `train`. Each step t < T - 2 of an episode is one example (the
reference's set: it replaces its last index by a random one): `image` at t, `force` the last 32
force readings at t through tanh [32, 6], `proprio` [8] at t, `action` at t + 1; targets
`ee_yaw_next` = proprio[t + 1][:4] (regression) and `contact_next` = any contact at t + 1 (0/1).
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

from input_pipeline.manual_files import MalformedFileError, manual_directory, require_array

IMAGE_SIZE, FORCE_WINDOW, FORCE_AXES, PROPRIO, POSE = 128, 32, 6, 8, 4
TEST_FRACTION, SPLIT_SEED = 0.2, 42
FIELDS = ("image", "ee_forces_continuous", "proprio", "action", "contact")


def episode_files(directory: str) -> list[str]:
    """The sorted `.h5` paths of `directory`; FileNotFoundError naming it when there is none."""
    names = sorted(n for n in os.listdir(directory) if n.endswith(".h5"))
    if not names:
        raise FileNotFoundError(f"multibench_vision_touch: no Vision&Touch episode (*.h5) in {directory} "
                                f"(--config.data.manual_dir=DIR)")
    return [os.path.join(directory, n) for n in names]


def split_files(files: list[str]) -> dict[str, list[str]]:
    """{"train", "test": file paths}, the reference's seeded split by file (module doc)."""
    order = np.arange(len(files))
    np.random.default_rng(SPLIT_SEED).shuffle(order)
    train_count = len(files) - int(TEST_FRACTION * len(files))
    return {"train": [files[i] for i in order[:train_count]], "test": [files[i] for i in order[train_count:]]}


def read_episode(path: str) -> dict[str, np.ndarray]:
    """The fields of one episode, checked; MalformedFileError naming the file and the field."""
    import h5py

    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise MalformedFileError(f"{path}: not a readable HDF5 file ({error})") from None
    with handle:
        missing = [f for f in FIELDS if f not in handle]
        if missing:
            raise MalformedFileError(f"{path}: missing field(s) {missing}; it has {sorted(handle.keys())}")
        raw = {f: handle[f][()] for f in FIELDS}
    image = require_array(raw["image"], path, "'image'", ndim=4)
    if image.shape[1] == 3 and image.shape[-1] != 3:
        image = np.transpose(image, (0, 3, 2, 1))
    episode = {
        "image": require_array(image, path, "'image'", ndim=4, trailing=(IMAGE_SIZE, IMAGE_SIZE, 3)),
        "force": require_array(raw["ee_forces_continuous"], path, "'ee_forces_continuous'", ndim=3,
                               trailing=(None, FORCE_AXES)),
        "proprio": require_array(raw["proprio"], path, "'proprio'", ndim=2),
        "action": require_array(raw["action"], path, "'action'", ndim=(1, 2)),
        "contact": require_array(raw["contact"], path, "'contact'", ndim=(1, 2, 3)),
    }
    if episode["force"].shape[1] < FORCE_WINDOW:
        raise MalformedFileError(f"{path}: field 'ee_forces_continuous' has {episode['force'].shape[1]} readings "
                                 f"per step, expected at least {FORCE_WINDOW}")
    if episode["proprio"].shape[1] < PROPRIO:
        raise MalformedFileError(f"{path}: field 'proprio' has shape {episode['proprio'].shape}, expected "
                                 f"at least {PROPRIO} values per step")
    steps = {f: len(v) for f, v in episode.items()}
    if len(set(steps.values())) != 1 or steps["image"] < 3:
        raise MalformedFileError(f"{path}: fields should share one number of steps (at least 3), got {steps}")
    return episode


def episode_examples(episode: dict[str, np.ndarray]):
    """(t, example) for each step t < T - 2 of one episode (module doc)."""
    action = episode["action"].reshape(len(episode["action"]), -1).astype(np.float32)
    for t in range(len(episode["image"]) - 2):
        yield t, {
            "image": np.clip(episode["image"][t], 0, 255).astype(np.uint8),
            "force": np.tanh(episode["force"][t, -FORCE_WINDOW:].astype(np.float32)),
            "proprio": episode["proprio"][t, :PROPRIO].astype(np.float32),
            "action": action[t + 1],
            "ee_yaw_next": episode["proprio"][t + 1, :POSE].astype(np.float32),
            "contact_next": int(np.sum(episode["contact"][t + 1]) > 0),
        }


class MultibenchVisionTouch(tfds.core.GeneratorBasedBuilder):
    """Vision&Touch from the directory of `.h5` episodes (module doc)."""

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Put the Vision&Touch episodes (*.h5, triangle_real_data) in the manual directory."

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3)),
            "force": tfds.features.Tensor(shape=(FORCE_WINDOW, FORCE_AXES), dtype=np.float32),
            "proprio": tfds.features.Tensor(shape=(PROPRIO,), dtype=np.float32),
            "action": tfds.features.Tensor(shape=(None,), dtype=np.float32),
            "ee_yaw_next": tfds.features.Tensor(shape=(POSE,), dtype=np.float32),
            "contact_next": tfds.features.ClassLabel(num_classes=2),
            "episode": tfds.features.Text(),
            "id": np.int64,
        }), description=__doc__)

    def _split_generators(self, dl_manager):
        directory = manual_directory(dl_manager, "multibench_vision_touch", "the episodes *.h5")
        files = episode_files(directory)
        for path in files:      # every file checked before any is written
            read_episode(path)
        return {split: self._generate_examples(paths) for split, paths in split_files(files).items()}

    def _generate_examples(self, paths: list[str]):
        index = 0
        for path in paths:
            for t, example in episode_examples(read_episode(path)):
                yield f"{os.path.basename(path)}:{t}", {**example, "episode": os.path.basename(path), "id": index}
                index += 1
