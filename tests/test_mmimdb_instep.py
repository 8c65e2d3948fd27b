"""MM-IMDb with the CLIP towers frozen inside the train step (`configs/mmimdb.py:clip=WEIGHTS`), on a tiny random
Hugging Face CLIPModel: the token inputs the fusion model receives equal those the features path reads from
the extracted shards (to float16 rounding), and builder -> train 3 steps -> evaluate runs with the tower
weights unchanged by training and absent from the optimizer state."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest
from flax import nnx

os.environ.setdefault("USE_TF", "0")
pytest.importorskip("torch")
pytest.importorskip("transformers")

import mmimdb_fakes as fakes  # noqa: E402
from comm_jax import evaluate as evaluate_mod  # noqa: E402
from comm_jax import extract_features, methods  # noqa: E402
from comm_jax import train as train_mod  # noqa: E402
from comm_jax.checkpoints import CheckpointStore  # noqa: E402
from comm_jax.mesh import make_mesh  # noqa: E402
from comm_jax.models import build_model  # noqa: E402
from comm_jax.models.clip_encoders import FrozenParam, cached_clip  # noqa: E402
from comm_jax.train_state import abstract_train_state, frozen_mask  # noqa: E402
from configs import mmimdb as mmimdb_config  # noqa: E402
from input_pipeline.pipeline import make_eval_iterator  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The tiny CLIP weights, the fake release's files, its TFDS dataset and the features extracted from it."""
    root = tmp_path_factory.mktemp("instep")
    weights, manual, tfds_dir = str(root / "clip"), str(root / "manual"), str(root / "tfds")
    fakes.write_tiny_clip(weights)
    fakes.write_original(manual)
    output = str(root / "features")
    extract_features.extract(cached_clip(weights), output=output, manual_dir=manual, data_dir=tfds_dir,
                             splits=("train", "test"), batch_size=8, examples_per_shard=16)
    return {"weights": weights, "manual": manual, "tfds": tfds_dir, "features": output, "root": root}


def in_step_config(files, extra: str = ""):
    cfg = mmimdb_config.get_config(f"clip={files['weights']},cpu{extra}")
    cfg.data.manual_dir, cfg.data.data_dir = files["manual"], files["tfds"]
    return cfg


def eval_batch(cfg, steps=None) -> dict:
    iterator = make_eval_iterator(cfg.data, "test", batch_size=fakes.COUNTS["test"], labels=("imdb_id",),
                                  steps=steps)
    batch = next(iter(iterator))
    order = np.argsort(batch["labels"]["imdb_id"])
    return jax.tree.map(lambda x: x[order], batch)


def test_in_step_tokens_equal_the_extracted_features(files):
    cfg = in_step_config(files)
    assert cfg.data.name == "mmimdb/original" and cfg.model.encoders.text.input_shape == (fakes.TINY_CLIP_CONTEXT,)
    assert cfg.model.encoders.image.input_shape == (fakes.TINY_CLIP_IMAGE, fakes.TINY_CLIP_IMAGE, 3)
    features_cfg = mmimdb_config.get_config(f"features={files['features']},cpu")
    steps = {m: features_cfg.model.encoders[m].input_shape[0] for m in ("image", "text")}
    stored, raw = eval_batch(features_cfg, steps), eval_batch(cfg)
    np.testing.assert_array_equal(stored["labels"]["imdb_id"], raw["labels"]["imdb_id"])
    assert raw["inputs"]["text"].dtype == np.int32 and "valid" not in raw

    model = build_model(cfg.model)
    image = np.asarray(model.encoders["image"].encoder(raw["inputs"]["image"]))
    text, valid = model.encoders["text"].encoder(raw["inputs"]["text"])
    np.testing.assert_array_equal(np.asarray(valid), stored["valid"]["text"])
    assert stored["valid"]["text"].sum(1).min() > 2                      # plots longer than start + end
    for ours, theirs in ((image, stored["inputs"]["image"]), (np.asarray(text), stored["inputs"]["text"])):
        assert ours.shape == theirs.shape
        # the shards hold float16: within one float16 ulp, plus float32 round-off where that ulp is tiny (near 0)
        tolerance = np.spacing(np.abs(theirs).astype(np.float16)).astype(np.float32) + 1e-6
        assert np.all(np.abs(ours - theirs) <= tolerance), np.max(np.abs(ours - theirs) / tolerance)
    # the features path's padding is zero; so is the in-step path's after the end-of-text token
    assert not np.asarray(text)[~np.asarray(valid)].any()


def test_in_step_training_keeps_the_towers_frozen_and_evaluates(files):
    cfg = in_step_config(files)
    cfg.num_steps, cfg.batch_size, cfg.ckpt_every, cfg.log_every, cfg.optimizer.warmup_steps = 3, 8, 3, 1, 1
    cfg.evals.batch_size = 8
    cfg.evals.evaluators.probe.Cs = (1.0,)
    workdir = str(files["root"] / "run")
    last = train_mod.train(cfg, workdir)
    assert last["step"] == 3 and np.isfinite(last["loss"])
    final = evaluate_mod.evaluate(cfg, workdir, timeout=60)[-1]
    assert final["step"] == 3 and 0.0 <= final["probe/genres/f1_weighted"] <= 1.0

    mesh = make_mesh(cfg.mesh)
    _, abstract, _, _, _ = abstract_train_state(cfg, mesh, methods.build(cfg))
    store = CheckpointStore(workdir, read_only=True)
    try:
        state, _ = store.restore(3, abstract)
    finally:
        store.close()
    initial = build_model(cfg.model)
    frozen = jax.tree.leaves(frozen_mask(state.params))
    trained, loaded = jax.tree.leaves(state.params), jax.tree.leaves({"model": nnx.state(initial, nnx.Param)})
    assert sum(frozen) == len(jax.tree.leaves(nnx.state(initial, FrozenParam))) > 0
    changed = [not np.array_equal(a, b) for a, b in zip(trained, loaded)]
    assert not any(c for c, f in zip(changed, frozen) if f)            # the towers as loaded
    assert any(c for c, f in zip(changed, frozen) if not f)            # the fusion model trained
    trainable_sizes = sorted(np.size(x) for x, f in zip(trained, frozen) if not f)
    moment_sizes = sorted(np.size(x) for x in jax.tree.leaves(state.opt_state) if np.ndim(x) > 0)
    assert moment_sizes == sorted(trainable_sizes * 2)                 # Adam's mu and nu of the trained ones only
