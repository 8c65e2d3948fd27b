"""The `synthetic_info` builder: ground-truth PIDs of its labels, the generator's latent structure as
stored, deterministic generation, and its config training every method through the one step; the
`resample_latent` op removes exactly the block it names."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from sklearn.linear_model import LogisticRegression

import input_pipeline  # noqa: F401  (registers the builder and the controlled ops)
from comm_jax.information import broja
from comm_jax.mesh import make_mesh, put_batch
from comm_jax.train_step import build_train_step
from configs import synthetic_info as synthetic_info_config
from input_pipeline import augment, synthetic_info
from input_pipeline.pipeline import make_train_iterator

EXPECTED_PID = {  # bits of (X1, X2; label), from the definitions of the tasks
    "redundant": dict(R=1, U1=0, U2=0, S=0), "unique1": dict(R=0, U1=1, U2=0, S=0),
    "unique2": dict(R=0, U1=0, U2=1, S=0), "synergy": dict(R=0, U1=0, U2=0, S=1),
    "redundant_unique1": dict(R=1, U1=1, U2=0, S=0), "unique1_synergy": dict(R=0, U1=1, U2=0, S=1),
    "redundant_synergy": dict(R=1, U1=0, U2=0, S=1), "redundant_unique1_synergy": dict(R=1, U1=1, U2=0, S=1),
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("tfds"))
    tfds.builder("synthetic_info/redundant_unique1_synergy", data_dir=directory).download_and_prepare()
    return directory


def _load(data_dir, name, split):
    builder = tfds.builder(f"synthetic_info/{name}", data_dir=data_dir)
    return builder, tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))


@pytest.mark.parametrize("name", sorted(EXPECTED_PID))
def test_ground_truth_pid_of_each_mix(name):
    parts = synthetic_info.ground_truth_pid(synthetic_info.LABELS[name])
    assert parts == pytest.approx(EXPECTED_PID[name], abs=1e-5)


def test_metadata_holds_the_pids_and_the_stored_data_follow_the_generator(data_dir):
    builder, test = _load(data_dir, "redundant_unique1_synergy", "test")
    pid = builder.info.metadata["pid"]
    assert pid["label"] == pytest.approx(EXPECTED_PID["redundant_unique1_synergy"], abs=1e-5)
    assert pid["synergy"] == pytest.approx(EXPECTED_PID["synergy"], abs=1e-5)
    t1, t2 = synthetic_info.mixing_matrices()
    x1 = np.concatenate([test["latent_shared"], test["latent_unique_1"]], 1) @ t1
    x2 = np.concatenate([test["latent_shared"], test["latent_unique_2"]], 1) @ t2
    np.testing.assert_allclose(test["x1"], x1, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(test["x2"], x2, rtol=1e-4, atol=1e-3)
    half = synthetic_info.UNIQUE_DIM // 2
    np.testing.assert_array_equal(test["redundant"], test["latent_shared"].mean(1) > 0)
    np.testing.assert_array_equal(test["unique1"], test["latent_unique_1"][:, :half].mean(1) > 0)
    np.testing.assert_array_equal(test["synergy"], (test["latent_unique_1"][:, half:].mean(1) > 0)
                                  ^ (test["latent_unique_2"][:, half:].mean(1) > 0))
    np.testing.assert_array_equal(test["label"], 4 * test["redundant"] + 2 * test["unique1"] + test["synergy"])
    # the empirical joint of the generating bits has (nearly) the stated PID
    bits = synthetic_info.concepts({k: test[f"latent_{k}"] for k in ("shared", "unique_1", "unique_2")})
    code1 = 4 * bits["b_s"] + 2 * bits["b_1a"] + bits["b_1b"]
    code2 = 4 * bits["b_s"] + 2 * bits["b_2a"] + bits["b_2b"]
    joint = np.zeros((8, 8, 8))
    np.add.at(joint, (code1, code2, test["label"]), 1 / len(code1))
    assert broja(joint) == pytest.approx(EXPECTED_PID["redundant_unique1_synergy"], abs=0.02)


def test_generation_is_deterministic_and_configs_share_their_latents():
    a = synthetic_info.generate_split("train", ("redundant",), 0.0, size=50)
    b = synthetic_info.generate_split("train", ("synergy",), 0.0, size=50)
    np.testing.assert_array_equal(a["x1"], b["x1"])
    np.testing.assert_array_equal(a["synergy"], b["label"])
    again = synthetic_info.generate_split("train", ("redundant",), 0.0, size=50)
    np.testing.assert_array_equal(a["x2"], again["x2"])


def _probe_accuracy(x_train, y_train, x_test, y_test) -> float:
    model = LogisticRegression(max_iter=2000).fit(x_train, y_train)
    return float((model.predict(x_test) == y_test).mean())


def _augmented(x, spec, first_seed):
    op = augment.parse(spec)
    return np.stack([op(tf.constant(row), tf.constant([first_seed, i], tf.int64)).numpy() for i, row in enumerate(x)])


@pytest.mark.parametrize("noise", [0.0, 1.0])
def test_resample_latent_removes_the_block_it_names_and_keeps_the_other(noise):
    """Probe accuracy from x1 of its unique label falls to chance once its unique block is resampled,
    while the redundant label stays decodable; strength 0 is the identity."""
    data = synthetic_info.generate_split("train", ("redundant",), noise, size=1200)
    x1 = data["x1"]
    unique = _augmented(x1, "resample_latent(block='unique', modality=1, strength=1.0)", 1)
    shared = _augmented(x1, "resample_latent(block='shared', modality=1, strength=1.0)", 2)
    np.testing.assert_allclose(_augmented(x1[:20], "resample_latent(strength=0.0)", 3), x1[:20], atol=1e-3)
    fit, held = slice(0, 800), slice(800, None)
    for x, label, lo, hi in ((x1, "unique1", 0.8, 1), (unique, "unique1", 0.4, 0.6), (unique, "redundant", 0.8, 1),
                             (shared, "redundant", 0.4, 0.6), (shared, "unique1", 0.8, 1)):
        accuracy = _probe_accuracy(x[fit], data[label][fit], x[held], data[label][held])
        assert lo <= accuracy <= hi, (label, accuracy)
    # the resampled block keeps its law: same variance of the recovered latents
    recover = np.linalg.pinv(synthetic_info.mixing_matrices()[0])
    if noise == 0.0:
        latents = unique @ recover
        np.testing.assert_allclose(latents[:, :10], data["latent_shared"], atol=1e-3)
        assert np.var(latents[:, 10:]) == pytest.approx(synthetic_info.LATENT_VARIANCE, rel=0.1)


@pytest.mark.parametrize("loss", ["comm", "cross", "cross_self", "factorcl"])
def test_config_trains_each_method_on_the_builder(data_dir, loss):
    cfg = synthetic_info_config.get_config(f"cpu,loss={loss},remove=unique")
    cfg.data.data_dir = data_dir
    cfg.data.name = "synthetic_info/redundant_unique1_synergy"
    cfg.batch_size = 16
    mesh = make_mesh([("data", 2)], devices=__import__("jax").devices()[:2])
    built = build_train_step(cfg, mesh)
    iterator = make_train_iterator(cfg.data, built.spec, batch_size=16, seed=0)
    batch = next(iterator)
    iterator.close()
    assert batch["views"][built.method.views[0]]["x1"].shape == (16, 100)
    state, metrics = built.step(built.state, put_batch(batch, mesh))
    assert np.isfinite(float(metrics["loss"]))
