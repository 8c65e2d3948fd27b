"""CoMM or a baseline on MM-IMDb (poster + plot, 23 genres) over frozen CLIP token features.

First `python -m comm_jax.extract_features --clip=WEIGHTS --manual_dir=DIR --output=FEATURES` runs the frozen
towers once over the posters and plots (input_pipeline/mmimdb.py builds MM-IMDb from the original release or
MultiBench's HDF5 file) and builds the TFDS dataset `mmimdb_features` in FEATURES/tfds; this config trains the
fusion transformer (or the baselines' towers) on those tokens.

Or, with `clip=WEIGHTS`, the frozen towers run inside the train step (and the evaluation's embedding step) on
the posters and plots of `mmimdb/original` (`source=hdf5`: `mmimdb/hdf5`) read from `--config.data.manual_dir`:
no extraction, each view's poster augmented in pixels before the image tower.

get_config(arg) tokens (comma-separated):
  features=DIR   the extraction's output: data read from DIR/tfds (built from DIR/shards on first use), token
                 counts and widths from DIR/shards/manifest.json
  clip=WEIGHTS   instead of features=: the CLIP weights (`load_clip`); encoders `clip_vision` / `clip_text` hold
                 them frozen; posters resized (shorter side) and centre-cropped to the towers' image size, plots
                 tokenized by the checkpoint's tokenizer, both in tf.data
  source=NAME    with clip=: `original` (default) or `hdf5`, the MM-IMDb builder read
  cpu            sized for a 2-core CPU: fusion width 128, 300 steps of batch 32
  loss=NAME      comm (default), cross, cross_self, cmc (towers mean-pool each modality's tokens)
  image_tokens=T, text_tokens=L, width=D   token counts and feature width when no manifest is given
                 (default 50, 77, 512)

The paper's setting (CoMM reference, configs/train_mmimdb.yaml): batch 64, 100 epochs, AdamW lr 1e-4, weight
decay 1e-2, 10 epochs of linear warm-up then cosine decay, temperature 0.1; CoMM fuses the image and text
tokens in a 1-layer, 8-head transformer of width 768 (each modality's tokens mapped to it by a linear
adapter when their width differs) with the MLP head 512 -> 256. Views: the reference draws SimCLR's image
augmentations before the frozen image tower and masks 15% of the text tokens before the text tower; on
features computed once, the views act on the tokens: 15% of the text tokens and 0-50% of the image tokens
(p = 0.5) are zeroed, then Gaussian noise (std 0.1, p = 0.5) is added to both. With clip=, the views are the
reference's kind, drawn before the towers: the centre-cropped poster gets SimCLR's augmentations (random resized
crop of scale 0.08-1, colour jitter, grayscale, blur, flip; CLIP's normalisation is the encoder's) and 15% of
the plot's tokens (start and end spared) are replaced by the padding id 0.

Evaluation (comm_jax.evaluate, every checkpoint): a one-vs-rest logistic-regression probe of the 23 genres on
the frozen Z of the train split (threshold 0.5 on each genre's sigmoid, as scikit-learn's predict), scored on
the test split: `probe/genres/f1_weighted` and `probe/genres/f1_macro`.
"""

from __future__ import annotations

import json
import os

import ml_collections
from ml_collections import config_dict

from comm_jax import methods
from configs import common

MODALITIES = ("image", "text")
METHODS = ("comm", "cross", "cross_self", "cmc")
TRAIN_EXAMPLES = 15552
DEFAULT_TOKENS = {"image": (50, 512), "text": (77, 512)}
VIEW_OPS = {"image": "drop_steps(fraction=(0.0, 0.5), p=0.5)|gaussian_noise(std=0.1, p=0.5)",
            "text": "drop_steps(fraction=(0.15, 0.15), p=1.0)|gaussian_noise(std=0.1, p=0.5)"}
SOURCES = ("original", "hdf5")


def clip_inputs(weights: str) -> dict:
    """Shapes and ops of the in-step path: {"image_size", "context_length", "widths", "views", "specials"} of the
    CLIP checkpoint `weights` (loaded once per process, `cached_clip`)."""
    from comm_jax.models.clip_encoders import cached_clip
    from comm_jax.view_recipes import simclr_image_ops

    clip = cached_clip(weights)
    size, tokenizer = clip.image_size, clip.tokenizer
    image_ops = simclr_image_ops(size).removesuffix("|normalize")      # the encoder normalises with CLIP's
    text_ops = f"mask_tokens(rate=0.15, mask_id=0, special_ids=(0, {tokenizer.start_id}, {tokenizer.end_id}))"
    return {"image_size": size, "context_length": clip.context_length,
            "widths": {"image": clip.vision_spec.width, "text": clip.text_spec.width},
            "views": {"image": image_ops, "text": text_ops}}


