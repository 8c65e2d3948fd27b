"""The SLURM launcher hands every task the coordinator (first node), the process count and its own
id, and passes config overrides through; checked with stub `scontrol`, `srun` and `python`."""

import os
import stat
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def stub(directory, name, body):
    path = directory / name
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_slurm_train_script_builds_each_process_command(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub(bin_dir, "scontrol", 'printf "node-a\\nnode-b\\n"\n')
    # srun: run the task command once per task with SLURM_PROCID set, as SLURM would.
    stub(bin_dir, "srun", 'shift\nfor i in 0 1; do SLURM_PROCID=$i SLURM_NTASKS=2 "$@"; done\n')
    stub(bin_dir, "python", f'echo "$@" >> {tmp_path}/calls.txt\n')
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_NODELIST="node-[a-b]")
    proc = subprocess.run(["bash", "launch/slurm_train.sbatch", "configs/trifeatures.py", "/shared/run1",
                           "--config.batch_size=512"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert len(calls) == 2
    for i, call in enumerate(calls):
        assert call.startswith("-m comm_jax.train --config=configs/trifeatures.py --workdir=/shared/run1")
        assert f"--coordinator_address=node-a:12355 --num_processes=2 --process_id={i}" in call
        assert call.endswith("--config.batch_size=512")
