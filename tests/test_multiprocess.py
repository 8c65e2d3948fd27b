"""Two local processes (coordinator on 127.0.0.1), each with 2 fake CPU devices, train the CPU-sized
config: losses and final parameters match one process with 4 fake devices on the same global batch.
Each process reads its own half of the data; the global batch holds the same examples. Evaluation
launched the same way reports the metrics of one process with 4 devices, written once. A two-process job
takes the workdir's trainer lease once, as process 0, and both processes stop when another trainer holds it."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from comm_jax import lease, methods
from comm_jax.checkpoints import CheckpointStore, mark_complete
from comm_jax.mesh import make_mesh
from comm_jax.train_state import create_train_state
from configs import trifeatures
from tests.xla_env import env_with_devices

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


@pytest.mark.parametrize("on_device", [False, True], ids=["tfdata_views", "device_views"])
def test_two_processes_match_one_process(tmp_path, tfds_dir, on_device):
    single, multi = str(tmp_path / "single"), str(tmp_path / "multi")
    augment = f"--config.data.augment_on_device={on_device}"
    reference = subprocess.run(command(single, tfds_dir, augment), cwd=ROOT, env=env_with_devices(4),
                               capture_output=True, text=True, timeout=600)
    assert reference.returncode == 0, reference.stderr[-3000:]

    logs = tmp_path / "logs"
    procs = _start_two(multi, tfds_dir, logs, augment, devices=2)
    holders = set()          # the trainer lease's pid, polled while the job runs
    deadline = time.time() + 600
    while any(p.poll() is None for p in procs) and time.time() < deadline:
        record = lease.read_record(lease.lease_path(multi))
        if record is not None:
            holders.add(record["pid"])
        time.sleep(0.05)
    errors = _wait(procs, logs)
    for p, err in zip(procs, errors):
        assert p.returncode == 0, err[-3000:]
    outputs = [(logs / f"{i}.out").read_text() for i in range(2)]
    assert "on 4 device(s)" in outputs[0]
    assert "step 1/" in outputs[0] and "step 1/" not in outputs[1]         # only process 0 reports
    assert holders == {procs[0].pid}       # the lease taken once, by process 0, for the whole run
    assert not os.path.exists(lease.lease_path(multi))      # and released at the end

    if on_device:
        # Each example's key travels with it, so both topologies draw the same views, equal up to float
        # rounding (1e-6: test_device_augment); Adam turns that into small differences after step 1. A
        # misplaced key or image changes the first loss by percents.
        assert losses(multi)[0] == pytest.approx(losses(single)[0], rel=1e-5)
        assert losses(multi) == pytest.approx(losses(single), rel=1e-3)
        return
    assert losses(multi) == pytest.approx(losses(single), rel=1e-5)
    p_single, p_multi = final_params(single), final_params(multi)
    assert p_single.keys() == p_multi.keys()
    for name, value in p_single.items():
        if any(tag in name for tag in NOISE_ONLY):
            continue
        err = np.linalg.norm(p_multi[name] - value)
        assert err <= 5e-4 * max(np.linalg.norm(value), 1e-12), name


# ---------------------------------------------------------------- the evaluation process

EVAL_STEPS = (2, 4)


@pytest.fixture(scope="module")
def tiny_workdir(tmp_path_factory, tfds_dir):
    """Checkpoints of a tiny model at steps 2 and 4 (other initial weights each), written by the
    training's checkpoint store, and the completion marker: what evaluation reads of a trained run."""
    cfg = trifeatures.get_config("cpu")
    cfg.model.update(dict(width=32, heads=2, head_hidden=32, head_out=16))
    for m in cfg.model.modalities:
        cfg.model.encoders[m].encoder_args.channels = (8, 16, 16)
    cfg.num_steps, cfg.data.data_dir = EVAL_STEPS[-1], tfds_dir
    workdir = str(tmp_path_factory.mktemp("tiny") / "run")
    store = CheckpointStore(workdir, keep=None, async_save=False)
    for step in EVAL_STEPS:
        cfg.seed = step
        _, state, *_ = create_train_state(cfg, make_mesh(cfg.mesh), methods.build(cfg))
        store.save(step, state, {"position": step, "seed": step}, cfg.to_json(), force=True)
    store.close()
    mark_complete(workdir, EVAL_STEPS[-1])
    return workdir


