"""The ahead-of-time check compiles for any fake device count, reports memory and FLOPs from the
executable, and fails early with a clear message when the step would not fit."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def aot(*args):
    cmd = [sys.executable, "-m", "comm_jax.aot_check", "--config=configs/trifeatures.py:cpu",
           "--config.model.width=32", "--config.model.head_hidden=32", "--config.model.head_out=16", *args]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_compiles_for_twelve_fake_devices_and_reports_memory_and_flops():
    proc = aot("--devices=12", "--config.batch_size=48")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = dict(line.strip().split(": ", 1) for line in proc.stdout.splitlines() if ": " in line)
    assert report["devices"] == "12" and report["per_device_batch"] == "4"
    assert float(report["peak_gib"]) > 0 and float(report["gflop_per_device_step"]) > 0


def test_refuses_a_step_that_does_not_fit_and_a_batch_that_does_not_divide():
    proc = aot("--devices=2", "--config.batch_size=16", "--device_memory_gb=0.000001")
    assert proc.returncode != 0 and "GiB per device" in proc.stderr
    proc = aot("--devices=3", "--config.batch_size=16")
    assert proc.returncode != 0 and "not divisible by the 3 devices" in proc.stderr
