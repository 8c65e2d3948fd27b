"""Tiny MM-IMDb files in both original formats (the release's split.json + dataset/<id>.json|jpeg, and
MultiBench's multimodal_imdb.hdf5 + metadata.npy), `FakeClipTowers`, a test double of the frozen CLIP
towers with the API of `comm_jax.models.clip.load_clip` (deterministic, tiny, no weights), and
`write_tiny_clip`, a tiny random Hugging Face CLIPModel directory (needs torch and transformers)."""

from __future__ import annotations

import io
import json
import os

import jax.numpy as jnp
import numpy as np
from PIL import Image

from input_pipeline import mmimdb

COUNTS = {"train": 12, "dev": 3, "test": 9}
# The Fuel file orders its genre columns by frequency, not as the CoMM reference does.
HDF5_GENRE_ORDER = ("Drama", "Comedy", "Romance", "Thriller", "Crime", "Action", "Adventure", "Horror",
                    "Documentary", "Mystery", "Sci-Fi", "Fantasy", "Family", "Biography", "War", "History", "Music",
                    "Animation", "Musical", "Western", "Sport", "Short", "Film-Noir")
WORDS = ("a", "man", "woman", "love", "war", "space", "ship", "murder", "detective", "song", "ghost", "family")


def movie(index: int, rng: np.random.Generator) -> dict:
    """A movie whose genres show in its poster's colour and its plot's words (learnable, not trivially)."""
    drama, comedy = index % 2 == 0, index % 3 == 0
    genres = ["Drama"] * drama + ["Comedy"] * comedy + ["Horror", "Reality-TV"] * (not drama and not comedy)
    words = list(rng.choice(WORDS, size=6)) + ["love"] * drama + ["song"] * comedy
    return {"plot": ["short.", " ".join(words), "mid length"], "genres": genres,
            "colour": (200 if drama else 30, 200 if comedy else 30, 90)}


def movies_of(seed: int) -> list[dict]:
    """The movies of both formats' files, the same for one seed."""
    rng = np.random.default_rng(seed)
    return [movie(i, rng) for i in range(sum(COUNTS.values()))]


