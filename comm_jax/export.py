"""Export a trained model for downstream probing: parameters only, the model config and a manifest,
loadable with `load(OUT)` without the training code, the data pipeline, TensorFlow or Orbax.

    python -m comm_jax.export --workdir=DIR --output=OUT [--step=N] [--embeddings --split=test --config=...]

OUT holds `params.npz` and `batch_stats.npz` (one array per variable, keyed by its path such as
`encoders/image_1/encoder/convs/0/kernel`), `model_config.json`, optionally the embeddings of a split
(`embeddings_<split>.npz`: `z` from all modalities `[N, width]`, `z_<modality>` from each one alone,
`label_<key>` `[N, ...]`), and `manifest.json`, written last, so an interrupted export has none.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from typing import Any, Mapping, Sequence

import jax
import numpy as np

import comm_jax
from comm_jax.evaluators.frozen_model import FrozenModel, abstract_variables

FORMAT = "comm-jax-export"
FORMAT_VERSION = 1
MANIFEST, MODEL_CONFIG = "manifest.json", "model_config.json"
VARIABLE_FILES = {"params": "params.npz", "batch_stats": "batch_stats.npz"}


REPRESENTATIONS = {
    "fusion": "fusion transformer CLS output Z, before the projection head",
    "towers": "each modality's own vector (pooled or projected), concatenated in the order asked",
}


class ExportError(ValueError):
    """An export directory that is missing a file or does not match its model config."""


def _path_name(path) -> str:
    keys = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
    return "/".join(keys[:-1] if keys and keys[-1] == "value" else keys)


def flatten_variables(tree) -> dict[str, np.ndarray]:
    """{path name: numpy array} of an nnx.State (or any pytree of arrays)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {_path_name(path): np.asarray(jax.device_get(leaf)) for path, leaf in leaves}


