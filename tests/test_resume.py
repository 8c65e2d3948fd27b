"""The training program end to end in subprocesses: a run stopped (cleanly or by SIGKILL between two
saves) and resumed logs the same losses as an uninterrupted run; a config that does not match the
checkpoint is refused naming the key; a non-finite loss stops training and keeps the last good
checkpoint (the one whose parameters computed it is moved to diverged/); metrics files are written."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.xla_env import env_with_devices

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_cmd(workdir, data_dir, *overrides):
    return [sys.executable, "-m", "comm_jax.train", "--config=configs/trifeatures.py:cpu",
            f"--workdir={workdir}", f"--config.data.data_dir={data_dir}", "--config.batch_size=16",
            "--config.model.width=32", "--config.model.head_hidden=32", "--config.model.head_out=16",
            "--config.num_steps=12", "--config.log_every=1", "--config.ckpt_every=4", *overrides]


# Two fake devices: the batch is still sharded, and compiling is faster than with eight.
ENV = env_with_devices(2)


def committed_steps(workdir):
    directory = os.path.join(workdir, "checkpoints")
    return sorted(int(s) for s in os.listdir(directory) if s.isdigit()) if os.path.isdir(directory) else []


def run(cmd, check=True):
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def losses(workdir):
    with open(os.path.join(workdir, "metrics", "train.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {r["step"]: r["loss"] for r in rows}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tfds_dir):
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    proc = run(train_cmd(workdir, tfds_dir))
    return workdir, proc


def test_metrics_files_and_progress_lines(uninterrupted):
    workdir, proc = uninterrupted
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics", "train.jsonl"))]
    assert [r["step"] for r in rows] == list(range(1, 13))
    for key in ("loss", "ssl_loss_0", "ssl_loss_2", "ssl_acc", "learning_rate", "examples_per_sec", "step_time"):
        assert key in rows[-1], key
    assert os.listdir(os.path.join(workdir, "metrics", "train"))   # TensorBoard events
    assert "step 12/12" in proc.stdout and "ETA" in proc.stdout and "compiled train step" in proc.stdout
    assert os.path.exists(os.path.join(workdir, "training_complete.json"))


def test_resumed_run_matches_uninterrupted(uninterrupted, tmp_path, tfds_dir):
    reference = losses(uninterrupted[0])
    workdir = str(tmp_path)
    run(train_cmd(workdir, tfds_dir, "--config.num_steps=6"))      # stops at 6, checkpoint at 4 and 6
    proc = run(train_cmd(workdir, tfds_dir))
    assert "resumed from checkpoint at step 6" in proc.stdout
    assert losses(workdir) == pytest.approx(reference, rel=1e-6)


def test_sigkill_between_saves_resumes_exactly(uninterrupted, tmp_path, tfds_dir):
    reference = losses(uninterrupted[0])
    workdir = str(tmp_path)
    metrics = os.path.join(workdir, "metrics", "train.jsonl")
    proc = subprocess.Popen(train_cmd(workdir, tfds_dir, "--config.num_steps=400"), cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:   # kill once a checkpoint is committed and training has moved past it
        saved = committed_steps(workdir)
        logged = [json.loads(l)["step"] for l in open(metrics) if l.strip()] if os.path.exists(metrics) else []
        if saved and logged and max(logged) >= saved[-1] + 2 and max(logged) % 4 != 0:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = committed_steps(workdir)
    assert saved and max(losses(workdir)) > saved[-1]   # logged steps past the last save are redone
    resumed = run(train_cmd(workdir, tfds_dir))
    assert f"resumed from checkpoint at step {saved[-1]}" in resumed.stdout
    assert losses(workdir) == pytest.approx(reference, rel=1e-6)


def test_mismatched_config_is_refused_naming_the_key(uninterrupted):
    workdir, _ = uninterrupted
    before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
    proc = run(train_cmd(workdir, "unused", "--config.model.heads=8", "--config.num_steps=20"), check=False)
    assert proc.returncode != 0
    assert "model.heads differs" in proc.stderr
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before


def test_resume_ignores_how_the_loss_is_computed(uninterrupted, tmp_path, tfds_dir):
    """`loss.column_chunk` (HOW_NOT_WHAT) is no difference: a checkpoint whose config predates the key
    resumes with the blockwise loss, and the losses agree with the whole-row run up to rounding."""
    reference = losses(uninterrupted[0])
    workdir = str(tmp_path / "run")
    shutil.copytree(uninterrupted[0], workdir)
    os.remove(os.path.join(workdir, "training_complete.json"))
    for step in committed_steps(workdir):
        if step > 4:
            shutil.rmtree(os.path.join(workdir, "checkpoints", str(step)))
    metadata = os.path.join(workdir, "checkpoints", "4", "config", "metadata")
    with open(metadata) as f:
        saved = json.load(f)
    del saved["loss"]["column_chunk"]
    with open(metadata, "w") as f:
        json.dump(saved, f)
    proc = run(train_cmd(workdir, tfds_dir, "--config.loss.column_chunk=8"))
    assert "resumed from checkpoint at step 4" in proc.stdout
    resumed = losses(workdir)
    assert [resumed[s] for s in range(5, 13)] == pytest.approx([reference[s] for s in range(5, 13)], rel=1e-4)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, tfds_dir):
    workdir = str(tmp_path)
    proc = run(train_cmd(workdir, tfds_dir, "--config.optimizer.lr=1e30", "--config.ckpt_every=1",
                         "--config.num_steps=6"), check=False)
    assert proc.returncode != 0
    assert "non-finite loss" in proc.stderr
    bad_step = int(proc.stderr.split("non-finite loss")[1].split("at step ")[1].split(";")[0])
    saved = [int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit()]
    assert not saved or max(saved) < bad_step - 1     # the parameters that computed the NaN are not resumed
    assert os.listdir(os.path.join(workdir, "diverged")) == [str(bad_step - 1)]
    assert not os.path.exists(os.path.join(workdir, "training_complete.json"))
