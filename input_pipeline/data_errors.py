"""The message for a TFDS split that cannot be read: which shard file is corrupted or truncated, and the
command that regenerates the dataset."""

from __future__ import annotations

import glob
import os

import tensorflow as tf


def _first_unreadable(files: list[str]) -> tuple[str, str] | None:
    for path in files:
        try:
            for _ in tf.data.TFRecordDataset(path):
                pass
        except tf.errors.OpError as error:
            return path, error.message.splitlines()[0]
    return None


def unreadable_split_message(name: str, split: str, data_dir: str, error: Exception) -> str:
    """One line: the file that fails (found by reading each shard of the split), why, and what to run."""
    base_split = split.split("[", 1)[0]
    files = sorted(glob.glob(os.path.join(data_dir, f"*-{base_split}.tfrecord-*")))
    found = _first_unreadable(files)
    where, why = found if found else (data_dir, str(error).splitlines()[0])
    root = data_dir.split(os.sep + name.split("/")[0] + os.sep)[0] if name else data_dir
    command = (f"rm -r {data_dir} && python -c \"import input_pipeline, tensorflow_datasets as tfds; "
               f"tfds.builder('{name}', data_dir='{root}').download_and_prepare()\"")
    return (f"TFDS data of {name}:{split} cannot be read: {where} is corrupted or truncated ({why}); "
            f"regenerate the dataset: {command}")
