"""The MM-IMDb table driver on tiny files in the original format, features from the test double of the CLIP
towers: it probes the frozen embeddings (CLIP V+L), trains and evaluates CoMM, prints our numbers beside the
paper's, and reads finished runs instead of training them again."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "launch"))

import mmimdb_table  # noqa: E402
from comm_jax import extract_features  # noqa: E402
from tests import mmimdb_fakes as fakes  # noqa: E402
from tests.xla_env import xla_flags  # noqa: E402


def test_table_probes_frozen_features_trains_comm_and_reads_finished_runs(tmp_path, capsys, monkeypatch):
    # The driver's training and evaluation processes run on one CPU device (compiling for 8 fake ones
    # would take most of the test's time).
    monkeypatch.setenv("XLA_FLAGS", xla_flags(1))
    fakes.write_original(str(tmp_path / "manual"))
    features = str(tmp_path / "features")
    extract_features.extract(fakes.FakeClipTowers(), output=features, manual_dir=str(tmp_path / "manual"),
                             data_dir=str(tmp_path / "tfds"), splits=("train", "test"), batch_size=8,
                             examples_per_shard=16)
    argv = [f"--features={features}", f"--root={tmp_path / 'runs'}", "--variant=cpu", "--methods=comm",
            "--override", "num_steps=2", "--override", "batch_size=8", "--override", "evals.batch_size=8",
            "--override", "ckpt_every=2", "--override", "optimizer.warmup_steps=1"]
    table = mmimdb_table.main(argv)
    rows = {line.split("|")[1].strip(): line.split("|")[2:4] for line in table.splitlines()[2:]}
    for name, paper in (("CoMM", ("61.5", "54.6")), ("CLIP V+L", ("58.9", "50.9"))):
        ours = [cell.split("/")[0].strip() for cell in rows[name]]
        assert all(0.0 <= float(value) <= 100.0 for value in ours), table
        assert tuple(cell.split("/")[1].strip() for cell in rows[name]) == paper
    capsys.readouterr()
    assert mmimdb_table.main(argv) == table           # read back, not retrained
    assert "+ " not in capsys.readouterr().out
