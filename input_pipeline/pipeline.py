"""tf.data pipelines over any TFDS builder: resumable training batches of augmented views, padded eval batches.

A split is loaded once into host memory (images stay PNG/JPEG bytes) and checked record by
record; batches are then built by gathering examples by index, decoding and augmenting them in a
parallel deterministic map. Training order and augmentation seeds are pure functions of (seed,
epoch, example index, view, modality), so an iterator rebuilt from ``get_state()`` yields exactly
the batches the original would have. Batches are numpy dicts (layouts in the iterators' docs).
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from comm_jax.batch import VIEW_IDS, BatchSpec, modality_salt
from input_pipeline import augment
from input_pipeline.data_errors import unreadable_split_message
from input_pipeline.iterator_state import TrainStream

Batch = dict[str, Any]  # nested dicts of numpy arrays, layouts in the iterators' docs
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # by PNG colour type; palette (3) is left to the decoder


@dataclasses.dataclass
class LoadedSplit:
    """A split held in memory: ``columns[key]`` is [N, ...] (images: object array of bytes)."""

    name: str
    split: str
    columns: dict[str, np.ndarray]
    ids: np.ndarray
    image_shapes: dict[str, tuple[int, int, int]]
    variable_length: set[str] = dataclasses.field(default_factory=set)
    resized: dict[str, int] = dataclasses.field(default_factory=dict)   # image key -> size (decoded any size)

    @property
    def num_examples(self) -> int:
        return len(self.ids)

    def describe(self, index: int) -> str:
        return f"record id={self.ids[index]} (index {index} of {self.name}:{self.split})"


def load_split(name: str, split: str, keys: Sequence[str], *, data_dir: str | None = None,
               prepare: bool = False, manual_dir: str | None = None, image_sizes: Mapping[str, int] | None = None,
               tokenizers: Mapping[str, Callable[[list[str]], np.ndarray]] | None = None) -> LoadedSplit:
    """Reads features `keys` of a TFDS split into memory and validates every record; with `prepare`
    an unprepared builder is built first, reading user files from `manual_dir` (None: TFDS's
    `<data_dir>/downloads/manual`). Images of a key in `image_sizes` may differ in size: each is decoded
    to RGB, its shorter side resized to the size and centre-cropped (`augment.decode_resized_center_crop`).
    Text of a key in `tokenizers` is tokenized once here: the tokenizer maps a list of strings to int ids
    `[N, L]`, the column holds them.

    Raises ValueError naming the field (and the record, by its `id` feature or index) when a key
    is not a feature of the builder, an image has another shape than the others or than declared,
    or a float feature holds NaN/inf.
    """
    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
        if not prepare:
            raise ValueError(f"TFDS dataset {name!r} is not prepared in {builder.data_dir}; run "
                             f"tfds.builder({name!r}).download_and_prepare() or set data.prepare=True")
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            manual_dir=manual_dir, try_download_gcs=False))
    features = builder.info.features
    missing = [key for key in keys if key not in features]
    if missing:
        raise ValueError(f"field(s) {missing} requested from {name!r} are not among its features "
                         f"{sorted(features.keys())}")
    image_keys = [key for key in keys if isinstance(features[key], tfds.features.Image)]
    wanted = sorted(set(keys) | ({"id"} & set(features.keys())))
    dataset = builder.as_dataset(split=split, shuffle_files=False,
                                 decoders={key: tfds.decode.SkipDecoding() for key in image_keys})
    dataset = dataset.map(lambda record: {key: record[key] for key in wanted})
    try:
        rows = list(dataset.as_numpy_iterator())
    except tf.errors.OpError as error:
        raise ValueError(unreadable_split_message(name, split, builder.data_dir, error)) from error
    if not rows:
        raise ValueError(f"split {split!r} of {name!r} is empty")
    ids = np.array([row["id"] if "id" in row else index for index, row in enumerate(rows)])
    loaded = LoadedSplit(name, split, {}, ids, {})
    image_sizes, tokenizers = dict(image_sizes or {}), dict(tokenizers or {})
    for key in keys:
        values = [row[key] for row in rows]
        if key in image_sizes:
            if key not in image_keys:
                raise ValueError(f"field {key!r} of {name!r} is not an image; it cannot be resized")
            _check_decodable(loaded, key, values)
            loaded.resized[key] = int(image_sizes[key])
            loaded.image_shapes[key] = (int(image_sizes[key]), int(image_sizes[key]), 3)
            loaded.columns[key] = np.array(values, dtype=object)
        elif key in tokenizers:
            loaded.columns[key] = _tokenized(loaded, key, values, tokenizers[key])
        elif key in image_keys:
            declared = tuple(features[key].shape)
            loaded.image_shapes[key] = _check_image_shapes(loaded, key, values, declared)
            loaded.columns[key] = np.array(values, dtype=object)
        elif _is_variable_length(features[key]):
            loaded.columns[key] = _sequences_checked(loaded, key, values)
            loaded.variable_length.add(key)
        else:
            loaded.columns[key] = _stack_checked(loaded, key, values)
    return loaded


def encoded_image_shape(data: bytes) -> tuple[int, int, int]:
    """(height, width, channels) of an encoded image, from its header where possible."""
    if data[:8] == _PNG_SIGNATURE and data[12:16] == b"IHDR" and data[25] in _PNG_CHANNELS:
        width, height = struct.unpack(">II", data[16:24])
        return height, width, _PNG_CHANNELS[data[25]]
    if data[:2] == b"\xff\xd8":
        return tuple(int(d) for d in tf.io.extract_jpeg_shape(data).numpy())
    return tuple(tf.io.decode_image(data, expand_animations=False).shape)


def _check_image_shapes(loaded: LoadedSplit, key: str, values: list[bytes],
                        declared: tuple) -> tuple[int, int, int]:
    expected = None
    for index, data in enumerate(values):
        try:
            shape = encoded_image_shape(data)
        except (tf.errors.InvalidArgumentError, IndexError, struct.error) as error:
            raise ValueError(f"{loaded.describe(index)}: field {key!r} is not a decodable image: "
                             f"{error}") from None
        if expected is None:
            expected = tuple(d if d is not None else s for d, s in zip(declared, shape))
        if shape != expected:
            raise ValueError(f"{loaded.describe(index)}: field {key!r} has image shape {shape}, "
                             f"expected {expected} (declared {declared})")
    return expected


def _check_decodable(loaded: LoadedSplit, key: str, values: list[bytes]) -> None:
    for index, data in enumerate(values):
        try:
            encoded_image_shape(data)
        except (tf.errors.InvalidArgumentError, IndexError, struct.error) as error:
            raise ValueError(f"{loaded.describe(index)}: field {key!r} is not a decodable image: {error}") from None


def _tokenized(loaded: LoadedSplit, key: str, values: list[bytes], tokenizer) -> np.ndarray:
    texts = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]
    empty = [index for index, text in enumerate(texts) if not text.strip()]
    if empty:
        raise ValueError(f"{loaded.describe(empty[0])}: field {key!r} is empty ({len(empty)} records); text "
                         f"to tokenize must be present (for mmimdb/hdf5, put metadata.npy beside the file)")
    return np.asarray(tokenizer(texts), np.int32)


def _is_variable_length(feature) -> bool:
    shape = getattr(feature, "shape", ())
    return len(shape) >= 1 and shape[0] is None


def _sequences_checked(loaded: LoadedSplit, key: str, values: list[np.ndarray]) -> np.ndarray:
    """Variable-length sequences `[t_i, ...]` kept apart (object array), checked for equal trailing
    shapes and finite values."""
    trailing = np.shape(values[0])[1:]
    for index, value in enumerate(values):
        if np.shape(value)[1:] != trailing:
            raise ValueError(f"{loaded.describe(index)}: field {key!r} has steps of shape {np.shape(value)[1:]}, "
                             f"expected {trailing} like the first record")
        if np.issubdtype(np.asarray(value).dtype, np.floating) and not np.all(np.isfinite(value)):
            raise ValueError(f"{loaded.describe(index)}: field {key!r} contains NaN or inf")
    out = np.empty(len(values), dtype=object)
    out[:] = [np.asarray(v) for v in values]
    return out


def _stack_checked(loaded: LoadedSplit, key: str, values: list[np.ndarray]) -> np.ndarray:
    first_shape = np.shape(values[0])
    for index, value in enumerate(values):
        if np.shape(value) != first_shape:
            raise ValueError(f"{loaded.describe(index)}: field {key!r} has shape {np.shape(value)}, "
                             f"expected {first_shape} like the first record")
        if np.issubdtype(np.asarray(value).dtype, np.floating) and not np.all(np.isfinite(value)):
            raise ValueError(f"{loaded.describe(index)}: field {key!r} contains NaN or inf")
    return np.stack(values)


def example_seed(seed: int, epoch: tf.Tensor, index: tf.Tensor, view: int,
                 modality: str) -> tf.Tensor:
    """Stateless seed [2] of one augmented input, a pure function of its coordinates."""
    key = tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)])
    for data in (tf.cast(index, tf.int64), view, modality_salt(modality)):
        key = tf.random.experimental.stateless_fold_in(key, data)
    return key


class _ExampleReader:
    """Gathers one example by index from a LoadedSplit as tensors and decodes its images."""

    def __init__(self, loaded: LoadedSplit):
        self._loaded = loaded
        self._columns = {}
        for key, column in loaded.columns.items():
            if key in loaded.variable_length:
                lengths = np.array([len(v) for v in column], np.int64)
                splits = np.concatenate([[0], np.cumsum(lengths)])
                self._columns[key] = tf.RaggedTensor.from_row_splits(np.concatenate(list(column)), splits)
            else:
                self._columns[key] = tf.constant(column)

    def read(self, key: str, index: tf.Tensor) -> tf.Tensor:
        if key in self._loaded.variable_length:
            value = self._columns[key][index]
            # float16 features (frozen-encoder tokens) stay half-size in memory and reach the ops as float32
            return tf.cast(value, tf.float32) if value.dtype == tf.float16 else value
        value = tf.gather(self._columns[key], index)
        if key in self._loaded.resized:
            return augment.decode_resized_center_crop(value, self._loaded.resized[key])
        if key in self._loaded.image_shapes:
            shape = self._loaded.image_shapes[key]
            value = tf.io.decode_image(value, channels=shape[-1], expand_animations=False)
            value = tf.ensure_shape(value, shape)
        return value


def _finish(x: tf.Tensor) -> tf.Tensor:
    """Images that no op converted are handed out as float32 in [0, 1] like augmented ones."""
    return augment.to_unit_float(x) if x.dtype == tf.uint8 else x


def _feature_keys(ops: Iterable[augment.AugmentOp]) -> list[str]:
    """The example features the ops read besides their own input (`augment.reads_features`), sorted."""
    return sorted({key for op in ops for key in augment.feature_keys(op)})


def _per_modality(data_cfg, key: str, modalities: Mapping[str, str]) -> dict[str, Any]:
    entries = dict(data_cfg.get(key, None) or {})
    unknown = sorted(set(entries) - set(modalities))
    if unknown:
        raise ValueError(f"data.{key} has entries {unknown} for modalities not in data.modalities "
                         f"{sorted(modalities)}")
    return entries


def _modalities(data_cfg) -> dict[str, str]:
    modalities = dict(data_cfg.get("modalities", None) or {})
    if not modalities:
        raise ValueError("data.modalities must map at least one modality name to a feature key")
    return modalities


def _load_for(data_cfg, split: str, keys: Sequence[str]) -> LoadedSplit:
    """The split, with `data.image_sizes` {modality: size} (images decoded at any size, resized and
    centre-cropped) and `data.tokenizer` {modality: CLIP weights} (text tokenized by that checkpoint's
    tokenizer to `[context_length]` int32 ids) applied to the modalities' feature keys."""
    if not data_cfg.get("name", None):
        raise ValueError("data.name must name a TFDS builder, e.g. 'bimodal_trifeatures/64px'")
    modalities = _modalities(data_cfg)
    image_sizes = {modalities[m]: int(size) for m, size in _per_modality(data_cfg, "image_sizes", modalities).items()}
    tokenizers = {modalities[m]: _clip_tokenizer(weights)
                  for m, weights in _per_modality(data_cfg, "tokenizer", modalities).items()}
    return load_split(data_cfg["name"], split, keys, data_dir=data_cfg.get("data_dir", None),
                      prepare=data_cfg.get("prepare", False), manual_dir=data_cfg.get("manual_dir", None),
                      image_sizes=image_sizes, tokenizers=tokenizers)


