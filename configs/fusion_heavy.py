"""Fusion-heavy CoMM: frozen token features of two modalities and a deep fusion transformer.

The shape of CoMM on MM-IMDb with frozen backbones: each modality arrives as precomputed 768-d
token features (encoder `none`, adapter `identity`), and all the compute is in a 12-layer,
width-768, 12-head fusion transformer run n + 1 = 3 times per view. Used to benchmark the fusion
path (`python -m comm_jax.benchmark train_step --config configs/fusion_heavy.py`), which feeds
synthetic features; training on real features needs a TFDS builder of them in `data.name`.

get_config(arg) tokens (comma-separated):
  cpu          sized for a 2-core CPU: width 128, 2 layers, 4 heads, 32 tokens per modality
  loss=NAME    comm (default) trains the fusion model; cross, cross_self, cmc train per-modality towers
               over the same token features (mean-pooled), for comparison
  tokens=N     tokens per modality (default 128, or 32 with `cpu`)
"""

from __future__ import annotations

import ml_collections

from comm_jax import methods
from configs import common

MODALITIES = ("image", "text")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    tokens = common.parse_arg(arg, known=("cpu", "loss", "tokens"))
    cpu = common.as_bool(tokens.get("cpu", "false"), "cpu")
    n_tokens = int(tokens.get("tokens", 32 if cpu else 128))
    if n_tokens <= 0:
        raise ValueError(f"config argument tokens={n_tokens} must be positive")

    c = common.base_config()
    c.loss.name = common.method_name(tokens)
    method = methods.get(c.loss.name)
    c.batch_size = 64
    c.num_steps = 10_000
    if cpu:
        c.model = ml_collections.ConfigDict(dict(width=128, depth=2, heads=4, mlp_ratio=4,
                                                 head_hidden=256, head_out=128))
        c.num_steps = 500
    else:
        c.model = ml_collections.ConfigDict(dict(width=768, depth=12, heads=12, mlp_ratio=4,
                                                 head_hidden=512, head_out=256))
    width = c.model.width
    c.model.architecture = "fusion"
    if method.architecture == "towers":
        c.model = ml_collections.ConfigDict(dict(
            architecture="towers", latent=width, head_hidden=c.model.head_hidden, head_out=c.model.head_out,
            projection="linear" if c.loss.name == "cross" else "mlp",
            representation="projected" if c.loss.name == "cross" else "pooled"))
    modalities = MODALITIES[:method.max_modalities or len(MODALITIES)]
    c.model.modalities = modalities
    c.model.encoders = {m: dict(encoder="none", adapter="identity", pool="mean", input_shape=(n_tokens, width))
                        for m in modalities}
    c.model.precision = c.get_ref("precision")

    c.data = ml_collections.ConfigDict(dict(
        name=ml_collections.config_dict.placeholder(str),   # a TFDS builder of precomputed token features
        data_dir=ml_collections.config_dict.placeholder(str),
        prepare=False,
        train_split="train",
        modalities={m: m for m in modalities},
        views={v: {} for v in method.views},
    ))
    c.evals = ml_collections.ConfigDict()
    return c
