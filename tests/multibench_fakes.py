"""Tiny files in MultiBench's original formats (affect pickles, MIMIC's `im.pk`), a few examples per
split, written by the tests that build the MultiBench datasets from them."""

from __future__ import annotations

import os
import pickle

import numpy as np

from input_pipeline import multibench_affect, multibench_mimic

AFFECT_STEPS = 12
AFFECT_COUNTS = {"train": 10, "valid": 4, "test": 6}
MIMIC_EXAMPLES = 40


def affect_split(fmt: multibench_affect.AffectFormat, count: int, rng: np.random.Generator,
                 label_shape: tuple[int, ...] = (1, 1)) -> dict[str, np.ndarray]:
    """One split in MultiBench's layout: clips front-padded with zeros to AFFECT_STEPS, the label's
    sign carried by the text (so the task is learnable), one clip without text, -inf in audio."""
    labels = rng.uniform(-3, 3, size=count)
    labels[0], labels[1] = 2.5, -2.5
    vision = np.zeros((count, AFFECT_STEPS, fmt.vision), np.float32)
    audio = np.zeros((count, AFFECT_STEPS, fmt.audio), np.float32)
    text = np.zeros((count, AFFECT_STEPS, fmt.text), np.float32)
    for i in range(count):
        length = 3 + i % (AFFECT_STEPS - 3)
        start = AFFECT_STEPS - length
        vision[i, start:] = rng.normal(size=(length, fmt.vision))
        audio[i, start:] = rng.normal(size=(length, fmt.audio))
        text[i, start:] = rng.normal(size=(length, fmt.text)) + np.sign(labels[i])
    audio[2, -1, 0] = -np.inf
    text[count - 1] = 0.0                               # no text: dropped by the cleaning
    return {"vision": vision, "audio": audio, "text": text, "labels": labels.reshape(count, *label_shape),
            "id": np.array([[f"clip{i}", str(i)] for i in range(count)])}


def write_affect(directory: str, dataset: str, seed: int = 0, **overrides) -> str:
    """Writes `dataset`'s pickle in `directory` (its splits replaced by `overrides`); returns its path."""
    fmt = multibench_affect.DATASETS[dataset]
    rng = np.random.default_rng(seed)
    data = {split: affect_split(fmt, count, rng) for split, count in AFFECT_COUNTS.items()}
    data.update(overrides)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, fmt.filename)
    with open(path, "wb") as handle:
        pickle.dump(data, handle)
    return path


def mimic_data(count: int = MIMIC_EXAMPLES, seed: int = 0) -> dict[str, np.ndarray]:
    """MIMIC's `im.pk` dict with the label of ICD-9 group 7 and mortality visible in the recordings."""
    rng = np.random.default_rng(seed)
    icd9 = rng.integers(0, 2, size=(count, multibench_mimic.ICD9_GROUPS)).astype(np.float64)
    series = rng.normal(size=(count, multibench_mimic.HOURS, multibench_mimic.RECORDINGS))
    series += 2.0 * icd9[:, 7, None, None]
    series[0, 0, 0] = np.nan
    series[1, 0, 1] = np.inf
    admission = np.zeros((count, 6))
    admission[np.arange(count), rng.integers(0, 6, size=count)] = 1.0
    return {"ep_tdata": series, "adm_features_all": rng.normal(size=(count, multibench_mimic.STATIC_FEATURES)),
            "adm_labels_all": admission, "y_icd9": icd9}


def write_mimic(directory: str, data: dict | None = None) -> str:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, multibench_mimic.FILENAME)
    with open(path, "wb") as handle:
        pickle.dump(mimic_data() if data is None else data, handle)
    return path


def write_vision_touch(directory: str, episodes: int = 5, steps: int = 6, seed: int = 0) -> list[str]:
    """Vision&Touch episodes `episode_<i>.h5` (images channels-first, as some of the originals) whose
    contact follows the force readings, so the contact task is learnable; returns their paths."""
    import h5py

    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    paths = []
    for episode in range(episodes):
        contact = rng.integers(0, 2, size=(steps, 5))
        force = rng.normal(size=(steps, 40, 6)) + contact.any(axis=1)[:, None, None]
        path = os.path.join(directory, f"episode_{episode}.h5")
        with h5py.File(path, "w") as handle:
            handle["image"] = rng.integers(0, 256, size=(steps, 3, 128, 128), dtype=np.uint8)
            handle["ee_forces_continuous"] = force
            handle["proprio"] = rng.normal(size=(steps, 9))
            handle["action"] = rng.normal(size=(steps, 4))
            handle["contact"] = contact
        paths.append(path)
    return paths
