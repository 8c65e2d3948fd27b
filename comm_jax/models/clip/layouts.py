"""The two checkpoint layouts users have for CLIP (Hugging Face `CLIPModel`, open_clip / OpenAI state
dicts): which layout a state dict is, the tower sizes its shapes imply, and its tensors rearranged into
the Flax towers' parameter paths."""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Mapping

import numpy as np

from comm_jax.models.clip.tensor_files import CheckpointError
from comm_jax.models.clip.towers import TextSpec, VisionSpec

Path = tuple
# (parameter path in the Flax towers, source keys, how the source tensors become the parameter)
Rule = tuple[Path, tuple[str, ...], Callable[..., np.ndarray]]

# Entries that hold no weights of the towers: index buffers, the zero-shot temperature, OpenAI's sizes.
IGNORED = re.compile(r"(.*position_ids|logit_scale|input_resolution|context_length|vocab_size|(.*\.)?attn_mask)$")


def same(x: np.ndarray) -> np.ndarray:
    return x


def transposed(x: np.ndarray) -> np.ndarray:
    return x.T


def stacked_kernels(*weights: np.ndarray) -> np.ndarray:
    """Separate torch q/k/v weights `[out, in]` -> one Flax kernel `[in, 3 * out]`."""
    return np.concatenate([w.T for w in weights], axis=1)


def stacked_biases(*biases: np.ndarray) -> np.ndarray:
    return np.concatenate(biases)


def conv_kernel(x: np.ndarray) -> np.ndarray:
    """torch conv weight `[out, in, kh, kw]` -> Flax `[kh, kw, in, out]`."""
    return x.transpose(2, 3, 1, 0)


def layout_of(state: Mapping[str, np.ndarray], path: str) -> str:
    """`hf` or `open_clip`, from the key names."""
    if any(k.startswith(("vision_model.", "text_model.")) for k in state):
        return "hf"
    if any(k.startswith("visual.") or k == "token_embedding.weight" for k in state):
        return "open_clip"
    sample = ", ".join(sorted(state)[:5]) or "no tensors"
    raise CheckpointError(f"{path}: neither a Hugging Face CLIPModel nor an open_clip state dict (keys: {sample}, ...)")


def _count_layers(state: Mapping[str, Any], pattern: str) -> int:
    found = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def _layer_norm(target: Path, source: str) -> list[Rule]:
    return [(target + ("scale",), (source + ".weight",), same), (target + ("bias",), (source + ".bias",), same)]


def _linear(target: Path, source: str, kernel=transposed) -> list[Rule]:
    return [(target + ("kernel",), (source + ".weight",), kernel), (target + ("bias",), (source + ".bias",), same)]


def _heads(width: int, heads: int | None, key: str) -> int:
    heads = heads or width // 64
    if heads <= 0 or width % heads:
        raise CheckpointError(f"cannot tell the attention heads of width {width} ({key}); pass {key}=")
    return heads


def _grid(positions: int, key: str) -> int:
    grid = math.isqrt(positions - 1)
    if grid * grid != positions - 1:
        raise CheckpointError(f"{key} has {positions} positions, not 1 + a square number of patches")
    return grid


# ---------------------------------------------------------------- Hugging Face CLIPModel
def _hf_block(target: Path, src: str) -> list[Rule]:
    attn = src + "self_attn."
    return [*_layer_norm(target + ("ln_1",), src + "layer_norm1"),
            (target + ("attn", "qkv", "kernel"), tuple(f"{attn}{n}_proj.weight" for n in "qkv"), stacked_kernels),
            (target + ("attn", "qkv", "bias"), tuple(f"{attn}{n}_proj.bias" for n in "qkv"), stacked_biases),
            *_linear(target + ("attn", "out"), attn + "out_proj"),
            *_layer_norm(target + ("ln_2",), src + "layer_norm2"),
            *_linear(target + ("fc",), src + "mlp.fc1"), *_linear(target + ("proj",), src + "mlp.fc2")]


def _tower_config(config: Mapping[str, Any], tower: str) -> Mapping[str, Any]:
    """A CLIPModel config's `vision_config`/`text_config`; a CLIPVisionModel's (CLIPTextModel's) config itself."""
    if config.get("model_type") == f"clip_{tower}_model":
        return config
    return config.get(f"{tower}_config", {})


