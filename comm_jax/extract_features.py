"""Frozen-tower token features of MM-IMDb, computed once: `python -m comm_jax.extract_features`.

Reads the `mmimdb/original` or `mmimdb/hdf5` TFDS dataset (built from `--manual_dir` on first use), runs the
frozen CLIP towers (`comm_jax.models.clip.load_clip(--clip)`) over every example of each split, batch by batch
sharded over the local devices, and writes the image and text token features as shards
(`input_pipeline.mmimdb_features`), then builds the TFDS dataset `mmimdb_features` from them in OUT/tfds.
Posters are resized (shorter side) and centre-cropped to the towers' image size, as the CoMM reference's
test transform; the text is the plot the builder stores. A shard appears only once written, so running the
same command again continues with the first missing shard; progress and examples/s are logged per batch.

    python -m comm_jax.extract_features --clip=WEIGHTS --manual_dir=DIR --output=OUT [--source=mmimdb/original]
        [--data_dir=TFDS_DIR] [--batch_size=256] [--examples_per_shard=2048] [--splits=train,dev,test]

Training then reads OUT: `--config=configs/mmimdb.py:features=OUT`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from typing import Any, Iterator, Sequence

import jax
import numpy as np

log = logging.getLogger("comm_jax.extract_features")
SOURCES = ("mmimdb/original", "mmimdb/hdf5")


@dataclasses.dataclass
class Progress:
    """Examples done against the total, with the rate since the start of this run (resumed shards excluded)."""

    total: int
    done: int = 0
    computed: int = 0
    start: float = dataclasses.field(default_factory=time.perf_counter)

    def advance(self, count: int) -> str:
        self.done += count
        self.computed += count
        rate = self.computed / max(time.perf_counter() - self.start, 1e-9)
        eta = (self.total - self.done) / max(rate, 1e-9)
        return f"{self.done}/{self.total} examples | {rate:.1f} examples/s | ETA {eta / 60:.1f} min"


def source_split(name: str, split: str, *, data_dir: str | None, manual_dir: str | None):
    """(the split as tf.data in its stored order, posters still encoded; its number of examples). Builds
    the source dataset from `manual_dir` first when it is not prepared."""
    import tensorflow_datasets as tfds

    import input_pipeline  # noqa: F401  (registers the builders)

    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            manual_dir=manual_dir, try_download_gcs=False))
    dataset = builder.as_dataset(split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()},
                                 read_config=tfds.ReadConfig(interleave_cycle_length=1))
    return dataset, builder.info.splits[split].num_examples


def poster_transform(image_size: int):
    """Encoded poster -> float32 [S, S, 3] in [0, 1]: shorter side resized to S (bicubic), centre crop."""
    from input_pipeline.augment import decode_resized_center_crop

    def poster(example):
        return {**example, "image": decode_resized_center_crop(example["image"], image_size)}

    return poster


def _padded(rows: np.ndarray, size: int) -> np.ndarray:
    """`rows` padded to `size` rows by repeating the last (a fixed batch shape: one compile)."""
    return rows if len(rows) == size else np.concatenate([rows, np.repeat(rows[-1:], size - len(rows), axis=0)])


def text_lengths(ids: np.ndarray) -> np.ndarray:
    """Tokens up to and including the last non-padding id (CLIP pads with 0 after the end token)."""
    nonzero = ids != 0
    return np.where(nonzero.any(axis=1), ids.shape[1] - np.argmax(nonzero[:, ::-1], axis=1), 0).astype(np.int32)


class TowerRunner:
    """Runs the frozen towers on batches of a fixed size, the batch axis sharded over the devices."""

    def __init__(self, encoder, batch_size: int, devices: Sequence[jax.Device] | None = None):
        devices = list(devices or jax.local_devices())
        if batch_size % len(devices):
            raise ValueError(f"--batch_size={batch_size} must be a multiple of the {len(devices)} local devices")
        self.encoder, self.batch_size = encoder, batch_size
        mesh = jax.sharding.Mesh(np.array(devices), ("data",))
        self.sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))

    def __call__(self, images: np.ndarray, plots: Sequence[str]) -> dict[str, np.ndarray]:
        count = len(images)
        ids = np.asarray(self.encoder.tokenize(list(plots)), np.int32)
        image_in = jax.device_put(_padded(np.asarray(images, np.float32), self.batch_size), self.sharding)
        text_in = jax.device_put(_padded(ids, self.batch_size), self.sharding)
        image = np.asarray(self.encoder.image_tokens(image_in), np.float16)[:count]
        text = np.asarray(self.encoder.text_tokens(text_in), np.float16)[:count]
        if image.ndim != 3 or text.ndim != 3 or text.shape[1] != ids.shape[1]:
            raise ValueError(f"the towers should give image tokens [batch, T, D] and text tokens [batch, "
                             f"{ids.shape[1]}, D] (one per token id); got {image.shape} and {text.shape}")
        if not (np.isfinite(image).all() and np.isfinite(text).all()):
            raise ValueError("the towers gave non-finite features (float16 overflow or bad weights)")
        return {"image": image, "text": text, "text_length": text_lengths(ids)}


def _batches(dataset, start: int, count: int, batch_size: int, image_size: int) -> Iterator[dict[str, np.ndarray]]:
    """The examples [start, start + count) in batches; only those are decoded."""
    import tensorflow as tf

    part = dataset.skip(start).take(count).map(poster_transform(image_size), num_parallel_calls=tf.data.AUTOTUNE)
    yield from part.batch(batch_size).prefetch(2).as_numpy_iterator()


def _check_manifest(shards_dir: str, manifest: dict) -> dict:
    from input_pipeline.mmimdb_features import read_manifest

    found = read_manifest(shards_dir)
    if found is None:
        return manifest
    differ = [k for k in ("source", "encoder", "examples_per_shard") if found.get(k) != manifest[k]]
    differ += [f"splits.{s}" for s, sizes in manifest["splits"].items()
               if s in found.get("splits", {}) and found["splits"][s]["examples"] != sizes["examples"]]
    if differ:
        was = {k: found.get(k) for k in differ if not k.startswith("splits.")}
        raise ValueError(f"{os.path.join(shards_dir, 'manifest.json')} was written for other settings ({differ} "
                         f"differ; it has {was or found.get('splits')}); use another --output or the same settings")
    return {**found, "splits": {**found.get("splits", {}), **manifest["splits"]}}


def extract(encoder, *, output: str, source: str = "mmimdb/original", data_dir: str | None = None,
            manual_dir: str | None = None, splits: Sequence[str] = ("train", "dev", "test"), batch_size: int = 256,
            examples_per_shard: int = 2048, encoder_name: str = "", prepare_tfds: bool = True) -> dict[str, Any]:
    """Writes the missing feature shards of `splits` under OUT/shards, then (`prepare_tfds`) builds
    `mmimdb_features` in OUT/tfds. `encoder` has `image_tokens`, `text_tokens`, `tokenize`, `image_size`.
    Returns the manifest."""
    from input_pipeline import mmimdb_features as shards

    if source not in SOURCES:
        raise ValueError(f"--source={source!r} must be one of {SOURCES}")
    if examples_per_shard % batch_size:
        raise ValueError(f"--examples_per_shard={examples_per_shard} must be a multiple of --batch_size={batch_size}")
    shards_dir = os.path.join(output, "shards")
    runner = TowerRunner(encoder, batch_size)
    datasets = {s: source_split(source, s, data_dir=data_dir, manual_dir=manual_dir) for s in splits}
    sizes = {s: {"examples": n, "shards": shards.shard_count(n, examples_per_shard)} for s, (_, n) in datasets.items()}
    manifest = _check_manifest(shards_dir, {"source": source, "encoder": encoder_name or type(encoder).__name__,
                                            "examples_per_shard": examples_per_shard, "splits": sizes})
    shards.write_manifest(shards_dir, manifest)
    for split, (dataset, examples) in datasets.items():
        count = sizes[split]["shards"]
        missing = shards.missing_shards(shards_dir, split, count)
        progress = Progress(total=examples, done=examples - sum(
            min(examples_per_shard, examples - i * examples_per_shard) for i in missing))
        log.info("%s: %d of %d shards to compute (%d examples done)", split, len(missing), count, progress.done)
        for index in missing:
            parts: list[dict[str, np.ndarray]] = []
            for batch in _batches(dataset, index * examples_per_shard, examples_per_shard, batch_size,
                                  int(encoder.image_size)):
                plots = [p.decode("utf-8") for p in batch["plot"]]
                if not all(plots):
                    raise ValueError(f"{source}:{split} has examples without plot text (imdb ids "
                                     f"{[i.decode() for i, p in zip(batch['imdb_id'], plots) if not p][:3]}); for "
                                     f"mmimdb/hdf5 put metadata.npy beside multimodal_imdb.hdf5 and build the "
                                     f"dataset again (remove its folder under the TFDS data dir)")
                parts.append({**runner(batch["image"], plots), "genres": batch["genres"],
                              "imdb_id": np.array([i.decode("utf-8") for i in batch["imdb_id"]]), "id": batch["id"]})
                log.info("%s shard %d/%d: %s", split, index + 1, count, progress.advance(len(batch["id"])))
            arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
            if "image_tokens" not in manifest:
                manifest.update(image_tokens=list(arrays["image"].shape[1:]), text_tokens=list(arrays["text"].shape[1:]))
                shards.write_manifest(shards_dir, manifest)
            shards.write_shard(shards.shard_path(shards_dir, split, index, count), arrays)
    if prepare_tfds:
        build_feature_dataset(output)
    return manifest


def build_feature_dataset(output: str) -> str:
    """Builds the TFDS dataset `mmimdb_features` of OUT/shards in OUT/tfds; returns that data dir."""
    import tensorflow_datasets as tfds

    import input_pipeline  # noqa: F401  (registers the builders)

    from input_pipeline.mmimdb_features import read_manifest

    data_dir, shards_dir = os.path.join(output, "tfds"), os.path.join(output, "shards")
    builder = tfds.builder("mmimdb_features", data_dir=data_dir)
    if builder.is_prepared() and set(builder.info.splits) != set(read_manifest(shards_dir)["splits"]):
        log.info("rebuilding %s: the shards now hold splits %s", builder.data_dir,
                 sorted(read_manifest(shards_dir)["splits"]))
        shutil.rmtree(builder.data_dir)
        builder = tfds.builder("mmimdb_features", data_dir=data_dir)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=shards_dir,
                                                                              try_download_gcs=False))
    return data_dir


def main(argv=None) -> None:
    from absl import flags

    from comm_jax import cli_errors

    flags.DEFINE_string("clip", None, "The CLIP weights (a local file or folder; see BUILD.md).")
    flags.DEFINE_string("output", None, "Output directory: OUT/shards (features), OUT/tfds (the TFDS dataset).")
    flags.DEFINE_string("manual_dir", None, "The folder of the MM-IMDb files (original release or the HDF5 file).")
    flags.DEFINE_enum("source", SOURCES[0], SOURCES, "Which original format `manual_dir` holds.")
    flags.DEFINE_string("data_dir", None, "TFDS data dir of the source dataset (default TFDS's).")
    flags.DEFINE_integer("batch_size", 256, "Examples per tower call, over all local devices.")
    flags.DEFINE_integer("examples_per_shard", 2048, "Examples per shard file (a multiple of --batch_size).")
    flags.DEFINE_list("splits", ["train", "dev", "test"], "Splits to extract.")
    flags.mark_flags_as_required(["clip", "output"])

    def run(_):
        from comm_jax.models.clip import load_clip

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
        log.setLevel(logging.INFO)
        f = flags.FLAGS
        extract(load_clip(f.clip), output=f.output, source=f.source, data_dir=f.data_dir, manual_dir=f.manual_dir,
                splits=f.splits, batch_size=f.batch_size, examples_per_shard=f.examples_per_shard,
                encoder_name=os.path.basename(os.path.normpath(f.clip)))

    cli_errors.run_program(run, argv, workdir=lambda: flags.FLAGS.output)


if __name__ == "__main__":
    main()
