"""Frozen-encoder token features of MM-IMDb: the shard files `comm_jax.extract_features` writes, and the
TFDS builder `mmimdb_features` that reads them from `manual_dir`.

Layout of an extraction's output directory OUT:
  OUT/shards/manifest.json        {"source", "encoder", "examples_per_shard", "splits": {split: {"examples",
                                   "shards"}}, "image_tokens": [T, D_image], "text_tokens": [L, D_text]}
  OUT/shards/<split>/shard-00003-of-00016.npz
                                  "image" [n, T, D] float16, "text" [n, L, D] float16, "text_length" [n],
                                  "genres" [n, 23], "imdb_id" [n], "id" [n] (rows of the source split, in order)
  OUT/tfds/                        the TFDS data dir of `mmimdb_features` built from the shards

A shard file appears only once complete (written aside, then renamed), so a shard that exists is done.
The builder's examples: `image` [T, D] and `text` [t_i, D] (the tokens up to the end of the plot, so the
pipeline pads them per batch with a key-padding mask), `genres` [23] multi-hot, `imdb_id`, `id`.
"""

from __future__ import annotations

import json
import os
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds

from input_pipeline.manual_files import MalformedFileError, manual_directory, require_file
from input_pipeline.mmimdb import GENRES

MANIFEST = "manifest.json"
SHARD_FIELDS = ("image", "text", "text_length", "genres", "imdb_id", "id")


def shard_path(directory: str, split: str, index: int, count: int) -> str:
    return os.path.join(directory, split, f"shard-{index:05d}-of-{count:05d}.npz")


def shard_count(examples: int, examples_per_shard: int) -> int:
    return -(-examples // examples_per_shard)


def missing_shards(directory: str, split: str, count: int) -> list[int]:
    """Indices of the split's shards not yet written."""
    return [i for i in range(count) if not os.path.isfile(shard_path(directory, split, i, count))]


def write_shard(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Writes the shard beside its final name and renames it, so only complete shards exist."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    partial = path + ".partial.npz"
    np.savez(partial, **arrays)
    os.replace(partial, path)


def read_manifest(directory: str) -> dict | None:
    path = os.path.join(directory, MANIFEST)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise MalformedFileError(f"{path}: not readable JSON ({error})") from None


def write_manifest(directory: str, manifest: dict) -> None:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, MANIFEST)
    with open(path + ".partial", "w") as handle:
        json.dump(manifest, handle, indent=1, sort_keys=True)
    os.replace(path + ".partial", path)


def read_shard(path: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [f for f in SHARD_FIELDS if f not in data]
            if missing:
                raise MalformedFileError(f"{path}: missing field(s) {missing}; it has {sorted(data.files)}")
            return {f: data[f] for f in SHARD_FIELDS}
    except (OSError, ValueError, EOFError) as error:
        raise MalformedFileError(f"{path}: not a readable feature shard ({error}); delete it and run the "
                                 f"extraction again") from None


def shard_examples(shard: dict[str, np.ndarray]) -> Iterator[dict]:
    for row in range(len(shard["id"])):
        length = int(shard["text_length"][row])
        yield {"image": shard["image"][row], "text": shard["text"][row, :max(length, 1)],
               "genres": shard["genres"][row].astype(np.int64), "imdb_id": str(shard["imdb_id"][row]),
               "id": int(shard["id"][row])}


class MmimdbFeatures(tfds.core.GeneratorBasedBuilder):
    """MM-IMDb token features of frozen towers, from the shards in `manual_dir` (module doc)."""

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = ("Run `python -m comm_jax.extract_features --output=OUT ...`; the shards are "
                                    "OUT/shards, the manual directory of this builder.")

    def _info(self) -> tfds.core.DatasetInfo:
        tokens = dict(shape=(None, None), dtype=np.float16, encoding=tfds.features.Encoding.BYTES)
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(**tokens),
            "text": tfds.features.Tensor(**tokens),
            "genres": tfds.features.Tensor(shape=(len(GENRES),), dtype=np.int64),
            "imdb_id": tfds.features.Text(),
            "id": np.int64,
        }), description=__doc__)

    def _split_generators(self, dl_manager):
        directory = manual_directory(dl_manager, "mmimdb_features", f"{MANIFEST} and the shards of each split")
        require_file(directory, MANIFEST, "mmimdb_features")
        manifest = read_manifest(directory)
        splits = {}
        for split, sizes in manifest.get("splits", {}).items():
            missing = missing_shards(directory, split, sizes["shards"])
            if missing:
                raise FileNotFoundError(
                    f"mmimdb_features: split {split!r} has {len(missing)} of {sizes['shards']} shards missing in "
                    f"{os.path.join(directory, split)} (first: {os.path.basename(shard_path(directory, split, missing[0], sizes['shards']))}); "
                    f"run the same `python -m comm_jax.extract_features` command again to finish them")
            splits[split] = self._generate_examples(
                [shard_path(directory, split, i, sizes["shards"]) for i in range(sizes["shards"])])
        if not splits:
            raise MalformedFileError(f"{os.path.join(directory, MANIFEST)}: field 'splits' is empty")
        return splits

    def _generate_examples(self, paths: list[str]):
        for path in paths:
            for example in shard_examples(read_shard(path)):
                yield example["id"], example