def _clip_tokenizer(weights: str) -> Callable[[list[str]], np.ndarray]:
    from comm_jax.models.clip_encoders import cached_clip

    return cached_clip(str(weights)).tokenize


class TrainIterator:
    """Endless iterator of training batches with an exact, JSON-able position.

    Each ``next()`` gives a batch in the layout of `comm_jax.batch`; images are float32 [B, H, W, C]
    (or uint8 when the views are drawn on the devices).
    """

    def __init__(self, dataset_from: Callable[[int], tf.data.Dataset], stream: TrainStream,
                 position: int = 0):
        self._dataset_from = dataset_from
        self.stream = stream
        self._restart(position)

    def _restart(self, position: int) -> None:
        self._position = position
        self._batches = self._dataset_from(position).as_numpy_iterator()

    @property
    def position(self) -> int:
        """Number of batches consumed so far (also across restarts)."""
        return self._position

    def __iter__(self) -> "TrainIterator":
        return self

    def __next__(self) -> Batch:
        batch = next(self._batches)
        self._position += 1
        return batch

    def close(self) -> None:
        """Releases the tf.data iterator now; one left to interpreter exit makes TF log a finalization error."""
        self._batches = iter(())

    def get_state(self) -> dict[str, Any]:
        """Small JSON-able dict; ``set_state`` of it resumes at exactly the next batch."""
        return self.stream.state(self._position)

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Moves to the position in `state` (saved by an iterator over the same stream)."""
        self._restart(self.stream.position_from_state(dict(state)))


def pad_steps(x: tf.Tensor, steps: int) -> tuple[tf.Tensor, tf.Tensor]:
    """A sequence `[t, features]` cut or zero-padded at the end to `[steps, features]`, and its
    key-padding mask `[steps]` (True on the kept steps)."""
    x = x[:steps]
    kept = tf.shape(x)[0]
    padded = tf.pad(x, [[0, steps - kept]] + [[0, 0]] * (len(x.shape) - 1))
    return tf.ensure_shape(padded, [steps, *x.shape[1:]]), tf.range(steps) < kept


def make_train_iterator(data_cfg, spec: BatchSpec, *, batch_size: int, seed: int, process_index: int = 0,
                        process_count: int = 1, position: int = 0) -> TrainIterator:
    """Training iterator of this process: per-host batches in the layout of `spec` (a
    `comm_jax.batch.BatchSpec`: the views and their ops, where they are drawn, which modalities are
    variable-length sequences padded to their input length with a mask).

    Reads ``data_cfg.name``, ``data_dir`` (None), ``train_split`` ("train"), ``modalities``
    {modality: feature key}, ``shuffle`` (True), ``prepare`` (False: fail when the data is not built).
    With ``spec.on_device`` batches are ``{"raw": {modality: uint8 [B, H, W, C]}, "key": uint32
    [B, 2]}``, a PRNG key per example drawn from (seed, epoch, index), and the train step draws the
    views (`comm_jax.device_augment`); otherwise ``{"views": {view: {modality: [B, ...]}}}`` plus
    ``"valid"`` masks for variable-length modalities.
    `batch_size` is the per-host batch; `position` the number of batches already consumed.
    """
    modalities = _modalities(data_cfg)
    if sorted(modalities) != sorted(spec.modalities):
        raise ValueError(f"data.modalities {sorted(modalities)} differ from the model's {sorted(spec.modalities)}")
    view_ops = {}
    if not spec.on_device:
        for view, specs in spec.views.items():
            for modality, op_spec in specs.items():
                try:
                    view_ops[view, modality] = augment.parse(op_spec)
                except ValueError as error:
                    raise ValueError(f"config.data.views.{view}.{modality}: {error}") from None
    read_by_ops = _feature_keys(view_ops.values())
    loaded = _load_for(data_cfg, data_cfg.get("train_split", "train"),
                       sorted(set(modalities.values()) | set(read_by_ops)))
    stream = TrainStream(num_examples=loaded.num_examples, seed=int(seed), batch_size=batch_size,
                         process_index=process_index, process_count=process_count,
                         shuffle=bool(data_cfg.get("shuffle", True)))
    reader = _ExampleReader(loaded)
    if spec.on_device:
        not_images = sorted(m for m, key in modalities.items() if key not in loaded.image_shapes)
        if not_images:
            raise ValueError(f"data.augment_on_device supports image modalities only; {not_images} are not "
                             f"images (augment them in tf.data: augment_on_device=False)")
    steps = {m: spec.input_shapes[m][0] for m in spec.variable_length}

    @tf.autograph.experimental.do_not_convert
    def example_views(epoch: tf.Tensor, index: tf.Tensor) -> Batch:
        if spec.on_device:   # decoded uint8 images, once, and the example's key: the step draws the views
            key = example_seed(stream.seed, epoch, index, 0, "device")
            return {"raw": {modality: reader.read(feature, index) for modality, feature in modalities.items()},
                    "key": tf.bitcast(tf.cast(key, tf.int32), tf.uint32)}
        example: Batch = {"views": {view: {} for view in spec.views}}
        if steps:
            example["valid"] = {view: {} for view in spec.views}
        features = {key: reader.read(key, index) for key in read_by_ops}
        for modality, key in modalities.items():
            raw = reader.read(key, index)
            for view in spec.views:
                op_seed = example_seed(stream.seed, epoch, index, VIEW_IDS[view], modality)
                x = _finish(view_ops[view, modality](raw, op_seed, features))
                if modality in steps:
                    x, example["valid"][view][modality] = pad_steps(x, steps[modality])
                example["views"][view][modality] = x
        return example

    def dataset_from(position: int) -> tf.data.Dataset:
        first_epoch, offset = stream.locate(position)

        def epochs() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            epoch, start = first_epoch, offset
            while True:
                indices = stream.epoch_indices(epoch)[start:]
                yield np.full(len(indices), epoch, np.int64), indices
                epoch, start = epoch + 1, 0

        signature = tf.TensorSpec([None], tf.int64)
        indices = tf.data.Dataset.from_generator(epochs, output_signature=(signature, signature)).unbatch()
        return (indices.map(example_views, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
                .batch(batch_size, drop_remainder=True)
                .prefetch(tf.data.AUTOTUNE))

    return TrainIterator(dataset_from, stream, position)


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


class EvalIterator:
    """One pass (re-startable) over an evaluation split, padded to a whole number of batches.

    Each batch is ``{"inputs": {modality: [B, ...]}, "labels": {name: int [B]}, "mask": bool [B],
    "index": int64 [B]}``, ``index`` the example's position in the split; padding rows repeat record 0
    with mask False and index -1. Every process yields ``num_steps`` batches.
    """

    def __init__(self, dataset: tf.data.Dataset, num_steps: int, num_examples: int):
        self._dataset = dataset
        self.num_steps = num_steps
        self.num_examples = num_examples

    def __len__(self) -> int:
        return self.num_steps

    def __iter__(self) -> Iterator[Batch]:
        return self._dataset.as_numpy_iterator()


def make_eval_iterator(data_cfg, split: str, *, batch_size: int, process_index: int = 0,
                       process_count: int = 1, labels: Sequence[str] = (),
                       steps: Mapping[str, int] | None = None) -> EvalIterator:
    """Un-augmented batches of this process's share (``index % process_count == process_index``).

    Reads ``data_cfg.name``, ``data_dir``, ``modalities``, ``eval_ops`` {modality: spec} (default
    "normalize" for image features, no op otherwise) and, when `labels` is empty, ``labels``
    (feature keys returned under ``"labels"``; any feature, e.g. "id", may be one). `steps`
    {modality: length}: variable-length modalities, padded or cut to that length, with their masks
    under ``"valid"``.
    """
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
    modalities = _modalities(data_cfg)
    steps = dict(steps or {})
    label_keys = list(labels) or list(data_cfg.get("labels", None) or [])
    configured = {modality: augment.parse(op_spec)
                  for modality, op_spec in _per_modality(data_cfg, "eval_ops", modalities).items()}
    read_by_ops = _feature_keys(configured.values())
    loaded = _load_for(data_cfg, split, sorted(set(modalities.values()) | set(label_keys) | set(read_by_ops)))
    default_spec = {key: "normalize" if key in loaded.image_shapes else "" for key in loaded.columns}
    ops = {modality: configured.get(modality) or augment.parse(default_spec[key])
           for modality, key in modalities.items()}

    own = np.arange(process_index, loaded.num_examples, process_count, dtype=np.int64)
    num_steps = _ceil_div(_ceil_div(loaded.num_examples, process_count), batch_size)
    padded = np.full(num_steps * batch_size, -1, np.int64)
    padded[:len(own)] = own
    reader = _ExampleReader(loaded)

    @tf.autograph.experimental.do_not_convert
    def example(index: tf.Tensor) -> Batch:
        safe_index = tf.maximum(index, 0)
        inputs, valid = {}, {}
        features = {key: reader.read(key, safe_index) for key in read_by_ops}
        for modality, key in modalities.items():
            op_seed = example_seed(0, 0, safe_index, 0, modality)
            inputs[modality] = _finish(ops[modality](reader.read(key, safe_index), op_seed, features))
            if modality in steps:
                inputs[modality], valid[modality] = pad_steps(inputs[modality], steps[modality])
        out = {"inputs": inputs, "mask": index >= 0, "index": index,
               "labels": {key: reader.read(key, safe_index) for key in label_keys}}
        return out | ({"valid": valid} if valid else {})

    dataset = (tf.data.Dataset.from_tensor_slices(padded)
               .map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
               .batch(batch_size, drop_remainder=True)
               .prefetch(tf.data.AUTOTUNE))
    return EvalIterator(dataset, num_steps, len(own))