def jpeg(colour, size, rng: np.random.Generator, mode: str = "RGB") -> bytes:
    pixels = np.clip(np.array(colour)[None, None] + rng.normal(0, 20, size=(*size, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    return buffer.getvalue()


def write_original(directory: str, seed: int = 0) -> dict[str, list[str]]:
    """split.json and dataset/<id>.json|jpeg (posters of different sizes, one greyscale); returns the split."""
    rng, movies = np.random.default_rng(seed + 1), movies_of(seed)
    dataset = os.path.join(directory, "dataset")
    os.makedirs(dataset, exist_ok=True)
    split, index = {}, 0
    for name, count in COUNTS.items():
        split[name] = []
        for _ in range(count):
            imdb_id = f"{index:07d}"
            record = dict(movies[index])
            size = (24 + index % 3 * 4, 16 + index % 2 * 4)
            with open(os.path.join(dataset, f"{imdb_id}.jpeg"), "wb") as handle:
                handle.write(jpeg(record.pop("colour"), size, rng, "L" if index == 1 else "RGB"))
            with open(os.path.join(dataset, f"{imdb_id}.json"), "w") as handle:
                json.dump({**record, "title": f"movie {index}"}, handle)
            split[name].append(imdb_id)
            index += 1
    with open(os.path.join(directory, "split.json"), "w") as handle:
        json.dump(split, handle)
    return split


def fuel_split_attribute(counts: dict[str, int]) -> np.ndarray:
    """The Fuel `split` attribute: rows (split, source, start, stop, available, comment) for every source
    (Fuel's rows also hold an `indices` reference, unused here)."""
    dtype = np.dtype([("split", "S5"), ("source", "S15"), ("start", np.int64), ("stop", np.int64),
                      ("available", bool), ("comment", "S1")])
    rows, start = [], 0
    for split in mmimdb.SPLITS:
        for source in ("features", "genres", "images", "imdb_ids", "sequences"):
            rows.append((split.encode(), source.encode(), start, start + counts[split], True, b"."))
        start += counts[split]
    return np.array(rows, dtype=dtype)


def write_hdf5(directory: str, seed: int = 0, *, split_attribute: bool = True, metadata: bool = True,
               drop: str | None = None, target_names: bool = True) -> str:
    """multimodal_imdb.hdf5 in the Fuel layout (+ metadata.npy); `drop` leaves a field out."""
    import h5py

    rng = np.random.default_rng(seed)
    total = sum(COUNTS.values())
    vocabulary = ["_UNK_", *WORDS]
    movies = movies_of(seed)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, mmimdb.HDF5_FILE)
    with h5py.File(path, "w") as handle:
        images = np.stack([np.broadcast_to(np.array(m["colour"])[:, None, None], (3, 32, 20)) for m in movies])
        fields = {
            "images": (images + rng.integers(0, 20, size=images.shape)).astype(np.int32),
            "features": rng.normal(size=(total, mmimdb.WORD2VEC)).astype(np.float32),
            "genres": np.array([[g in m["genres"] for g in HDF5_GENRE_ORDER] for m in movies], np.int32),
            "imdb_ids": np.array([f"{i:07d}".encode() for i in range(total)], dtype="S7"),
        }
        for name, value in fields.items():
            if name != drop:
                handle[name] = value
        sequences = handle.create_dataset("sequences", (total,), dtype=h5py.vlen_dtype(np.int32))
        for i, m in enumerate(movies):
            sequences[i] = np.array([vocabulary.index(w) for w in max(m["plot"], key=len).split()], np.int32)
        if target_names and drop != "genres":
            handle["genres"].attrs["target_names"] = json.dumps(list(HDF5_GENRE_ORDER))
        if split_attribute:
            handle.attrs["split"] = fuel_split_attribute(COUNTS)
    if metadata:
        np.save(os.path.join(directory, mmimdb.METADATA_FILE),
                {"ix_to_word": dict(enumerate(vocabulary)), "vocab_size": len(vocabulary)}, allow_pickle=True)
    return path


class FakeClipTowers:
    """Test double of `load_clip(path)`: `image_tokens` [B, 1 + 4 * 4, D] (a mean token then 4 x 4 patch
    means, each mapped by a fixed random matrix), `text_tokens` [B, L, D] (fixed random word embeddings plus
    positions), `tokenize` (start 1, words hashed to 2..99, end 100, zero padding). Counts its calls."""

    image_size, context_length, width = 16, 12, 16

    def __init__(self, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.patch_map = jnp.asarray(rng.normal(size=(3, self.width)), jnp.float32)
        self.embedding = jnp.asarray(rng.normal(size=(101, self.width)), jnp.float32)
        self.positions = jnp.asarray(0.1 * rng.normal(size=(self.context_length, self.width)), jnp.float32)
        self.image_calls = 0

    def tokenize(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.context_length), np.int32)
        for row, text in enumerate(texts):
            ids = [1] + [2 + sum(map(ord, w)) % 98 for w in text.split()][: self.context_length - 2] + [100]
            out[row, :len(ids)] = ids
        return out

    def image_tokens(self, images):
        self.image_calls += 1
        b, h, w, _ = images.shape
        patches = images.reshape(b, 4, h // 4, 4, w // 4, 3).mean(axis=(2, 4)).reshape(b, 16, 3)
        tokens = jnp.concatenate([patches.mean(axis=1, keepdims=True), patches], axis=1)
        return tokens @ self.patch_map

    def text_tokens(self, ids):
        return self.embedding[ids] + self.positions[None, : ids.shape[1]]


TINY_CLIP_CONTEXT, TINY_CLIP_IMAGE = 16, 32


def write_tiny_clip(directory: str):
    """A tiny random `transformers.CLIPModel` saved in `directory` (safetensors, config, vocab.json,
    merges.txt): a byte-level vocabulary plus a few merges of the fake plots' words. Returns the model."""
    import torch
    import transformers

    from comm_jax.models.clip.tokenizer import END, START, byte_symbols

    symbols = byte_symbols()
    merges = [("l", "o"), ("lo", "v"), ("lov", "e</w>"), ("s", "o"), ("so", "n"), ("son", "g</w>")]
    tokens = [*symbols, *(s + "</w>" for s in symbols), *("".join(m) for m in merges), START, END]
    vocab = {t: i for i, t in enumerate(tokens)}
    torch.manual_seed(0)
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=TINY_CLIP_CONTEXT, bos_token_id=vocab[START],
                         eos_token_id=vocab[END], pad_token_id=0),
        vision_config=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                           image_size=TINY_CLIP_IMAGE, patch_size=8),
        projection_dim=16)
    model = transformers.CLIPModel(config).eval()
    model.save_pretrained(directory)
    with open(os.path.join(directory, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(directory, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return model