def token_shapes(tokens: dict[str, str]) -> dict[str, tuple[int, int]]:
    """{modality: (tokens, width)}: from the extraction's manifest (`features=DIR`) or the tokens."""
    if "features" in tokens:
        path = os.path.join(tokens["features"], "shards", "manifest.json")
        if not os.path.isfile(path):
            raise ValueError(f"config argument features={tokens['features']}: no {path}; run "
                             f"`python -m comm_jax.extract_features --output={tokens['features']} ...` first")
        with open(path) as handle:
            manifest = json.load(handle)
        if "image_tokens" not in manifest:
            raise ValueError(f"{path} records no token shapes yet: the extraction has not written a shard")
        return {"image": tuple(manifest["image_tokens"]), "text": tuple(manifest["text_tokens"])}
    width = int(tokens.get("width", DEFAULT_TOKENS["image"][1]))
    return {"image": (int(tokens.get("image_tokens", DEFAULT_TOKENS["image"][0])), width),
            "text": (int(tokens.get("text_tokens", DEFAULT_TOKENS["text"][0])), width)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    tokens = common.parse_arg(arg, known=("cpu", "loss", "features", "clip", "source", "image_tokens",
                                          "text_tokens", "width"))
    cpu = common.as_bool(tokens.get("cpu", "false"), "cpu")
    weights = tokens.get("clip")
    if weights and "features" in tokens:
        raise ValueError("config arguments features= and clip= exclude each other: tokens extracted once, or the "
                         "towers inside the step")
    source = tokens.get("source", "original")
    if source not in SOURCES or ("source" in tokens and not weights):
        raise ValueError(f"config argument source={source!r}: one of {SOURCES}, with clip=WEIGHTS")
    in_step = clip_inputs(weights) if weights else None
    shapes = token_shapes(tokens) if not weights else {m: (None, w) for m, w in in_step["widths"].items()}

    c = common.base_config()
    c.loss.name = common.method_name(tokens)
    if c.loss.name not in METHODS:
        raise ValueError(f"config argument loss={c.loss.name!r}: MM-IMDb runs {METHODS}")
    method = methods.get(c.loss.name)
    c.batch_size = 32 if cpu else 64
    epoch = TRAIN_EXAMPLES // c.batch_size
    c.num_steps = 300 if cpu else 100 * epoch
    c.optimizer.lr = 1e-4
    c.optimizer.weight_decay = 1e-2
    c.optimizer.schedule = "cosine"
    c.optimizer.warmup_steps = 30 if cpu else 10 * epoch
    c.log_every = 50 if cpu else 100
    c.ckpt_every = 150 if cpu else 10 * epoch

    width = 128 if cpu else 768
    c.model = common.model_for(c.loss.name, width, cpu, towers_head_hidden=512)
    c.model.modalities = MODALITIES
    fusion = method.architecture == "fusion"
    adapters = {m: {"adapter": "identity" if shapes[m][1] == width else "linear"} if fusion else {}
                for m in MODALITIES}
    if in_step:
        size = in_step["image_size"]
        c.model.encoders = {
            "image": dict(encoder="clip_vision", weights=weights, input_shape=(size, size, 3), pool="mean",
                          **adapters["image"]),
            "text": dict(encoder="clip_text", weights=weights, input_shape=(in_step["context_length"],),
                         input_dtype="int32", pool="mean", **adapters["text"])}
    else:
        c.model.encoders = {m: dict(encoder="none", input_shape=shapes[m], variable_length=True, pool="mean",
                                    **adapters[m]) for m in MODALITIES}
    c.model.precision = c.get_ref("precision")

    features = tokens.get("features")
    view_ops = in_step["views"] if in_step else VIEW_OPS
    c.data = ml_collections.ConfigDict(dict(
        name=f"mmimdb/{source}" if in_step else "mmimdb_features",
        data_dir=os.path.join(features, "tfds") if features else config_dict.placeholder(str),
        manual_dir=os.path.join(features, "shards") if features else config_dict.placeholder(str),
        prepare=True,                 # built from the extraction's shards (or the MM-IMDb files) on first use
        train_split="train",
        modalities={"image": "image", "text": "plot"} if in_step else {m: m for m in MODALITIES},
        views={v: dict(view_ops) if v != "weak" else {m: "" for m in MODALITIES} for v in method.views},
        augment_on_device=False,
    ))
    if in_step:
        c.data.image_sizes = {"image": in_step["image_size"]}
        c.data.tokenizer = {"text": weights}
        c.data.eval_ops = {"image": "", "text": ""}     # CLIP's normalisation is the encoder's
    c.evals.tasks = {"genres": "genres"}
    c.evals.evaluators = {"probe": {"type": "linear_probe"}}
    return c
