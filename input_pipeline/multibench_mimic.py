"""TFDS builder `multibench_mimic`: MultiBench's MIMIC-III file `im.pk` read from `manual_dir`, with
MultiBench's cleaning, normalisation, split and labels.

File format: a pickled dict with "ep_tdata" [N, 24, 12] (hourly health recordings),
"adm_features_all" [N, 5] (static patient information), "adm_labels_all" [N, >= 6] (admission
outcomes) and "y_icd9" [N, 20] (ICD-9 code groups).

Cleaning: inf and NaN become 0; each feature is z-scored over the whole file (recordings over
examples and hours); a constant feature is left centred. Split: the examples shuffled by Python's
`random.seed(10)`, `random.shuffle` as MultiBench's `get_dataloader`; `valid` is the first tenth,
`test` the second, `train` the rest. Labels: `mortality` (MultiBench task -1), 6 classes: the first
of columns 1..5 of adm_labels_all that is > 0, else 0; `icd9_k` (task k, 0..19): code group k, 0/1.
"""

from __future__ import annotations

import random

import numpy as np
import tensorflow_datasets as tfds

from input_pipeline.manual_files import load_pickle, manual_directory, require_array, require_field, require_file, \
    require_same_length

FILENAME = "im.pk"
HOURS, RECORDINGS, STATIC_FEATURES, ICD9_GROUPS, MORTALITY_CLASSES = 24, 12, 5, 20, 6
SPLIT_SEED = 10


def _zscore(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    x = np.where(np.isfinite(x), x, 0.0).astype(np.float64)
    std = x.std(axis=axes, keepdims=True)
    return ((x - x.mean(axis=axes, keepdims=True)) / np.where(std > 0, std, 1.0)).astype(np.float32)


def mortality_class(admission_labels: np.ndarray) -> np.ndarray:
    """[N] int: the first of columns 1..5 of `admission_labels` [N, >= 6] that is > 0, else 0."""
    positive = np.nan_to_num(admission_labels[:, 1:MORTALITY_CLASSES].astype(np.float64)) > 0
    return np.where(positive.any(axis=1), positive.argmax(axis=1) + 1, 0).astype(np.int64)


def split_indices(count: int) -> dict[str, np.ndarray]:
    """{split: example indices}, MultiBench's seeded shuffle cut into tenths (module doc)."""
    order = list(range(count))
    random.Random(SPLIT_SEED).shuffle(order)
    order = np.asarray(order, np.int64)
    return {"train": order[count // 5:], "valid": order[:count // 10], "test": order[count // 10:count // 5]}


def read_mimic(path: str) -> dict[str, np.ndarray]:
    """{"timeseries" [N, 24, 12], "tabular" [N, 5] float32 cleaned, "mortality" [N], "icd9" [N, 20] int}
    from `path`; MalformedFileError naming the file and the field."""
    data = load_pickle(path)
    series = require_array(require_field(data, "ep_tdata", path), path, "'ep_tdata'", ndim=3,
                           trailing=(HOURS, RECORDINGS))
    static = require_array(require_field(data, "adm_features_all", path), path, "'adm_features_all'", ndim=2,
                           trailing=(STATIC_FEATURES,))
    admission = require_array(require_field(data, "adm_labels_all", path), path, "'adm_labels_all'", ndim=2)
    if admission.shape[1] < MORTALITY_CLASSES:
        require_array(admission, path, "'adm_labels_all'", ndim=2, trailing=(MORTALITY_CLASSES,))
    icd9 = require_array(require_field(data, "y_icd9", path), path, "'y_icd9'", ndim=2, trailing=(ICD9_GROUPS,))
    require_same_length(path, {"'ep_tdata'": series, "'adm_features_all'": static, "'adm_labels_all'": admission,
                               "'y_icd9'": icd9})
    return {"timeseries": _zscore(series, (0, 1)), "tabular": _zscore(static, (0,)),
            "mortality": mortality_class(admission), "icd9": (np.nan_to_num(icd9.astype(np.float64)) > 0).astype(np.int64)}


class MultibenchMimic(tfds.core.GeneratorBasedBuilder):
    """MIMIC-III from MultiBench's `im.pk` (module doc)."""

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"Put MultiBench's MIMIC file {FILENAME} in the manual directory."

    def _info(self) -> tfds.core.DatasetInfo:
        features = {
            "timeseries": tfds.features.Tensor(shape=(HOURS, RECORDINGS), dtype=np.float32),
            "tabular": tfds.features.Tensor(shape=(STATIC_FEATURES,), dtype=np.float32),
            "mortality": tfds.features.ClassLabel(num_classes=MORTALITY_CLASSES),
            "id": np.int64,
        }
        features |= {f"icd9_{k}": tfds.features.ClassLabel(num_classes=2) for k in range(ICD9_GROUPS)}
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features), description=__doc__)

    def _split_generators(self, dl_manager):
        path = require_file(manual_directory(dl_manager, "multibench_mimic", FILENAME), FILENAME, "multibench_mimic")
        data = read_mimic(path)
        return {split: self._generate_examples(data, indices)
                for split, indices in split_indices(len(data["tabular"])).items()}

    def _generate_examples(self, data: dict[str, np.ndarray], indices: np.ndarray):
        for index in indices:
            record = {"timeseries": data["timeseries"][index], "tabular": data["tabular"][index],
                      "mortality": data["mortality"][index], "id": int(index)}
            record |= {f"icd9_{k}": data["icd9"][index, k] for k in range(ICD9_GROUPS)}
            yield int(index), record
