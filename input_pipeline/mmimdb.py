"""TFDS builder `mmimdb`: MM-IMDb (movie poster + plot, 23-genre multi-label) read from `manual_dir` in
either original format; nothing is downloaded.

`mmimdb/original`, the release of Arevalo et al. (mmimdb.tar.gz): `split.json` ({"train", "dev", "test":
[imdb ids]}) and `dataset/<id>.json` (fields "plot": a list of strings, "genres": a list of names) with the
poster `dataset/<id>.jpeg`, stored as it is (JPEG bytes, its own size; a greyscale or CMYK poster is
converted to RGB).

`mmimdb/hdf5`, MultiBench's `multimodal_imdb.hdf5` (the Fuel file of the same release): "images"
[N, 3, 256, 160] (channels, height, width), "features" [N, 300] (word2vec average of the plot), "genres"
[N, 23] multi-hot with the names in `genres.attrs["target_names"]`, "imdb_ids" [N]. The splits are the
file's `split` attribute when it has one, else MultiBench's index ranges (train 15552, dev 2608, test 7799).
With `metadata.npy` beside it (its vocabulary, `ix_to_word`) the plot is the file's "sequences" read back
into words (lower-cased and tokenised by the release's normalisation); without it the plot is empty and
only the word2vec vector describes the text (the feature extraction refuses such examples). The posters
(int32 in the release's file) are read a chunk at a time and stored as JPEG.

Both give: `image` (RGB poster), `plot` (text; the longest of the movie's plots, as the release and
MultiBench choose; the CoMM reference draws one at random each time it reads a movie), `genres` [23] int64
multi-hot in `GENRES` order (the CoMM reference's: scikit-learn's MultiLabelBinarizer, alphabetical; genre
names compared lower-cased, names outside the 23 ignored as the reference does), `word2vec` [300] (hdf5;
zeros in `original`), `imdb_id`, `id` (index within the split).
"""

from __future__ import annotations

import io
import json
import os
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds

from input_pipeline.manual_files import MalformedFileError, manual_directory, require_array, require_file

GENRES = ("action", "adventure", "animation", "biography", "comedy", "crime", "documentary", "drama", "family",
          "fantasy", "film-noir", "history", "horror", "music", "musical", "mystery", "romance", "sci-fi", "short",
          "sport", "thriller", "war", "western")
SPLITS = ("train", "dev", "test")
HDF5_FILE, METADATA_FILE, SPLIT_FILE = "multimodal_imdb.hdf5", "metadata.npy", "split.json"
# MultiBench's ranges of the Fuel file: train, dev, test.
HDF5_SPLIT_SIZES = {"train": 15552, "dev": 2608, "test": 7799}
WORD2VEC = 300
HDF5_FIELDS = ("images", "features", "genres", "imdb_ids")


def multi_hot(names, path: str, field: str = "'genres'") -> np.ndarray:
    """[23] int64 of genre `names` in GENRES order; names outside GENRES are ignored (the reference)."""
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise MalformedFileError(f"{path}: field {field} should be a list of genre names, got {names!r}")
    lowered = {str(n).lower() for n in names}
    return np.array([genre in lowered for genre in GENRES], np.int64)


def longest_plot(plots, path: str) -> str:
    """The longest of a movie's plots (the release's and MultiBench's choice)."""
    if isinstance(plots, str):
        plots = [plots]
    if not isinstance(plots, list) or not plots or not all(isinstance(p, str) for p in plots):
        raise MalformedFileError(f"{path}: field 'plot' should be a non-empty list of strings, got {plots!r:.80}")
    return plots[int(np.argmax([len(p) for p in plots]))]


# ---------------------------------------------------------------------------------------------------
# The original release: split.json + dataset/<id>.json + dataset/<id>.jpeg


def read_split_ids(directory: str) -> dict[str, list[str]]:
    """{split: [imdb id]} of `split.json`; errors name the file and the field."""
    path = require_file(directory, SPLIT_FILE, "mmimdb/original")
    try:
        with open(path) as handle:
            data = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise MalformedFileError(f"{path}: not readable JSON ({error})") from None
    if not isinstance(data, dict):
        raise MalformedFileError(f"{path}: top level should be a dict of splits {SPLITS}, got {type(data).__name__}")
    out = {}
    for split in SPLITS:
        if split not in data:
            raise MalformedFileError(f"{path}: missing field {split!r}; it has {sorted(data)}")
        ids = data[split]
        if not isinstance(ids, list) or not ids:
            raise MalformedFileError(f"{path}: field {split!r} should be a non-empty list of imdb ids")
        out[split] = [str(i) for i in ids]
    return out


