"""Two local processes (coordinator on 127.0.0.1), each with 2 fake CPU devices, train the CPU-sized
config: losses and final parameters match one process with 4 fake devices on the same global batch.
Each process reads its own half of the data; the global batch holds the same examples."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 4
# True gradient exactly zero (biases before BatchNorm, attention key bias): Adam turns their rounding
# noise into +-lr steps, so they are left out of the parameter comparison (see test_train_step.py).
NOISE_ONLY = ("['head']['fc1']['bias']", "['head']['fc2']['bias']", "['fusion']['norm']['bias']",
              "['qkv']['bias']")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(workdir, data_dir, *extra):
    return [sys.executable, "-m", "comm_jax.train", "--config=configs/trifeatures.py:cpu", f"--workdir={workdir}",
            f"--config.data.data_dir={data_dir}", "--config.batch_size=16", "--config.model.width=32",
            "--config.model.head_hidden=32", "--config.model.head_out=16", f"--config.num_steps={STEPS}",
            "--config.log_every=1", f"--config.ckpt_every={STEPS}", *extra]


def env_with_devices(n):
    return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")


def final_params(workdir):
    """The saved parameters, restored onto one local device whatever topology wrote them."""
    path = os.path.join(workdir, "checkpoints", str(STEPS), "state")
    checkpointer = ocp.StandardCheckpointer()
    metadata = checkpointer.metadata(path)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          getattr(metadata, "item_metadata", metadata))
    restored = checkpointer.restore(path, target)
    return {jax.tree_util.keystr(k): np.asarray(v)
            for k, v in jax.tree_util.tree_leaves_with_path(restored["params"])}


def losses(workdir):
    with open(os.path.join(workdir, "metrics", "train.jsonl")) as f:
        return [json.loads(line)["loss"] for line in f]


def test_two_processes_match_one_process(tmp_path, tfds_dir):
    single, multi = str(tmp_path / "single"), str(tmp_path / "multi")
    reference = subprocess.run(command(single, tfds_dir), cwd=ROOT, env=env_with_devices(4),
                               capture_output=True, text=True, timeout=600)
    assert reference.returncode == 0, reference.stderr[-3000:]

    address = f"127.0.0.1:{free_port()}"
    procs = [subprocess.Popen(command(multi, tfds_dir, f"--coordinator_address={address}", "--num_processes=2",
                                      f"--process_id={i}"),
                              cwd=ROOT, env=env_with_devices(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    assert "on 4 device(s)" in outputs[0][0]
    assert "step 1/" in outputs[0][0] and "step 1/" not in outputs[1][0]   # only process 0 reports

    assert losses(multi) == pytest.approx(losses(single), rel=1e-5)
    p_single, p_multi = final_params(single), final_params(multi)
    assert p_single.keys() == p_multi.keys()
    for name, value in p_single.items():
        if any(tag in name for tag in NOISE_ONLY):
            continue
        err = np.linalg.norm(p_multi[name] - value)
        assert err <= 5e-4 * max(np.linalg.norm(value), 1e-12), name


def test_incomplete_multiprocess_flags_are_refused(tmp_path):
    proc = subprocess.run(command(str(tmp_path), "unused", "--num_processes=2"), cwd=ROOT,
                          env=env_with_devices(1), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "missing ['coordinator_address', 'process_id']" in proc.stderr
