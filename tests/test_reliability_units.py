"""The pieces behind the reliability rules, in process: the trainer lease (refusal, stale takeover by dead
pid or old heartbeat), the retention plan beside a watcher, divergence bookkeeping, error lines, finite
config values and a torn metrics line."""

import errno
import json
import os
import subprocess
import sys
import time

import pytest

from comm_jax import cli_errors, lease
from comm_jax.config_schema import require_finite_numbers
from comm_jax.divergence import halt, proven_bad
from comm_jax.metrics_log import MetricsWriter
from comm_jax.retention import plan_deletions
from configs import trifeatures


def _write_lease(workdir, **fields):
    record = {"host": "another-host", "pid": 1, "started": time.time(), "heartbeat": time.time(), "token": "x"}
    record.update(fields)
    with open(lease.lease_path(workdir), "w") as f:
        json.dump(record, f)


def test_a_live_lease_refuses_a_second_trainer_naming_the_holder(tmp_path):
    held = lease.acquire(str(tmp_path), interval=0.2)
    try:
        with pytest.raises(lease.LeaseHeld, match=f"pid {os.getpid()}"):
            lease.acquire(str(tmp_path))
        time.sleep(0.5)                                   # the heartbeat moves on
        assert lease.read_record(lease.lease_path(str(tmp_path)))["heartbeat"] > held.started
    finally:
        held.stop()
    assert not os.path.exists(lease.lease_path(str(tmp_path)))     # released on stop
    lease.acquire(str(tmp_path)).stop()


def test_a_stale_lease_is_taken_over_with_a_warning(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket
    _write_lease(str(tmp_path), host=socket.gethostname(), pid=dead.pid)       # dead pid on this host
    lease.acquire(str(tmp_path)).stop()
    _write_lease(str(tmp_path), heartbeat=time.time() - lease.STALE_SECONDS - 1)  # silent on another host
    lease.acquire(str(tmp_path)).stop()
    assert capsys.readouterr().err.count("taking over the stale trainer lease") == 2
    _write_lease(str(tmp_path))                                                  # fresh on another host
    with pytest.raises(lease.LeaseHeld, match="another-host"):
        lease.acquire(str(tmp_path))


def test_retention_spares_unevaluated_steps_up_to_the_bound():
    steps = [2, 4, 6, 8, 10]
    assert plan_deletions(steps, keep=1, keep_every=None, done=None, keep_unevaluated=2) == ([2, 4, 6, 8], [])
    assert plan_deletions(steps, keep=1, keep_every=None, done={2}, keep_unevaluated=2) == ([2, 8], [8])
    assert plan_deletions(steps, keep=1, keep_every=4, done=set(), keep_unevaluated=0) == ([2, 6], [2, 6])
    assert plan_deletions(steps, keep=None, keep_every=None, done=set(), keep_unevaluated=0) == ([], [])


def test_a_non_finite_loss_rules_out_the_checkpoint_that_computed_it(tmp_path):
    assert proven_bad([4, 8, 9, 10], 10) == [9, 10]
    for step in (4, 8, 9):
        os.makedirs(tmp_path / "checkpoints" / str(step))
    error = halt(str(tmp_path), [4, 8, 9], 10, "non-finite loss nan at step 10")
    assert "resumes from step 8" in str(error) and "[9]" in str(error)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4", "8"]
    assert os.listdir(tmp_path / "diverged") == ["9"]
    assert "starts again from step 0" in str(halt(str(tmp_path), [4, 8], 5, "x"))


def test_error_lines_name_the_cause():
    full = OSError(errno.ENOSPC, "No space left on device", "/w/checkpoints/4/state")
    line, code = cli_errors.describe(full)
    assert line.startswith("cannot write /w/checkpoints/4/state: No space left on device") and code == 1
    line, code = cli_errors.describe(KeyError("x"))
    assert "--verbose" in line and code == 1
    assert cli_errors.describe(cli_errors.UsageError("bad key"))[1] == cli_errors.USAGE_ERROR


def test_non_finite_config_numbers_are_refused_naming_the_key():
    cfg = trifeatures.get_config("cpu")
    require_finite_numbers(cfg)
    cfg.loss.temperature = float("inf")
    with pytest.raises(ValueError, match="config.loss.temperature must be a finite number"):
        require_finite_numbers(cfg)


def test_a_torn_last_metrics_line_is_dropped_on_resume(tmp_path, capsys):
    path = tmp_path / "metrics" / "train.jsonl"
    path.parent.mkdir()
    path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.9}\n{"step": 3, "lo')
    writer = MetricsWriter(str(tmp_path), "train", keep_until_step=2, tensorboard=False)
    writer.write(3, {"loss": 0.8})
    writer.close()
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]
    assert "train.jsonl:3 is not valid JSON" in capsys.readouterr().err


def _traceback(thread: int) -> list[bytes]:
    return [b"Traceback (most recent call last):\n",
            f'  File "/lib/asyncio/base_events.py", line 806, in call_soon_threadsafe (writer {thread})\n'.encode(),
            b"    self._check_closed()\n", b"RuntimeError: Event loop is closed\n"]


@pytest.mark.parametrize("interleave", ["one_after_another", "line_by_line", "tail_first"])
def test_stderr_filter_drops_the_failed_save_tracebacks_however_they_interleave(interleave):
    """Every line of the checkpoint writer's tracebacks is dropped, in whatever order its threads' lines
    arrive, while the program's error line, ordinary lines and an unrelated traceback pass."""
    other = [b"Traceback (most recent call last):\n", b'  File "x.py", line 1, in f\n', b"ValueError: bad\n"]
    blocks = [_traceback(i) for i in range(3)]
    if interleave == "one_after_another":
        noise = [line for block in blocks for line in block]
    elif interleave == "line_by_line":
        noise = [block[i] for i in range(4) for block in blocks]
    else:   # a thread's tail arrives before any traceback header
        noise = blocks[0][1:] + [line for block in blocks[1:] for line in block] + blocks[0][:1]
    lines = [b"step 1/30 | loss 4.8\n", *other, *noise, b"    Traceback (most recent call last):\n",
             b"warning: checkpoint(s) [8] cannot be read\n",
             b"error: cannot write /w/checkpoints: no space left on device; it resumes from step 2\n"]
    out = b"".join(cli_errors._StderrFilter.passed(lines)).decode()
    assert out == ("step 1/30 | loss 4.8\n" + b"".join(other).decode() + "warning: checkpoint(s) [8] cannot be read\n"
                   + "error: cannot write /w/checkpoints: no space left on device; it resumes from step 2\n")