def read_movie(directory: str, imdb_id: str) -> dict:
    """One movie of the original release: {"plot", "genres", "image" (JPEG bytes), "imdb_id"}."""
    dataset = os.path.join(directory, "dataset")
    path = require_file(dataset, f"{imdb_id}.json", "mmimdb/original")
    image_path = require_file(dataset, f"{imdb_id}.jpeg", "mmimdb/original")
    try:
        with open(path) as handle:
            meta = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise MalformedFileError(f"{path}: not readable JSON ({error})") from None
    for field in ("plot", "genres"):
        if not isinstance(meta, dict) or field not in meta:
            raise MalformedFileError(f"{path}: missing field {field!r}"
                                     + (f"; it has {sorted(meta)}" if isinstance(meta, dict) else ""))
    image = _rgb_jpeg(image_path)
    return {"plot": longest_plot(meta["plot"], path), "genres": multi_hot(meta["genres"], path),
            "image": image, "imdb_id": imdb_id}


# ---------------------------------------------------------------------------------------------------
# MultiBench's multimodal_imdb.hdf5 (+ optional metadata.npy)


def hdf5_split_ranges(handle, path: str, count: int) -> dict[str, tuple[int, int]]:
    """{split: (start, stop)}: the Fuel `split` attribute (rows of the 'genres' source) or MultiBench's."""
    ranges = {}
    if "split" in handle.attrs:
        for row in handle.attrs["split"]:
            split, source = (row["split"], row["source"])
            split, source = (v.decode() if isinstance(v, bytes) else str(v) for v in (split, source))
            if source == "genres" and split in SPLITS:
                ranges[split] = (int(row["start"]), int(row["stop"]))
        if sorted(ranges) != sorted(SPLITS):
            raise MalformedFileError(f"{path}: attribute 'split' lacks rows of source 'genres' for "
                                     f"{sorted(set(SPLITS) - set(ranges))}")
    else:
        if count != sum(HDF5_SPLIT_SIZES.values()):
            raise MalformedFileError(f"{path}: {count} examples and no 'split' attribute; MultiBench's split "
                                     f"needs {sum(HDF5_SPLIT_SIZES.values())} ({HDF5_SPLIT_SIZES})")
        start = 0
        for split in SPLITS:
            ranges[split] = (start, start + HDF5_SPLIT_SIZES[split])
            start += HDF5_SPLIT_SIZES[split]
    for split, (start, stop) in ranges.items():
        if not 0 <= start < stop <= count:
            raise MalformedFileError(f"{path}: split {split!r} covers rows [{start}, {stop}) of {count}")
    return ranges


def hdf5_genre_columns(handle, path: str) -> np.ndarray:
    """Column of the file's 'genres' for each of GENRES (the file orders them by frequency)."""
    names = handle["genres"].attrs.get("target_names")
    if names is None:
        raise MalformedFileError(f"{path}: field 'genres' lacks the attribute 'target_names' (the genre of each "
                                 f"column)")
    try:
        names = [str(n).lower() for n in json.loads(names)]
    except (TypeError, json.JSONDecodeError) as error:
        raise MalformedFileError(f"{path}: attribute genres.target_names is not a JSON list ({error})") from None
    missing = [g for g in GENRES if g not in names]
    if missing:
        raise MalformedFileError(f"{path}: attribute genres.target_names lacks {missing}; it has {names}")
    return np.array([names.index(g) for g in GENRES])


def read_vocabulary(directory: str) -> dict[int, str] | None:
    """`ix_to_word` of `metadata.npy`, or None when the file is absent."""
    path = os.path.join(directory, METADATA_FILE)
    if not os.path.isfile(path):
        return None
    try:
        metadata = np.load(path, allow_pickle=True, encoding="latin1").item()
        vocabulary = metadata["ix_to_word"]
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as error:
        raise MalformedFileError(f"{path}: expected a dict with field 'ix_to_word' "
                                 f"({type(error).__name__}: {error})") from None
    return {int(k): v.decode() if isinstance(v, bytes) else str(v) for k, v in vocabulary.items()}


def _open_hdf5(path: str):
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise MalformedFileError(f"{path}: not a readable HDF5 file ({error})") from None


