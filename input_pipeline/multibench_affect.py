"""TFDS builder `multibench_affect`: MultiBench's affect pickles (CMU-MOSI, CMU-MOSEI, UR-FUNNY,
MUsTARD) read from `manual_dir`, cleaned as MultiBench does and stored as variable-length sequences.

File format (one pickle per dataset, see `DATASETS`): a dict {"train", "valid", "test"}, each a dict
of "vision" [N, T, dv], "audio" [N, T, da], "text" [N, T, 300] (GloVe vectors; the front of short
clips is zero padding), "labels" [N, 1, 1], [N, 1] or [N] (sentiment in [-3, 3], or 0/1 for
UR-FUNNY and MUsTARD) and optionally "id" [N, ...].

Cleaning, per split: samples whose text is all zero are dropped; every non-finite value (MultiBench's
-inf in audio) becomes 0; each clip starts at the first step whose text is not all zero (the zero
front padding is trimmed, so the sequences are stored with their own length `[t_i, d]` and padded
per batch with a key-padding mask); `label` = 1 when the raw label is > 0 else 0; `regression` keeps
the raw label; `id` is the clip's index in its split (after dropping), `source_id` the file's id.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from input_pipeline.manual_files import (MalformedFileError, load_pickle, manual_directory, require_array, require_field, require_file,
                                         require_same_length)

TEXT_FEATURES = 300
SPLITS = ("train", "valid", "test")
SEQUENCE_MODALITIES = ("vision", "audio", "text")


@dataclasses.dataclass(frozen=True)
class AffectFormat:
    """One dataset's file and the feature sizes of its sequences."""

    filename: str
    vision: int
    audio: int
    text: int = TEXT_FEATURES


DATASETS = {
    "mosi": AffectFormat("mosi_data.pkl", vision=20, audio=5),
    "mosei": AffectFormat("mosei_senti_data.pkl", vision=35, audio=74),
    "ur_funny": AffectFormat("humor.pkl", vision=371, audio=81),
    "mustard": AffectFormat("sarcasm.pkl", vision=371, audio=81),
}


def clean_split(data: object, path: str, split: str, fmt: AffectFormat) -> list[dict[str, np.ndarray]]:
    """The records of one split of an affect pickle after MultiBench's cleaning (module doc): each
    {"vision" [t, dv], "audio" [t, da], "text" [t, 300] float32, "label" int, "regression" float32,
    "source_id" str}. Raises MalformedFileError naming the file and the field."""
    part = require_field(data, split, path)
    arrays = {m: require_array(require_field(part, m, path, split), path, f"{split}[{m!r}]", ndim=3,
                               trailing=(getattr(fmt, m),)) for m in SEQUENCE_MODALITIES}
    labels = require_array(require_field(part, "labels", path, split), path, f"{split}['labels']", ndim=(1, 2, 3))
    if labels.size != len(labels):
        raise MalformedFileError(f"{path}: field {split}['labels'] has shape {labels.shape}, expected one label "
                                 f"per sample ([N, 1, 1], [N, 1] or [N])")
    ids = np.asarray(part["id"]) if isinstance(part, dict) and "id" in part else None
    count = require_same_length(path, {f"{split}[{k!r}]": v for k, v in
                                       {**arrays, "labels": labels, **({"id": ids} if ids is not None else {})}.items()})
    lengths = {arrays[m].shape[1] for m in SEQUENCE_MODALITIES}
    if len(lengths) != 1:
        raise MalformedFileError(f"{path}: fields {split}['vision'/'audio'/'text'] have different numbers of steps "
                                 f"{[arrays[m].shape[1] for m in SEQUENCE_MODALITIES]}; aligned clips have one")
    records = []
    for index in range(count):
        text_rows = np.any(arrays["text"][index] != 0, axis=-1)
        if not text_rows.any():
            continue            # MultiBench drops clips without text
        start = int(np.argmax(text_rows))
        record = {m: np.nan_to_num(arrays[m][index, start:].astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
                  for m in SEQUENCE_MODALITIES}
        raw = float(labels[index].reshape(()))
        if not np.isfinite(raw):
            raise MalformedFileError(f"{path}: field {split}['labels'] holds {raw} at sample {index}")
        record["label"] = int(raw > 0)
        record["regression"] = np.float32(raw)
        record["source_id"] = "" if ids is None else str(ids[index].tolist())
        records.append(record)
    if not records:
        raise MalformedFileError(f"{path}: split {split!r} has no sample with text left after dropping the "
                                 f"all-zero ones")
    return records


class MultibenchAffect(tfds.core.GeneratorBasedBuilder):
    """MOSI, MOSEI, UR-FUNNY and MUsTARD from MultiBench's pickles (module doc); one config each."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=name, description=f"MultiBench {fmt.filename}")
                       for name, fmt in DATASETS.items()]
    MANUAL_DOWNLOAD_INSTRUCTIONS = ("Put MultiBench's affect pickles in the manual directory: " +
                                    ", ".join(f"{fmt.filename} ({name})" for name, fmt in DATASETS.items()))

    @property
    def format(self) -> AffectFormat:
        return DATASETS[self.builder_config.name]

    def _info(self) -> tfds.core.DatasetInfo:
        fmt = self.format
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "vision": tfds.features.Tensor(shape=(None, fmt.vision), dtype=np.float32),
            "audio": tfds.features.Tensor(shape=(None, fmt.audio), dtype=np.float32),
            "text": tfds.features.Tensor(shape=(None, fmt.text), dtype=np.float32),
            "label": tfds.features.ClassLabel(num_classes=2),
            "regression": tfds.features.Scalar(dtype=np.float32),
            "source_id": tfds.features.Text(),
            "id": np.int64,
        }), description=__doc__)

    def _split_generators(self, dl_manager):
        name = f"multibench_affect/{self.builder_config.name}"
        path = require_file(manual_directory(dl_manager, name, self.format.filename), self.format.filename, name)
        data = load_pickle(path)
        return {split: self._generate_examples(clean_split(data, path, split, self.format)) for split in SPLITS}

    def _generate_examples(self, records: list[dict]):
        for index, record in enumerate(records):
            yield index, {**record, "id": index}