def eval_command(workdir, data_dir, *extra):
    """Evaluation of 80 training examples (the first 80 of 96 read: an early stop) and 40 test
    examples (padded), 32 per global batch."""
    return [sys.executable, "-m", "comm_jax.evaluate", "--config=configs/trifeatures.py:cpu", f"--workdir={workdir}",
            f"--config.data.data_dir={data_dir}", "--config.evals.batch_size=32",
            "--config.evals.train_split=train[:96]", "--config.evals.train_examples=80",
            "--config.evals.test_split=test[:40]", "--config.evals.poll_seconds=0.1", "--noidle", *extra]


def eval_rows(workdir):
    with open(os.path.join(workdir, "metrics", "eval.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_evaluation_as_two_processes_matches_one_process(tmp_path, tiny_workdir, tfds_dir):
    single, multi = str(tmp_path / "single"), str(tmp_path / "multi")
    for workdir in (single, multi):
        shutil.copytree(tiny_workdir, workdir)
    address = f"127.0.0.1:{free_port()}"
    launches = [(eval_command(single, tfds_dir), 4)] + [
        (eval_command(multi, tfds_dir, f"--coordinator_address={address}", "--num_processes=2", f"--process_id={i}"), 2)
        for i in range(2)]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env_with_devices(devices), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for cmd, devices in launches]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]

    reference, rows = eval_rows(single), eval_rows(multi)
    assert [r["step"] for r in rows] == [r["step"] for r in reference] == list(EVAL_STEPS)   # one row per step
    for expected, got in zip(reference, rows):
        assert got.keys() == expected.keys() and "probe/R" in got and "knn/R" in got
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, abs=1e-6), (expected["step"], key)
    primary, other = outputs[1][0], outputs[2][0]
    assert all(f"step {s}:" in primary for s in EVAL_STEPS)
    assert not [line for line in other.splitlines() if line.startswith("step")]   # only process 0 prints


@pytest.mark.parametrize("program", ["train", "evaluate"])
def test_incomplete_multiprocess_flags_are_refused(tmp_path, program):
    build = command if program == "train" else eval_command
    proc = subprocess.run(build(str(tmp_path), "unused", "--num_processes=2"), cwd=ROOT,
                          env=env_with_devices(1), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "missing ['coordinator_address', 'process_id']" in proc.stderr


# ---------------------------------------------------------------- the trainer lease of a two-process job

def _start_two(workdir, data_dir, logs, *extra, devices=1):
    """Two processes of one job, `devices` fake CPU devices each; their stdout and stderr go to files in
    `logs` (a pipe left unread could fill)."""
    address = f"127.0.0.1:{free_port()}"
    logs.mkdir(exist_ok=True)
    return [subprocess.Popen(command(workdir, data_dir, f"--coordinator_address={address}", "--num_processes=2",
                                     f"--process_id={i}", *extra),
                             cwd=ROOT, env=env_with_devices(devices), stdout=open(logs / f"{i}.out", "w"),
                             stderr=open(logs / f"{i}.err", "w")) for i in range(2)]


def _wait(procs, logs):
    for p in procs:
        p.wait(timeout=600)
    return [(logs / f"{i}.err").read_text() for i in range(len(procs))]


def test_two_process_job_is_refused_by_a_held_lease(tmp_path, tfds_dir):
    # A two-process job holds the lease once, as process 0: test_two_processes_match_one_process.
    workdir = str(tmp_path / "w")
    held = lease.acquire(workdir, interval=0.5)
    try:
        procs = _start_two(workdir, tfds_dir, tmp_path / "refused")
        errors = _wait(procs, tmp_path / "refused")
    finally:
        held.stop()
    for p, err in zip(procs, errors):      # both processes stop, each naming the holder
        assert p.returncode != 0, err[-2000:]
        assert f"is in use by another trainer (pid {os.getpid()}" in err, err[-2000:]
    assert os.listdir(workdir) == []       # nothing written; the holder's lease file removed by its stop()
