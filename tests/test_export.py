"""Export: the loaded model gives the training-time Z for every subset of modalities, the CLI writes
params, config, manifest and embeddings, loading needs neither the training stack nor TensorFlow,
and a missing or mismatched file fails with a message naming it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from flax import nnx

import input_pipeline  # noqa: F401  (registers bimodal_trifeatures)
from comm_jax import methods
from comm_jax.checkpoints import CheckpointStore, mark_complete
from comm_jax.export import ExportError, export, flatten_variables, load
from comm_jax.models import build_model, split_model
from comm_jax.train_state import TrainState, make_optimizer
from configs import trifeatures
from input_pipeline.pipeline import make_eval_iterator

REPO = Path(__file__).resolve().parents[1]
STEP = 5
SUBSETS = [("image_1",), ("image_2",), ("image_1", "image_2")]


def save_trained(root: Path, loss: str, data_dir: str):
    """A TrainState checkpoint of `loss`'s trainable saved the way training saves it, its parameters
    moved away from initialisation, and the in-memory state it came from. (A real training run is
    exercised by tests/test_evaluate.py; its train-step compile would double this module's time.)"""
    cfg = trifeatures.get_config(f"cpu,loss={loss}")
    if loss == "comm":
        cfg.model.update(dict(width=32, heads=2, head_hidden=64, head_out=32))
    else:
        cfg.model.update(dict(latent=16, head_out=32))
    for m in cfg.model.modalities:
        cfg.model.encoders[m].encoder_args.channels = (8, 16, 16)
    cfg.data.data_dir = data_dir
    trainable = methods.build(cfg).build(nnx.Rngs(params=cfg.seed))
    graphdef, params, batch_stats = split_model(trainable)
    rng = np.random.default_rng(7)
    params = jax.tree.map(lambda x: jnp.asarray(np.asarray(x) + 0.1 * rng.normal(size=x.shape), x.dtype), params)
    tx, _ = make_optimizer(cfg.optimizer, cfg.num_steps)
    state = TrainState(step=jnp.asarray(STEP, jnp.int32), params=params, batch_stats=batch_stats,
                       opt_state=tx.init(params))
    workdir = str(root / f"run-{loss}")
    store = CheckpointStore(workdir)
    store.save(STEP, state, {"position": STEP}, cfg.to_json(), force=True)
    store.wait()
    store.close()
    mark_complete(workdir, STEP)
    batch = next(iter(make_eval_iterator(cfg.data, "test[:16]", batch_size=16, labels=("shape",))))
    return dict(root=root, cfg=cfg, workdir=workdir, graphdef=graphdef, state=state, inputs=batch["inputs"],
                data_dir=data_dir)


def trained_model(trained):
    """The model part of the saved trainable, in evaluation mode."""
    model = nnx.merge(trained["graphdef"], trained["state"].params, trained["state"].batch_stats).model
    model.eval()
    return model


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("tfds"))
    tfds.builder("bimodal_trifeatures/32px", data_dir=directory).download_and_prepare()
    return directory


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    return save_trained(tmp_path_factory.mktemp("export"), "comm", data_dir)


@pytest.fixture(scope="module")
def exported(trained):
    return export(trained["workdir"], str(trained["root"] / "export"))


def test_exported_model_gives_the_training_time_z_for_every_subset(trained, exported):
    loaded = load(exported)
    assert loaded.modalities == ("image_1", "image_2") and loaded.width == 32 and loaded.step == STEP
    inputs = trained["inputs"]
    expected = np.asarray(trained_model(trained).representations(inputs, SUBSETS))   # [subsets, batch, width]
    for subset, reference in zip(SUBSETS, expected):
        z = np.asarray(loaded.embed(inputs, modalities=subset))
        assert z.shape == (16, 32)
        np.testing.assert_allclose(z, reference, rtol=1e-5, atol=1e-5)
    initial = flatten_variables(nnx.state(build_model(trained["cfg"].model, seed=trained["cfg"].seed), nnx.Param))
    with np.load(os.path.join(exported, "params.npz")) as saved:          # trained values, not the init
        assert sorted(saved) == sorted(initial)
        assert not any(np.allclose(saved[k], initial[k]) for k in initial if initial[k].std() > 0)