def read_hdf5(directory: str) -> tuple[str, dict[str, np.ndarray], dict[str, tuple[int, int]]]:
    """(the file's path, its checked per-example fields except the posters, its split ranges); the posters
    stay in the file (12 GB as the release's int32) and are read by `hdf5_examples`. Errors name the file
    and the field."""
    path = require_file(directory, HDF5_FILE, "mmimdb/hdf5")
    with _open_hdf5(path) as handle:
        missing = [f for f in HDF5_FIELDS if f not in handle]
        if missing:
            raise MalformedFileError(f"{path}: missing field(s) {missing}; it has {sorted(handle.keys())}")
        columns = hdf5_genre_columns(handle, path)
        images = handle["images"]
        if images.ndim != 4 or images.shape[1] != 3:
            raise MalformedFileError(f"{path}: field 'images' has shape {images.shape}, expected [N, 3, height, width]")
        data = {"features": require_array(handle["features"][()], path, "'features'", ndim=2, trailing=(WORD2VEC,)),
                "genres": require_array(handle["genres"][()], path, "'genres'", ndim=2)[:, columns],
                "imdb_ids": np.asarray(handle["imdb_ids"][()])}
        if "sequences" in handle:
            data["sequences"] = np.asarray(handle["sequences"][()], dtype=object)
        lengths = {"images": len(images), **{f: len(v) for f, v in data.items()}}
        if len(set(lengths.values())) != 1:
            raise MalformedFileError(f"{path}: fields hold different numbers of examples: {lengths}")
        return path, data, hdf5_split_ranges(handle, path, len(images))


def hdf5_examples(path: str, data: dict[str, np.ndarray], start: int, stop: int,
                  vocabulary: dict[int, str] | None, chunk: int = 256) -> Iterator[dict]:
    """The examples of rows [start, stop) of the Fuel file, posters read `chunk` rows at a time."""
    with _open_hdf5(path) as handle:
        for first in range(start, stop, chunk):
            posters = handle["images"][first:min(first + chunk, stop)]
            for offset, poster in enumerate(posters):
                row = first + offset
                imdb_id = data["imdb_ids"][row]
                words = []
                if vocabulary is not None and "sequences" in data:
                    words = [vocabulary.get(int(i), "") for i in data["sequences"][row]]
                yield {"image": np.clip(poster, 0, 255).astype(np.uint8).transpose(1, 2, 0),
                       "plot": " ".join(w for w in words if w and w != "_UNK_"),
                       "genres": data["genres"][row].astype(np.int64),
                       "word2vec": np.nan_to_num(data["features"][row].astype(np.float32)),
                       "imdb_id": imdb_id.decode() if isinstance(imdb_id, bytes) else str(imdb_id)}


class Mmimdb(tfds.core.GeneratorBasedBuilder):
    """MM-IMDb from the original release or MultiBench's HDF5 file (module doc)."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name="original", description="split.json + dataset/<id>.json|jpeg"),
        tfds.core.BuilderConfig(name="hdf5", description="MultiBench's multimodal_imdb.hdf5 (+ metadata.npy)"),
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = ("mmimdb/original: put split.json and the folder dataset/ of mmimdb.tar.gz in the "
                                    "manual directory; mmimdb/hdf5: put multimodal_imdb.hdf5 (and metadata.npy) there.")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
            "plot": tfds.features.Text(),
            "genres": tfds.features.Tensor(shape=(len(GENRES),), dtype=np.int64),
            "word2vec": tfds.features.Tensor(shape=(WORD2VEC,), dtype=np.float32),
            "imdb_id": tfds.features.Text(),
            "id": np.int64,
        }), description=__doc__)

    def _split_generators(self, dl_manager):
        name = f"mmimdb/{self.builder_config.name}"
        if self.builder_config.name == "original":
            directory = manual_directory(dl_manager, name, f"{SPLIT_FILE} and dataset/")
            ids = read_split_ids(directory)
            zeros = np.zeros(WORD2VEC, np.float32)
            return {split: self._generate_examples({**read_movie(directory, imdb_id), "word2vec": zeros}
                                                   for imdb_id in ids[split]) for split in SPLITS}
        directory = manual_directory(dl_manager, name, HDF5_FILE)
        path, data, ranges = read_hdf5(directory)
        vocabulary = read_vocabulary(directory)
        return {split: self._generate_examples(hdf5_examples(path, data, *ranges[split], vocabulary))
                for split in SPLITS}

    def _generate_examples(self, examples):
        for index, example in enumerate(examples):
            if not isinstance(example["image"], bytes):
                example["image"] = _encode_jpeg(example["image"])
            yield index, {**example, "id": index}


def _rgb_jpeg(path: str) -> bytes:
    """The poster's JPEG bytes; a greyscale or CMYK poster is converted to RGB and encoded again."""
    from PIL import Image, UnidentifiedImageError

    with open(path, "rb") as handle:
        data = handle.read()
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "JPEG":
                raise MalformedFileError(f"{path}: not a JPEG image ({image.format})")
            if image.mode == "RGB":
                return data
            return _encode_jpeg(np.asarray(image.convert("RGB")))
    except (UnidentifiedImageError, OSError) as error:
        raise MalformedFileError(f"{path}: not a readable JPEG image ({error})") from None


def _encode_jpeg(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()
