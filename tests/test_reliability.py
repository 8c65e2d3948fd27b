"""The programs under adversarial use, in subprocesses: a diverged run resumes to the same losses as one that
never diverged; a second trainer on a workdir is refused; checkpoints a live watcher has not evaluated are
kept (bounded) and the ones it never saw are reported; each bad input ends in one error line; the watcher
times out and refuses a missing workdir."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from comm_jax.lease import HeartbeatFile
from comm_jax.retention import watcher_path
from tests.xla_env import env_with_devices

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = env_with_devices(1)
STEPS = 8


def train_cmd(workdir, data_dir, *overrides):
    return [sys.executable, "-m", "comm_jax.train", "--config=configs/trifeatures.py:cpu", f"--workdir={workdir}",
            f"--config.data.data_dir={data_dir}", "--config.batch_size=16", "--config.model.width=32",
            "--config.model.head_hidden=32", "--config.model.head_out=16", f"--config.num_steps={STEPS}",
            "--config.log_every=1", "--config.ckpt_every=2", "--config.keep_ckpts=1", *overrides]


def eval_cmd(workdir, data_dir, *flags):
    return [sys.executable, "-m", "comm_jax.evaluate", "--config=configs/trifeatures.py:cpu",
            f"--workdir={workdir}", f"--config.data.data_dir={data_dir}", "--config.evals.batch_size=32",
            "--config.evals.train_split=train[:128]", "--config.evals.test_split=test[:64]",
            "--config.evals.poll_seconds=0.5", *flags]


def run(cmd, check=True, **kwargs):
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def losses(workdir):
    with open(os.path.join(workdir, "metrics", "train.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f)}


def steps_in(workdir, folder="checkpoints"):
    directory = os.path.join(workdir, folder)
    return sorted(int(s) for s in os.listdir(directory) if s.isdigit()) if os.path.isdir(directory) else []


def assert_one_error_line(proc, *fragments):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "finalizing GeneratorDataset" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-2000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tfds_dir):
    """8 steps, a checkpoint every 2, keep_ckpts=1, beside a live watcher that has evaluated nothing and
    may keep 2 unevaluated checkpoints: 2 and 4 are spared, 6 is deleted with a warning."""
    workdir = str(tmp_path_factory.mktemp("reference"))
    os.makedirs(os.path.join(workdir, "metrics"))
    watcher = HeartbeatFile(watcher_path(workdir), lambda: {"done": []}, interval=1.0)
    watcher.beat()
    watcher.start()
    try:
        proc = run(train_cmd(workdir, tfds_dir, "--keep_unevaluated=2"))
    finally:
        watcher.stop()
    return workdir, proc


def test_unevaluated_checkpoints_are_kept_up_to_the_bound_with_a_warning(reference):
    workdir, proc = reference
    assert steps_in(workdir) == [2, 4, 8]
    assert "deleting checkpoint(s) [6] before the evaluation watcher evaluated them" in proc.stderr


def test_watcher_reports_steps_it_never_saw(reference, tfds_dir):
    workdir = reference[0]
    proc = run(eval_cmd(workdir, tfds_dir, "--noidle"))
    assert "were deleted before the watcher could evaluate them" in proc.stderr
    assert "never evaluated (deleted before the watcher saw them): steps [6]" in proc.stdout
    assert not os.path.exists(watcher_path(workdir))          # its heartbeat is removed on exit
    assert steps_in(workdir) == [2, 4, 8]                     # evaluation wrote nothing into checkpoints/


def test_divergence_moves_bad_checkpoints_aside_and_resume_matches(reference, tmp_path, tfds_dir):
    workdir = str(tmp_path)
    run(train_cmd(workdir, tfds_dir, "--config.num_steps=4"))
    diverged = run(train_cmd(workdir, tfds_dir, "--config.optimizer.lr=1e6", "--config.ckpt_every=1"), check=False)
    line = assert_one_error_line(diverged, "non-finite loss", "the run resumes from step 4")
    bad_step = int(line.split("at step ")[1].split(";")[0])
    assert steps_in(workdir, "diverged") == list(range(5, bad_step))     # kept for inspection
    assert steps_in(workdir) and max(steps_in(workdir)) == 4
    resumed = run(train_cmd(workdir, tfds_dir))
    assert "resumed from checkpoint at step 4" in resumed.stdout
    assert losses(workdir) == pytest.approx(losses(reference[0]), rel=1e-6)


def test_unreadable_latest_checkpoint_and_torn_metrics_line_fall_back(reference, tmp_path, tfds_dir):
    workdir = str(tmp_path / "copy")
    shutil.copytree(reference[0], workdir)
    data_files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(workdir, "checkpoints", "8", "state"))
                  for f in fs if os.sep + "d" + os.sep in os.path.join(d, f)]
    assert data_files
    for path in data_files:                                   # truncate the array data of step 8
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    metrics = os.path.join(workdir, "metrics", "train.jsonl")
    with open(metrics) as f:
        text = f.read()
    with open(metrics, "w") as f:
        f.write(text[:-20])                                   # a torn last line
    proc = run(train_cmd(workdir, tfds_dir))
    assert "checkpoint(s) [8] cannot be read" in proc.stderr
    assert "resuming from the previous one, step 4" in proc.stderr
    assert "train.jsonl:8 is not valid JSON" in proc.stderr
    assert steps_in(workdir, "unreadable") == [8]
    assert losses(workdir) == pytest.approx(losses(reference[0]), rel=1e-6)


def test_second_trainer_is_refused_naming_the_holder(tmp_path, tfds_dir):
    workdir = str(tmp_path)
    first = subprocess.Popen(train_cmd(workdir, tfds_dir, "--config.num_steps=400"), cwd=ROOT, env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not os.path.exists(os.path.join(workdir, "trainer.lease")) and time.time() < deadline:
            time.sleep(0.1)
        second = run(train_cmd(workdir, tfds_dir, "--config.num_steps=400"), check=False)
        assert_one_error_line(second, "is in use by another trainer", f"pid {first.pid}")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()


def test_bad_inputs_end_in_one_line(tmp_path, tfds_dir):
    workdir = str(tmp_path / "w")
    cases = [
        (["--config.nonexistent=1"], ["unknown config key 'nonexistent'"]),
        (["--config.optimizer.lr=nan"], ["config.optimizer.lr must be a finite number"]),
    ]
    for extra, fragments in cases:
        assert_one_error_line(run(train_cmd(workdir, tfds_dir, *extra), check=False), *fragments)
    missing = train_cmd(workdir, tfds_dir)
    missing[3] = "--config=configs/nope.py:cpu"
    assert_one_error_line(run(missing, check=False), "config file 'configs/nope.py' does not exist")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert_one_error_line(run(train_cmd(str(blocker / "w"), tfds_dir), check=False), "cannot write", "a_file")
    verbose = run(train_cmd(workdir, tfds_dir, "--config.optimizer.lr=nan", "--verbose"), check=False)
    assert verbose.returncode != 0 and "Traceback" in verbose.stderr


def test_corrupted_tfds_shard_is_named_with_the_regenerate_command(tmp_path, tfds_dir):
    data_dir = str(tmp_path / "tfds")
    shutil.copytree(tfds_dir, data_dir)
    shard = next(os.path.join(d, f) for d, _, fs in os.walk(data_dir) for f in fs if "-train.tfrecord" in f)
    with open(shard, "r+b") as f:
        f.truncate(os.path.getsize(shard) // 2)
    proc = run(train_cmd(str(tmp_path / "w"), data_dir), check=False)
    assert_one_error_line(proc, os.path.basename(shard), "regenerate the dataset", "download_and_prepare")
    # TensorFlow is running by then: its start-up notices are not printed around the line either.
    assert [line for line in proc.stderr.splitlines() if line.strip()] == [
        line for line in proc.stderr.splitlines() if line.startswith("error: ")], proc.stderr


def test_full_disk_is_one_line_naming_the_resume_step(tmp_path, tfds_dir):
    small = tmp_path / "small"
    small.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3M", "tmpfs", str(small)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a 3 MB tmpfs as a full disk")
    try:
        proc = run(train_cmd(str(small / "w"), tfds_dir, "--config.num_steps=30"), check=False)
    finally:
        subprocess.run(["umount", str(small)], check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "cannot write" in errors[0] and "resumes from step 2" in errors[0], errors


def test_watcher_refuses_a_missing_workdir_and_times_out_without_a_trainer(tmp_path, tfds_dir):
    missing = str(tmp_path / "missing")
    # Normal scheduling: beside the other test worker's load an idle-priority watcher would wait for it.
    assert_one_error_line(run(eval_cmd(missing, tfds_dir, "--noidle"), check=False), "does not exist")
    assert not os.path.exists(missing)
    empty = str(tmp_path / "empty")
    os.makedirs(empty)
    start = time.time()
    proc = run(eval_cmd(empty, tfds_dir, "--noidle", "--timeout=2"), check=False)
    assert_one_error_line(proc, "no new checkpoint", "giving up")
    assert time.time() - start < 120


def thread_priorities(pid):
    """(nice, scheduling policy) of every thread of `pid`."""
    out = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            out.add((os.getpriority(os.PRIO_PROCESS, int(tid)), os.sched_getscheduler(int(tid))))
        except (ProcessLookupError, FileNotFoundError):
            continue
    return out


@pytest.mark.parametrize("flags,expected", [((), (10, "SCHED_IDLE")), (("--noidle", "--nice=7"), (7, "SCHED_OTHER"))],
                         ids=["idle_by_default", "nice_without_idle"])
def test_watcher_lowers_every_threads_priority(tmp_path, tfds_dir, flags, expected):
    empty = str(tmp_path / "empty")
    os.makedirs(empty)
    nice, policy = expected
    want = {(min(19, os.getpriority(os.PRIO_PROCESS, 0) + nice), getattr(os, policy))}
    watcher = subprocess.Popen(eval_cmd(empty, tfds_dir, *flags, "--timeout=30"), cwd=ROOT, env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, seen = time.time() + 60, None
        while time.time() < deadline and watcher.poll() is None:
            seen = thread_priorities(watcher.pid)
            if seen == want and len(os.listdir(f"/proc/{watcher.pid}/task")) > 4:   # threads started: all lowered
                break
            time.sleep(0.2)
        assert seen == want
    finally:
        watcher.kill()
        watcher.wait()


def test_watcher_refuses_a_negative_nice(tmp_path, tfds_dir):
    empty = str(tmp_path / "empty")
    os.makedirs(empty)
    assert_one_error_line(run(eval_cmd(empty, tfds_dir, "--nice=-1"), check=False), "--nice=-1")