def test_exported_towers_give_each_images_projection_concatenated(tmp_path, data_dir):
    """Cross's export: Z of a subset is its images' CLIP projections in the subset's order."""
    trained = save_trained(tmp_path, "cross", data_dir)
    loaded = load(export(trained["workdir"], str(tmp_path / "export")))
    model = trained_model(trained)
    _, projected = model(trained["inputs"])
    assert loaded.manifest["representation"].startswith("each modality's own vector")
    np.testing.assert_allclose(loaded.embed(trained["inputs"]), np.concatenate([projected[0], projected[1]], -1),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(loaded.embed(trained["inputs"], modalities=("image_2",)), projected[1],
                               rtol=1e-5, atol=1e-5)
    with np.load(tmp_path / "export" / "params.npz") as saved:
        assert not any("logit_scale" in k for k in saved)      # the method's own parameters stay out


def test_cli_writes_params_config_manifest_and_embeddings(trained):
    out = trained["root"] / "cli_export"
    cmd = [sys.executable, "-m", "comm_jax.export", f"--workdir={trained['workdir']}", f"--output={out}",
           "--embeddings", "--split=test[:40]", "--config=configs/trifeatures.py:cpu",
           f"--config.data.data_dir={trained['data_dir']}"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["modalities"] == ["image_1", "image_2"] and manifest["width"] == 32
    assert manifest["inputs"]["image_1"] == {"shape": [None, 32, 32, 3], "dtype": "float32"}
    assert manifest["step"] == STEP and manifest["comm_jax_version"]
    assert json.loads((out / "model_config.json").read_text())["width"] == 32
    for name in manifest["files"]:
        assert (out / name).exists(), name
    embeddings = np.load(out / "embeddings_test_40.npz")
    assert embeddings["z"].shape == (40, 32) and embeddings["z_image_1"].shape == (40, 32)
    loaded = load(str(out))
    np.testing.assert_allclose(embeddings["z"][:16], np.asarray(loaded.embed(trained["inputs"])), rtol=1e-5, atol=1e-5)
    truth = next(iter(make_eval_iterator(trained["cfg"].data, "test[:40]", batch_size=40, labels=("shape",))))
    np.testing.assert_array_equal(embeddings["label_shape"], truth["labels"]["shape"])


def test_loading_imports_neither_training_code_nor_pipeline_nor_tensorflow(exported):
    script = (f"import sys, numpy as np\nfrom comm_jax.export import load\nm = load({exported!r})\n"
              "z = m.embed({'image_1': np.zeros((2, 32, 32, 3), np.float32)}, modalities=('image_1',))\n"
              "assert z.shape == (2, 32)\n"
              "print([n for n in ('comm_jax.train', 'input_pipeline', 'tensorflow', 'orbax.checkpoint') "
              "if n in sys.modules])")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def _broken_copy(exported: str, tmp_path: Path) -> Path:
    copy = tmp_path / "export"
    shutil.copytree(exported, copy)
    return copy


def test_loading_fails_clearly_on_missing_or_mismatched_files(exported, tmp_path):
    no_manifest = _broken_copy(exported, tmp_path / "a")
    os.remove(no_manifest / "manifest.json")
    with pytest.raises(ExportError, match="manifest.*missing"):
        load(str(no_manifest))

    no_params = _broken_copy(exported, tmp_path / "b")
    os.remove(no_params / "params.npz")
    with pytest.raises(ExportError, match="params.npz is missing"):
        load(str(no_params))

    wider = _broken_copy(exported, tmp_path / "c")
    config = json.loads((wider / "model_config.json").read_text())
    config["width"] = 64
    (wider / "model_config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match="params.npz does not match the model config.*wrong shapes"):
        load(str(wider))

    dropped = _broken_copy(exported, tmp_path / "d")
    with np.load(dropped / "params.npz") as arrays:
        kept = {k: v for k, v in arrays.items() if k != "fusion/cls"}
    np.savez(dropped / "params.npz", **kept)
    with pytest.raises(ExportError, match=r"missing \['fusion/cls'\]"):
        load(str(dropped))

    truncated = _broken_copy(exported, tmp_path / "e")
    (truncated / "batch_stats.npz").write_bytes(b"truncated")
    with pytest.raises(ExportError, match="batch_stats.npz is not a readable .npz"):
        load(str(truncated))

    with pytest.raises(ExportError, match="no export directory"):
        load(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="'image_2' has per-example shape"):
        load(exported).embed({"image_1": np.zeros((2, 32, 32, 3)), "image_2": np.zeros((2, 16, 16, 3))})