def unflatten_variables(abstract, arrays: Mapping[str, np.ndarray], what: str):
    """The tree of `abstract` (ShapeDtypeStructs) filled from `arrays`, or an ExportError naming the
    missing, unexpected and mis-shaped variables."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    names = [_path_name(path) for path, _ in leaves]
    missing = sorted(set(names) - set(arrays))
    unexpected = sorted(set(arrays) - set(names))
    wrong = [f"{n}: file {arrays[n].shape}, model {leaf.shape}" for n, (_, leaf) in zip(names, leaves)
             if n in arrays and tuple(arrays[n].shape) != tuple(leaf.shape)]
    if missing or unexpected or wrong:
        raise ExportError(f"{what} does not match the model config: missing {missing[:5]}"
                          f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                          f"{'...' if len(unexpected) > 5 else ''}, wrong shapes {wrong[:5]}")
    values = [jax.numpy.asarray(arrays[n], leaf.dtype) for n, (_, leaf) in zip(names, leaves)]
    return jax.tree_util.tree_unflatten(treedef, values)


def _write_atomic(path: str, write) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


def _write_json(path: str, value: Any) -> None:
    _write_atomic(path, lambda f: f.write(json.dumps(value, indent=2, sort_keys=True).encode()))


def embeddings_file(split: str) -> str:
    """`embeddings_<split>.npz`, a TFDS split spec such as `test[:10%]` made file-name safe."""
    return "embeddings_" + (re.sub(r"[^A-Za-z0-9_.-]+", "_", split).strip("_") or "split") + ".npz"


def manifest_for(model: FrozenModel, files: Sequence[str]) -> dict[str, Any]:
    cfg = model.model_cfg
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "comm_jax_version": comm_jax.__version__,
        "step": model.step, "modalities": list(model.modalities), "width": model.width,
        "representation": REPRESENTATIONS[cfg.get("architecture", "fusion")],
        "inputs": {m: {"shape": [None, *cfg["encoders"][m]["input_shape"]], "dtype": "float32"}
                   for m in model.modalities},
        "precision": cfg.get("precision", "float32"),
        "files": sorted(files),
    }


def write_export(model: FrozenModel, output: str,
                 embeddings: Mapping[str, Mapping[str, np.ndarray]] | None = None) -> str:
    """Writes `model` (and `embeddings`: split -> {npz key: array}) to `output`; returns its path."""
    output = os.path.abspath(output)
    os.makedirs(output, exist_ok=True)
    if os.path.exists(os.path.join(output, MANIFEST)):
        os.remove(os.path.join(output, MANIFEST))      # the directory is not a valid export until done
    files = [MODEL_CONFIG]
    _write_json(os.path.join(output, MODEL_CONFIG), model.model_cfg)
    for kind, tree in (("params", model.params), ("batch_stats", model.batch_stats)):
        arrays = flatten_variables(tree)
        _write_atomic(os.path.join(output, VARIABLE_FILES[kind]), lambda f, a=arrays: np.savez(f, **a))
        files.append(VARIABLE_FILES[kind])
    for split, arrays in (embeddings or {}).items():
        name = embeddings_file(split)
        _write_atomic(os.path.join(output, name), lambda f, a=arrays: np.savez(f, **a))
        files.append(name)
    _write_json(os.path.join(output, MANIFEST), manifest_for(model, files))
    return output


def _read_json(path: str, what: str) -> Any:
    if not os.path.exists(path):
        raise ExportError(f"{what} {path} is missing: {os.path.dirname(path)} is not a complete comm-jax export")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as error:
        raise ExportError(f"{what} {path} is not valid JSON: {error}") from None


def load(path: str) -> FrozenModel:
    """The exported model: `.embed(batch, modalities=(...))` gives Z `[batch, width]` for any subset
    of `.modalities`; `.manifest` is the manifest. Raises ExportError naming a missing or mismatched file."""
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise ExportError(f"no export directory at {path}")
    manifest = _read_json(os.path.join(path, MANIFEST), "manifest")
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ExportError(f"{path}/{MANIFEST} is format {manifest.get('format')!r} version "
                          f"{manifest.get('format_version')!r}; this comm-jax reads {FORMAT!r} "
                          f"version {FORMAT_VERSION}")
    model_cfg = _read_json(os.path.join(path, MODEL_CONFIG), "model config")
    if list(model_cfg.get("modalities", [])) != list(manifest.get("modalities", [])):
        raise ExportError(f"{MODEL_CONFIG} has modalities {model_cfg.get('modalities')} but {MANIFEST} lists "
                          f"{manifest.get('modalities')}")
    try:
        graphdef, abstract_params, abstract_stats = abstract_variables(model_cfg)
    except (ValueError, KeyError, TypeError) as error:
        raise ExportError(f"{path}/{MODEL_CONFIG} does not describe a buildable model: {error}") from None
    trees = {}
    for kind, abstract in (("params", abstract_params), ("batch_stats", abstract_stats)):
        file = os.path.join(path, VARIABLE_FILES[kind])
        if not os.path.exists(file):
            raise ExportError(f"{file} is missing: {path} is not a complete comm-jax export")
        try:
            with np.load(file) as arrays:
                loaded = dict(arrays)
        except (OSError, ValueError, zipfile.BadZipFile) as error:
            raise ExportError(f"{file} is not a readable .npz file: {error}") from None
        trees[kind] = unflatten_variables(abstract, loaded, file)
    return FrozenModel(model_cfg, graphdef, trees["params"], trees["batch_stats"], step=manifest.get("step"),
                       manifest=manifest)


def export(workdir: str, output: str, *, step: int | None = None, cfg=None, split: str | None = None) -> str:
    """Exports checkpoint `step` (default: the latest) of `workdir`; with `cfg` and `split`, also the
    frozen embeddings and labels (`cfg.evals.tasks`) of that split of `cfg.evals.probe_data`."""
    from comm_jax.checkpoints import CheckpointStore
    from comm_jax.mesh import make_mesh
    from comm_jax.evaluators.frozen_model import restore_frozen_model

    store = CheckpointStore(workdir, read_only=True)
    try:
        steps = store.steps()
        if not steps:
            raise ValueError(f"no checkpoints in {store.directory}")
        step = steps[-1] if step is None else step
        if step not in steps:
            raise ValueError(f"no checkpoint at step {step} in {store.directory}; it has {steps}")
        mesh = make_mesh(cfg.mesh if cfg is not None else [("data", -1)])
        model = restore_frozen_model(store, step, mesh)
    finally:
        store.close()
    embeddings = {split: split_embeddings(model, cfg, split, mesh)} if split else None
    return write_export(model, output, embeddings)


def split_embeddings(model: FrozenModel, cfg, split: str, mesh) -> dict[str, np.ndarray]:
    """{"z": all modalities, "z_<m>": each modality alone, "label_<key>": labels} of one split."""
    from comm_jax.evaluators import DEFAULT_DATASET, resolve_config
    from comm_jax.evaluators.data import evaluation_data
    from comm_jax.evaluators.features import extract_features

    evals = resolve_config(cfg.evals)
    source = evaluation_data(cfg, evals, [(DEFAULT_DATASET, split)])[DEFAULT_DATASET, split]
    subsets = [model.modalities] + [(m,) for m in model.modalities]
    features = extract_features(model, source, subsets, mesh)
    out = {"z": features.z[model.modalities]}
    out.update({f"z_{m}": features.z[(m,)] for m in model.modalities})
    out.update({f"label_{k}": v for k, v in features.labels.items()})
    return out


def main(argv=None) -> None:
    from absl import app, flags
    from absl import logging as absl_logging
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Experiment config (needed with --embeddings: data and "
                                    "labels to embed).", lock_config=True)
    flags.DEFINE_string("workdir", None, "Training directory with checkpoints.")
    flags.DEFINE_string("output", None, "Directory to write the export to.")
    flags.DEFINE_integer("step", None, "Checkpoint step to export (default: the latest).")
    flags.DEFINE_bool("embeddings", False, "Also write the frozen embeddings and labels of --split.")
    flags.DEFINE_string("split", "test", "Split embedded with --embeddings.")
    flags.mark_flags_as_required(["workdir", "output"])

    def run(_):
        absl_logging.set_verbosity(absl_logging.WARNING)
        f = flags.FLAGS
        if f.embeddings and f.config is None:
            raise SystemExit("error: --embeddings needs --config (which data, labels and mesh to use)")
        try:
            out = export(f.workdir, f.output, step=f.step, cfg=f.config, split=f.split if f.embeddings else None)
        except (ValueError, FileNotFoundError) as err:
            raise SystemExit(f"error: {err}")
        print(f"exported to {out}: {', '.join(load(out).manifest['files'])}", flush=True)

    app.run(run, argv=argv)


if __name__ == "__main__":
    main()
