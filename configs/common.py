"""Shared config defaults, the `get_config(arg)` token parser, and start-up validation.

`arg` is a comma-separated list of tokens: `cpu` (the variant sized for a 2-core machine),
`loss=NAME` (comm, cross, cross_self, cmc, simclr) and experiment-specific `key=value` tokens.
"""

from __future__ import annotations

from typing import Any, Iterable

import ml_collections
from ml_collections import config_dict

LOSSES = ("comm", "cross", "cross_self", "cmc", "simclr")
TOP_LEVEL_KEYS = ("seed", "batch_size", "num_steps", "log_every", "ckpt_every", "keep_ckpts", "mesh",
                  "precision", "loss", "optimizer", "model", "data", "evals")
IMAGENET_MEAN_STD = "normalize"
# The reference's blur sigmas are in pixels at 224 px; smaller images get the same relative blur.
REFERENCE_IMAGE_SIZE = 224


def simclr_image_ops(size: int, crop_scale: tuple[float, float] = (0.08, 1.0)) -> str:
    """The reference's SimCLR augmentation (CoMM, Cross+Self views) at output `size`, as an op spec:
    random resized crop, colour jitter (p=0.8), grayscale (p=0.2), Gaussian blur (p=0.5), flip."""
    blur = tuple(round(s * size / REFERENCE_IMAGE_SIZE, 3) for s in (0.1, 2.0))
    return (f"random_resized_crop({size}, scale={tuple(crop_scale)})|color_jitter(0.4, 0.4, 0.4, 0.1, p=0.8)"
            f"|grayscale(p=0.2)|gaussian_blur(sigma={blur}, p=0.5)|flip_lr|normalize")


def weak_image_ops(size: int) -> str:
    """The reference's `img_transform` (CLIP's training views, and the probes'): a random resized
    crop of scale (0.5, 1) and normalisation, no colour or blur."""
    return f"random_resized_crop({size}, scale=(0.5, 1.0))|normalize"


def parse_arg(arg: str | None, known: Iterable[str]) -> dict[str, str]:
    """'cpu,loss=cross' -> {'cpu': 'true', 'loss': 'cross'}; unknown tokens are an error."""
    known = set(known)
    tokens: dict[str, str] = {}
    for token in filter(None, (t.strip() for t in (arg or "").split(","))):
        key, _, value = token.partition("=")
        if key not in known:
            raise ValueError(f"unknown config argument {key!r}; known: {sorted(known)}")
        tokens[key] = value or "true"
    return tokens


def as_bool(value: str, key: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise ValueError(f"config argument {key}={value!r} must be true or false")


def base_config() -> ml_collections.ConfigDict:
    """Keys every experiment has, with defaults; experiments fill `model` and `data`."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 64            # global, over all devices and hosts
    c.num_steps = 1000
    c.log_every = 50
    c.ckpt_every = 500
    c.keep_ckpts = 3             # latest N checkpoints kept ...
    c.keep_every = 0             # ... plus every K-th step (0: none)
    c.mesh = (("data", -1),)
    c.param_sharding = ()        # ((regex, partition spec tuple), ...); unmatched: replicated
    c.precision = "float32"      # or "bfloat16": bf16 activations/matmuls, float32 params and loss
    c.loss = ml_collections.ConfigDict(dict(name="comm", temperature=0.1, ssl_scale=1.0, simclr_index=-1))
    c.loss.weights = config_dict.placeholder(tuple)
    c.optimizer = ml_collections.ConfigDict(dict(
        lr=3e-4, weight_decay=1e-4, b1=0.9, b2=0.999, eps=1e-8, schedule="constant", warmup_steps=0,
        grad_clip=0.0))
    c.model = ml_collections.ConfigDict()
    c.data = ml_collections.ConfigDict()
    # The evaluation process (comm_jax.evaluate); defaults in comm_jax.evaluators.DEFAULT_EVALS.
    c.evals = ml_collections.ConfigDict(dict(
        tasks={}, task_means={}, train_split="train", test_split="test", batch_size=256,
        train_examples=0, test_examples=0, poll_seconds=5.0, max_attempts=3,
        evaluators={"probe": {"type": "linear_probe"}, "knn": {"type": "knn"},
                    "retrieval": {"type": "retrieval"}}))
    c.evals.probe_data = config_dict.placeholder(str)   # TFDS name to probe on (None: data.name)
    return c


def _positive(c, key: str) -> None:
    value = c
    for part in key.split("."):
        value = value[part]
    if not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"config.{key} must be positive, got {value!r}")


def validate(c: ml_collections.ConfigDict) -> None:
    """Fail at start-up with a message naming the key on a config that cannot run."""
    missing = [k for k in TOP_LEVEL_KEYS if k not in c]
    if missing:
        raise ValueError(f"config lacks top-level keys {missing}")
    for key in ("batch_size", "num_steps", "log_every", "ckpt_every", "keep_ckpts", "loss.temperature",
                "optimizer.lr"):
        _positive(c, key)
    if c.keep_every < 0:
        raise ValueError(f"config.keep_every must be >= 0, got {c.keep_every}")
    if c.optimizer.weight_decay < 0:
        raise ValueError(f"config.optimizer.weight_decay must be >= 0, got {c.optimizer.weight_decay}")
    if c.loss.name not in LOSSES:
        raise ValueError(f"config.loss.name must be one of {LOSSES}, got {c.loss.name!r}")
    if c.precision not in ("float32", "bfloat16"):
        raise ValueError(f"config.precision must be 'float32' or 'bfloat16', got {c.precision!r}")
    n_mod = len(c.model.modalities)
    if c.loss.name in ("cross", "cross_self", "cmc") and n_mod < 2:
        raise ValueError(f"config.loss.name={c.loss.name!r} needs at least two modalities, model has {n_mod}")
    if c.loss.weights is not None and len(c.loss.weights) != n_mod + 1:
        raise ValueError(f"config.loss.weights needs {n_mod + 1} entries (one per mask), got {len(c.loss.weights)}")
    if c.loss.name == "cross" and not c.model.get("logit_scale", False):
        raise ValueError("config.loss.name='cross' needs config.model.logit_scale=True (CLIP's learnable scale)")
    unknown = set(c.data.get("modalities", {})) ^ set(c.model.modalities)
    if unknown:
        raise ValueError(f"config.data.modalities and config.model.modalities differ on {sorted(unknown)}")


def to_json_dict(c: ml_collections.ConfigDict) -> dict[str, Any]:
    import json
    return json.loads(c.to_json())