def hf_specs(state, config: Mapping[str, Any], heads: tuple[int | None, int | None], activation: str | None):
    """(VisionSpec or None, TextSpec or None) of a Hugging Face state dict; `config` is its config.json
    (possibly empty): heads, activation and LayerNorm epsilon come from it, with CLIPConfig's defaults.
    `config.json` may be a CLIPModel's or a single tower's (CLIPVisionModel[WithProjection], CLIPTextModel)."""
    vision = text = None
    if "vision_model.embeddings.patch_embedding.weight" in state:
        cfg = _tower_config(config, "vision")
        width, _, patch, _ = state["vision_model.embeddings.patch_embedding.weight"].shape
        positions = state["vision_model.embeddings.position_embedding.weight"].shape[0]
        proj = state.get("visual_projection.weight")
        vision = VisionSpec(
            width=width, patch=patch, image_size=patch * _grid(positions, "vision_model.embeddings.position_embedding"),
            layers=_count_layers(state, r"vision_model\.encoder\.layers\.(\d+)\."),
            heads=_heads(width, heads[0] or cfg.get("num_attention_heads", 12 if config else None), "vision_heads"),
            mlp_width=state["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
            embed_dim=None if proj is None else proj.shape[0],
            activation=activation or cfg.get("hidden_act", "quick_gelu"), eps=cfg.get("layer_norm_eps", 1e-5))
    if "text_model.embeddings.token_embedding.weight" in state:
        cfg = _tower_config(config, "text")
        vocab, width = state["text_model.embeddings.token_embedding.weight"].shape
        proj = state.get("text_projection.weight")
        text = TextSpec(
            width=width, vocab_size=vocab,
            context_length=state["text_model.embeddings.position_embedding.weight"].shape[0],
            layers=_count_layers(state, r"text_model\.encoder\.layers\.(\d+)\."),
            heads=_heads(width, heads[1] or cfg.get("num_attention_heads", 8 if config else None), "text_heads"),
            mlp_width=state["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
            embed_dim=None if proj is None else proj.shape[0],
            activation=activation or cfg.get("hidden_act", "quick_gelu"), eps=cfg.get("layer_norm_eps", 1e-5))
    return vision, text


def hf_rules(vision: VisionSpec | None, text: TextSpec | None) -> list[Rule]:
    rules: list[Rule] = []
    if vision:
        src = "vision_model."
        rules += [(("vision", "patch_embed", "kernel"), (src + "embeddings.patch_embedding.weight",), conv_kernel),
                  (("vision", "class_embedding"), (src + "embeddings.class_embedding",), same),
                  (("vision", "positional_embedding"), (src + "embeddings.position_embedding.weight",), same),
                  *_layer_norm(("vision", "ln_pre"), src + "pre_layrnorm"),
                  *_layer_norm(("vision", "ln_post"), src + "post_layernorm")]
        for i in range(vision.layers):
            rules += _hf_block(("vision", "transformer", "blocks", i), f"{src}encoder.layers.{i}.")
        if vision.embed_dim:
            rules.append((("vision", "projection", "kernel"), ("visual_projection.weight",), transposed))
    if text:
        src = "text_model."
        rules += [(("text", "token_embedding", "embedding"), (src + "embeddings.token_embedding.weight",), same),
                  (("text", "positional_embedding"), (src + "embeddings.position_embedding.weight",), same),
                  *_layer_norm(("text", "ln_final"), src + "final_layer_norm")]
        for i in range(text.layers):
            rules += _hf_block(("text", "transformer", "blocks", i), f"{src}encoder.layers.{i}.")
        if text.embed_dim:
            rules.append((("text", "projection", "kernel"), ("text_projection.weight",), transposed))
    return rules


# ---------------------------------------------------------------- open_clip / OpenAI state dicts
def _open_clip_block(target: Path, src: str) -> list[Rule]:
    return [*_layer_norm(target + ("ln_1",), src + "ln_1"),
            (target + ("attn", "qkv", "kernel"), (src + "attn.in_proj_weight",), transposed),
            (target + ("attn", "qkv", "bias"), (src + "attn.in_proj_bias",), same),
            *_linear(target + ("attn", "out"), src + "attn.out_proj"),
            *_layer_norm(target + ("ln_2",), src + "ln_2"),
            *_linear(target + ("fc",), src + "mlp.c_fc"), *_linear(target + ("proj",), src + "mlp.c_proj")]


def open_clip_specs(state, config: Mapping[str, Any], heads: tuple[int | None, int | None],
                    activation: str | None):
    """(VisionSpec or None, TextSpec or None) of an open_clip state dict; `config` is the `model_cfg` of an
    open_clip_config.json beside it (possibly empty). Without one, heads are width / 64 and the activation
    quick_gelu (OpenAI's models); open_clip's own models use GELU, which its config says."""
    vision = text = None
    if activation is None:
        activation = "quick_gelu" if not config or config.get("quick_gelu", False) else "gelu"
    if "visual.conv1.weight" in state:
        cfg = config.get("vision_cfg", {}) if config else {}
        width, _, patch, _ = state["visual.conv1.weight"].shape
        positions = state["visual.positional_embedding"].shape[0]
        proj = state.get("visual.proj")
        vision = VisionSpec(
            width=width, patch=patch, image_size=patch * _grid(positions, "visual.positional_embedding"),
            layers=_count_layers(state, r"visual\.transformer\.resblocks\.(\d+)\."),
            heads=_heads(width, heads[0] or (width // cfg["head_width"] if "head_width" in cfg else None),
                         "vision_heads"),
            mlp_width=state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            embed_dim=None if proj is None else proj.shape[1], activation=activation)
    if "token_embedding.weight" in state:
        cfg = config.get("text_cfg", {}) if config else {}
        vocab, width = state["token_embedding.weight"].shape
        proj = state.get("text_projection")
        text = TextSpec(
            width=width, vocab_size=vocab, context_length=state["positional_embedding"].shape[0],
            layers=_count_layers(state, r"transformer\.resblocks\.(\d+)\."),
            heads=_heads(width, heads[1] or cfg.get("heads"), "text_heads"),
            mlp_width=state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            embed_dim=None if proj is None else proj.shape[1], activation=activation)
    return vision, text


def open_clip_rules(vision: VisionSpec | None, text: TextSpec | None) -> list[Rule]:
    rules: list[Rule] = []
    if vision:
        rules += [(("vision", "patch_embed", "kernel"), ("visual.conv1.weight",), conv_kernel),
                  (("vision", "class_embedding"), ("visual.class_embedding",), same),
                  (("vision", "positional_embedding"), ("visual.positional_embedding",), same),
                  *_layer_norm(("vision", "ln_pre"), "visual.ln_pre"),
                  *_layer_norm(("vision", "ln_post"), "visual.ln_post")]
        for i in range(vision.layers):
            rules += _open_clip_block(("vision", "transformer", "blocks", i), f"visual.transformer.resblocks.{i}.")
        if vision.embed_dim:
            rules.append((("vision", "projection", "kernel"), ("visual.proj",), same))
    if text:
        rules += [(("text", "token_embedding", "embedding"), ("token_embedding.weight",), same),
                  (("text", "positional_embedding"), ("positional_embedding",), same),
                  *_layer_norm(("text", "ln_final"), "ln_final")]
        for i in range(text.layers):
            rules += _open_clip_block(("text", "transformer", "blocks", i), f"transformer.resblocks.{i}.")
        if text.embed_dim:
            rules.append((("text", "projection", "kernel"), ("text_projection",), same))
    return rules


LAYOUTS = {"hf": (hf_specs, hf_rules), "open_clip": (open_clip_specs, open_clip_rules)}


def apply_rules(state: Mapping[str, np.ndarray], rules: list[Rule], shapes: Mapping[Path, tuple],
                path: str) -> dict[Path, np.ndarray]:
    """{parameter path: float32 array} for the towers whose parameter shapes are `shapes`; every source
    key must be present, every tensor of `state` used (or one that holds no weights, e.g. `position_ids`),
    and every converted tensor of the parameter's shape."""
    wanted = [k for _, keys, _ in rules for k in keys]
    missing = [k for k in wanted if k not in state]
    if missing:
        raise CheckpointError(f"{path}: missing {len(missing)} tensor(s) the towers need: "
                              f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    used = set(wanted)
    unexpected = sorted(k for k in state if k not in used and not IGNORED.fullmatch(k))
    if unexpected:
        raise CheckpointError(f"{path}: unexpected tensor(s) this CLIP architecture has no place for: "
                              f"{', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}")
    params = {}
    for target, keys, convert in rules:
        sources = [state[k] for k in keys]
        try:
            value = np.asarray(convert(*sources), np.float32)
        except ValueError:
            value = None
        if value is None or value.shape != tuple(shapes[target]):
            raise CheckpointError(f"{path}: shape mismatch: {', '.join(keys)} "
                                  f"{' + '.join(str(tuple(s.shape)) for s in sources)} does not fit "
                                  f"{'/'.join(map(str, target))} {tuple(shapes[target])}")
        params[target] = value
    return params
