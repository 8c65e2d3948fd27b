"""Pretrained CLIP towers in Flax, loaded from local files: `load_clip(path)` reads a Hugging Face CLIP
directory or an open_clip checkpoint file (no download, no torch) and gives jitted image and text encoders
returning per-token features and pooled/projected embeddings, plus CLIP's tokenizer when its files are there.

    clip = load_clip("weights/clip-vit-base-patch32")
    image_tokens = clip.image_tokens(images)            # [B, H, W, 3] in [0, 1] -> [B, 1 + grid**2, D_img]
    text_tokens = clip.text_tokens(clip.tokenize(["a poster of a film"]))   # -> [B, L, D_txt]
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from comm_jax.models.clip.layouts import LAYOUTS, layout_of, apply_rules
from comm_jax.models.clip.tensor_files import CheckpointError, UnsafePickleError, read_tensor_file
from comm_jax.models.clip.tokenizer import ClipTokenizer, TokenizerFilesError
from comm_jax.models.clip.towers import ClipText, ClipTowers, ClipVision, TextSpec, TowerOutput, VisionSpec

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# weight files looked for in a directory, in this order (`X.index.json` for weights sharded into several files)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
                "open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def preprocess(images: jax.Array, size: int, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
    """`[B, H, W, 3]` in [0, 1] -> `[B, size, size, 3]` as CLIP sees it: shorter side resized to `size`
    (bicubic, antialiased), centre crop, normalised with `mean`/`std`."""
    b, h, w, c = images.shape
    if c != 3:
        raise ValueError(f"images must be [batch, height, width, 3] RGB, got shape {images.shape}")
    images = images.astype(jnp.float32)
    # the longer side's length truncated, as torchvision's and Hugging Face's resize
    new_h, new_w = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    if (new_h, new_w) != (h, w):
        images = jnp.clip(jax.image.resize(images, (b, new_h, new_w, c), "bicubic", antialias=True), 0.0, 1.0)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    images = images[:, top:top + size, left:left + size]
    return (images - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


# Compiled once per tower architecture (graph definitions compare equal), not once per loaded checkpoint.
@functools.partial(jax.jit, static_argnames=("graphdef", "size", "mean", "std"))
def _encode_images(params, images, *, graphdef, size, mean, std) -> TowerOutput:
    out = nnx.merge(graphdef, params).vision(preprocess(images, size, mean, std))
    return TowerOutput(*(x.astype(jnp.float32) for x in out))


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _encode_text(params, token_ids, *, graphdef) -> TowerOutput:
    out = nnx.merge(graphdef, params).text(jnp.asarray(token_ids, jnp.int32))
    return TowerOutput(*(x.astype(jnp.float32) for x in out))


class Clip:
    """Pretrained CLIP towers with jitted encoders. `towers` is the Flax NNX module (`towers.vision`,
    `towers.text`, either None when the checkpoint lacks it); `graphdef, params` its split form, for use
    inside a train step (`nnx.merge(graphdef, params).vision(pixels)`). `logit_scale` is the checkpoint's
    log temperature (CLIP multiplies cosine similarities by its exp), None when absent."""

    def __init__(self, towers: ClipTowers, *, logit_scale: float | None = None,
                 mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD,
                 tokenizer_files: tuple[str, ...] = (), source: str = ""):
        self.towers = towers
        self.graphdef, self.params = nnx.split(towers)
        self.vision_spec: VisionSpec | None = towers.vision.spec if towers.vision is not None else None
        self.text_spec: TextSpec | None = towers.text.spec if towers.text is not None else None
        self.logit_scale = logit_scale
        self.mean, self.std = tuple(mean), tuple(std)
        self.source = source
        self._tokenizer_files = tokenizer_files
        self._tokenizer: ClipTokenizer | None = None

    @property
    def image_size(self) -> int:
        return self._need("vision").spec.image_size

    @property
    def context_length(self) -> int:
        return self._need("text").spec.context_length

    def _need(self, tower: str):
        module = getattr(self.towers, tower)
        if module is None:
            raise ValueError(f"{self.source}: this checkpoint has no {tower} tower")
        return module

    def preprocess(self, images) -> jax.Array:
        """float32 `[B, H, W, 3]` in [0, 1] -> the vision tower's input `[B, image_size, image_size, 3]`
        (traceable: for `towers.vision` inside a user's jitted step)."""
        return preprocess(jnp.asarray(images), self.image_size, self.mean, self.std)

    def encode_images(self, images) -> TowerOutput:
        """images: float32 `[B, H, W, 3]` in [0, 1]. tokens `[B, 1 + grid**2, D_img]` (the encoder's last
        hidden states, before the post-LN), pooled `[B, D_img]`, embedding `[B, E]` (projected)."""
        self._need("vision")
        return _encode_images(self.params, jnp.asarray(images), graphdef=self.graphdef, size=self.image_size,
                              mean=self.mean, std=self.std)

    def encode_text(self, token_ids) -> TowerOutput:
        """token_ids: int `[B, L]` as `tokenize` gives. tokens `[B, L, D_txt]` (after the final LN), pooled
        `[B, D_txt]` at the end-of-text token, embedding `[B, E]` (projected)."""
        self._need("text")
        return _encode_text(self.params, token_ids, graphdef=self.graphdef)

    def image_tokens(self, images) -> jax.Array:
        """float32 `[B, H, W, 3]` in [0, 1] -> float32 `[B, 1 + grid**2, D_img]`."""
        return self.encode_images(images).tokens

    def text_tokens(self, token_ids) -> jax.Array:
        """int `[B, L]` -> float32 `[B, L, D_txt]`."""
        return self.encode_text(token_ids).tokens

    @property
    def tokenizer(self) -> ClipTokenizer:
        if self._tokenizer is None:
            files = self._tokenizer_files
            if len(files) == 2:
                self._tokenizer = ClipTokenizer.from_hf_files(*files, context_length=self.context_length)
            elif len(files) == 1:
                self._tokenizer = ClipTokenizer.from_open_clip_bpe(files[0], context_length=self.context_length)
            else:
                raise TokenizerFilesError(
                    f"{self.source}: no tokenizer files found; put vocab.json + merges.txt (Hugging Face) or "
                    f"bpe_simple_vocab_16e6.txt.gz (open_clip) beside the weights, or pass load_clip(tokenizer=...)")
        return self._tokenizer

    def tokenize(self, texts: Sequence[str] | str) -> np.ndarray:
        """int32 `[B, context_length]`: start token, BPE tokens, end token, zeros."""
        return self.tokenizer(texts)


def _read_json(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{path}: not valid JSON: {err}") from None


def _weights_file(path: str) -> str:
    if os.path.isdir(path):
        for name in WEIGHT_FILES:
            if os.path.isfile(os.path.join(path, name)):
                return os.path.join(path, name)
        raise CheckpointError(f"{path}: no CLIP weights in this directory (looked for {', '.join(WEIGHT_FILES)})")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file or directory")
    return path


def _read_shards(index: str) -> dict[str, np.ndarray]:
    """The tensors of a sharded Hugging Face checkpoint, from the files its index's `weight_map` names."""
    weight_map = _read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index}: no weight_map in this index")
    state = {}
    for shard in sorted(set(weight_map.values())):
        state.update(read_tensor_file(os.path.join(os.path.dirname(index), shard)))
    return state


def _tokenizer_files(directory: str, tokenizer: str | None) -> tuple[str, ...]:
    where = tokenizer or directory
    if where.endswith(".gz") and os.path.isfile(where):
        return (where,)
    hf = (os.path.join(where, "vocab.json"), os.path.join(where, "merges.txt"))
    if all(os.path.isfile(p) for p in hf):
        return hf
    bpe = os.path.join(where, "bpe_simple_vocab_16e6.txt.gz")
    return (bpe,) if os.path.isfile(bpe) else ()


def load_clip(path: str, *, vision_heads: int | None = None, text_heads: int | None = None,
              activation: str | None = None, tokenizer: str | None = None, dtype=jnp.float32) -> Clip:
    """CLIP towers from local weights. `path`: a directory holding `model.safetensors` or `pytorch_model.bin`
    (Hugging Face `CLIPModel`, with its `config.json`, `vocab.json`, `merges.txt`, `preprocessor_config.json`
    when present) or open_clip's `open_clip_model.safetensors` / `open_clip_pytorch_model.bin` (with
    `open_clip_config.json`); or a single open_clip / OpenAI state-dict file (`.pt`, `.bin`, `.safetensors`).
    Sizes come from the tensor shapes; heads, activation and LayerNorm epsilon from the config files, else
    heads = width / 64 and quick_gelu (OpenAI's models); the keyword arguments override them. `tokenizer`: a
    directory with the tokenizer files or the `.txt.gz` path, when they are not beside the weights."""
    weights = _weights_file(path)
    directory = os.path.dirname(weights)
    state = _read_shards(weights) if weights.endswith(".index.json") else read_tensor_file(weights)
    layout = layout_of(state, weights)
    specs_of, rules_of = LAYOUTS[layout]
    if layout == "hf":
        config = _read_json(os.path.join(directory, "config.json"))
        pre = _read_json(os.path.join(directory, "preprocessor_config.json"))
        mean, std = pre.get("image_mean", CLIP_MEAN), pre.get("image_std", CLIP_STD)
    else:
        open_clip_config = _read_json(os.path.join(directory, "open_clip_config.json"))
        config = open_clip_config.get("model_cfg", {})
        pre = open_clip_config.get("preprocess_cfg", {})
        mean, std = pre.get("mean", CLIP_MEAN), pre.get("std", CLIP_STD)
    try:
        vision, text = specs_of(state, config, (vision_heads, text_heads), activation)
    except KeyError as err:
        raise CheckpointError(f"{weights}: missing tensor {err.args[0]!r}") from None
    except CheckpointError as err:
        raise CheckpointError(f"{weights}: {err}") from None
    if vision is None and text is None:
        raise CheckpointError(f"{weights}: holds neither a CLIP vision nor a text tower")
    abstract = nnx.eval_shape(lambda: ClipTowers(vision, text, dtype=dtype, rngs=nnx.Rngs(0)))
    graphdef, abstract_state = nnx.split(abstract)
    flat = nnx.to_flat_state(abstract_state)
    params = apply_rules(state, rules_of(vision, text), {k: v.shape for k, v in flat}, weights)
    state_of_params = nnx.from_flat_state([(k, v.replace(jnp.asarray(params[k]))) for k, v in flat])
    towers = nnx.merge(graphdef, state_of_params)
    logit_scale = state.get("logit_scale")
    return Clip(towers, logit_scale=None if logit_scale is None else float(logit_scale.reshape(-1)[0]),
                mean=mean, std=std, tokenizer_files=_tokenizer_files(directory, tokenizer), source=weights)


__all__ = ["CLIP_MEAN", "CLIP_STD", "CheckpointError", "Clip", "ClipText", "ClipTokenizer", "ClipTowers",
           "ClipVision", "TextSpec", "TokenizerFilesError", "TowerOutput", "UnsafePickleError", "VisionSpec",
           "load_clip", "preprocess"]
