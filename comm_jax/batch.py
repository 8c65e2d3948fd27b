"""The batch contract: what a training batch holds, built once from the config and the method, and
read by the pipeline, the train step, the benchmark's synthetic batches and the AOT check.

A training batch is one of two layouts (numpy per host, global jax arrays on the mesh):
- views drawn in tf.data: `{"views": {view: {modality: float32 [B, ...]}}}` (int32 token ids for `clip_text`), plus
  `"valid": {view: {modality: bool [B, steps]}}` for variable-length modalities (False = padding);
- views drawn on the devices (`data.augment_on_device`, images only): `{"raw": {modality: uint8
  [B, h, w, c]}, "key": uint32 [B, 2]}`, the examples' decoded images once and a PRNG key each.
Views are named by the method (`Method.views`); `data.views[view][modality]` is the op spec.
An evaluation batch is `{"inputs": {modality: [B, ...]}, "valid": {...}, "labels": {...}, "mask":
bool [B], "index": int64 [B]}` (`input_pipeline.pipeline.make_eval_iterator`).
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any

import jax
import jax.numpy as jnp

# Each view's randomness is salted by its number: view1 and view2 are the two strong views every
# contrastive method draws; `weak` is the reference's lightly augmented view (CLIP, Cross+Self).
VIEW_IDS = {"view1": 1, "view2": 2, "weak": 3}
# Encoders whose input is not float32 (by `model.encoders.<m>.encoder`).
INPUT_DTYPES = {"clip_text": "int32"}


def modality_salt(modality: str) -> int:
    """The 31-bit salt that separates the randomness of the modalities of one example."""
    return zlib.crc32(modality.encode()) & 0x7FFFFFFF


@dataclasses.dataclass(frozen=True)
class BatchSpec:
    """The training batch of one run: modalities with their model input shapes, the views and the
    op spec of each (view, modality), where views are drawn, and which modalities carry masks."""

    input_shapes: dict[str, tuple[int, ...]]
    views: dict[str, dict[str, str]]
    on_device: bool
    variable_length: tuple[str, ...]
    input_dtypes: dict[str, str] = dataclasses.field(default_factory=dict)   # default float32

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.input_shapes)

    def structure(self, batch_size: int) -> dict[str, Any]:
        """Shapes and dtypes (`jax.ShapeDtypeStruct`, unsharded) of a global batch of `batch_size`."""
        shapes = {m: (batch_size, *s) for m, s in self.input_shapes.items()}
        if self.on_device:
            return {"raw": {m: jax.ShapeDtypeStruct(s, jnp.uint8) for m, s in shapes.items()},
                    "key": jax.ShapeDtypeStruct((batch_size, 2), jnp.uint32)}
        dtypes = {m: jnp.dtype(self.input_dtypes.get(m, "float32")) for m in shapes}
        out: dict[str, Any] = {"views": {v: {m: jax.ShapeDtypeStruct(s, dtypes[m]) for m, s in shapes.items()}
                                         for v in self.views}}
        if self.variable_length:
            out["valid"] = {v: {m: jax.ShapeDtypeStruct(shapes[m][:2], jnp.bool_) for m in self.variable_length}
                            for v in self.views}
        return out


def view_specs(data_cfg, views: tuple[str, ...], modalities: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """`data.views` checked against the method's views: {view: {modality: op spec}} (a missing
    modality: no augmentation). Raises naming the key."""
    given = dict(data_cfg.get("views", None) or {})
    missing = [v for v in views if v not in given]
    if missing:
        raise ValueError(f"config.data.views lacks the view(s) {missing} this method trains on; it has "
                         f"{sorted(given)} (each maps modality -> augmentation op spec)")
    unknown = [v for v in views if v not in VIEW_IDS]
    if unknown:
        raise ValueError(f"views {unknown} have no random salt; known views: {sorted(VIEW_IDS)}")
    out = {}
    for view in views:
        specs = dict(given[view] or {})
        extra = sorted(set(specs) - set(modalities))
        if extra:
            raise ValueError(f"config.data.views.{view} has entries {extra} for modalities the model does not have "
                             f"{sorted(modalities)}")
        for modality, spec in specs.items():
            if not isinstance(spec, str):
                raise ValueError(f"config.data.views.{view}.{modality} must be an op spec string, got {spec!r}")
        out[view] = {m: specs.get(m, "") for m in modalities}
    return out


def batch_spec(cfg, method) -> BatchSpec:
    """The contract of `cfg` trained with `method` (a `comm_jax.methods.Method`)."""
    modalities = tuple(cfg.model.modalities)
    encoders = cfg.model.encoders
    variable = tuple(m for m in modalities if encoders[m].get("variable_length", False))
    on_device = bool(cfg.data.get("augment_on_device", False))
    if on_device and variable:
        raise ValueError(f"config.data.augment_on_device draws image views only; {list(variable)} are "
                         f"variable-length sequences (set config.data.augment_on_device=False)")
    for m in variable:
        if len(encoders[m].input_shape) != 2:
            raise ValueError(f"config.model.encoders.{m}.variable_length needs input_shape (steps, features), "
                             f"got {tuple(encoders[m].input_shape)}")
    return BatchSpec(input_shapes={m: tuple(encoders[m].input_shape) for m in modalities},
                     views=view_specs(cfg.data, method.views, modalities), on_device=on_device,
                     variable_length=variable, input_dtypes={m: input_dtype(encoders[m]) for m in modalities})


def input_dtype(encoder_spec) -> str:
    """The dtype of a modality's model input: `input_dtype` of its encoder spec, else int32 for the token ids
    of `clip_text`, float32 for everything else."""
    return str(encoder_spec.get("input_dtype", INPUT_DTYPES.get(encoder_spec.get("encoder", "none"), "float32")))
