"""Shared config defaults and the `get_config(arg)` token parser of the experiment configs.

`arg` is a comma-separated list of tokens: `cpu` (the variant sized for a 2-core machine),
`loss=NAME` (a method of `comm_jax.methods`: comm, cross, cross_self, cmc, simclr) and
experiment-specific `key=value` tokens. Start-up validation is `comm_jax.config_schema.validate`.
"""

from __future__ import annotations

from typing import Iterable

import ml_collections
from ml_collections import config_dict

from comm_jax import methods


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


def method_name(tokens: dict[str, str]) -> str:
    """The `loss=NAME` token (default comm), checked against the methods' registry."""
    name = tokens.get("loss", "comm")
    if name not in methods.METHODS:
        raise ValueError(f"config argument loss={name!r} must be one of {tuple(methods.METHODS)}")
    return name


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
    c.loss = ml_collections.ConfigDict(dict(name="comm", temperature=0.1, ssl_scale=1.0))
    c.loss.weights = config_dict.placeholder(tuple)
    c.loss.column_chunk = 0       # CoMM: > 0 scores the gathered columns in chunks of this many (memory O(chunk), not O(batch))
    c.optimizer = ml_collections.ConfigDict(dict(
        lr=3e-4, weight_decay=1e-4, b1=0.9, b2=0.999, eps=1e-8, schedule="constant", warmup_steps=0,
        grad_clip=0.0))
    c.model = ml_collections.ConfigDict()
    c.data = ml_collections.ConfigDict()
    # The evaluation process (comm_jax.evaluate); defaults in comm_jax.evaluators.DEFAULT_EVALS.
    c.evals = ml_collections.ConfigDict(dict(
        tasks={}, task_means={}, train_split="train", test_split="test", batch_size=256,
        train_examples=0, test_examples=0, poll_seconds=5.0, max_attempts=3, datasets={},
        evaluators={"probe": {"type": "linear_probe"}, "knn": {"type": "knn"},
                    "retrieval": {"type": "retrieval"}}))
    c.evals.probe_data = config_dict.placeholder(str)   # TFDS name of the `default` dataset (None: data.name)
    return c


def model_for(method: str, width: int, cpu: bool, towers_head_hidden: int) -> ml_collections.ConfigDict:
    """The model of `method` over encoders of output `width`: the fusion transformer for a fusion method, two
    towers with a linear projection for cross, and two towers with an MLP head (hidden width `towers_head_hidden`
    in the full variant, 128 at cpu) for the others."""
    if methods.get(method).architecture == "fusion":
        return ml_collections.ConfigDict(dict(architecture="fusion", width=width, depth=1, heads=4 if cpu else 8,
                                              mlp_ratio=4, head_hidden=128 if cpu else 512,
                                              head_out=64 if cpu else 256))
    if method == "cross":
        return ml_collections.ConfigDict(dict(architecture="towers", latent=width, projection="linear",
                                              head_out=width, representation="projected"))
    return ml_collections.ConfigDict(dict(architecture="towers", latent=width, projection="mlp",
                                          head_hidden=128 if cpu else towers_head_hidden, head_out=64 if cpu else 256,
                                          representation="pooled"))
