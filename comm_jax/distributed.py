"""Multi-process start-up: `jax.distributed.initialize()` when the job runs as several processes.

Sources, first match wins:
1. explicit `--coordinator_address`, `--num_processes`, `--process_id` flags (any launcher);
2. the environment variables `COMM_JAX_COORDINATOR`, `COMM_JAX_NUM_PROCESSES`, `COMM_JAX_PROCESS_ID`;
3. cluster auto-detection by JAX on TPU pods (`TPU_WORKER_HOSTNAMES` lists several workers) and
   SLURM (`SLURM_NTASKS` > 1), where `jax.distributed.initialize()` needs no arguments.
Otherwise the run is single-process and nothing is initialised.

Training and evaluation both start through `define_flags` + `initialize`. Once initialised, programs
that must take the same decisions on every process (the evaluation watcher) let process 0 decide and
share it with `broadcast_from_primary`, or combine per-process outcomes with `all_processes`; both are
collectives, called by every process in the same order, and free in a single-process run.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import jax
import numpy as np


def _flag_or_env(flags, name: str, env: Mapping[str, str], key: str):
    value = getattr(flags, name, None) if flags is not None else None
    return value if value not in (None, "", -1) else env.get(key)


def distributed_settings(flags=None, env: Mapping[str, str] | None = None) -> dict | None:
    """The arguments for `jax.distributed.initialize`, `{}` for cluster auto-detection, or None
    for a single-process run. Incomplete explicit settings are an error naming what is missing."""
    env = os.environ if env is None else env
    explicit = {
        "coordinator_address": _flag_or_env(flags, "coordinator_address", env, "COMM_JAX_COORDINATOR"),
        "num_processes": _flag_or_env(flags, "num_processes", env, "COMM_JAX_NUM_PROCESSES"),
        "process_id": _flag_or_env(flags, "process_id", env, "COMM_JAX_PROCESS_ID"),
    }
    given = {k: v for k, v in explicit.items() if v is not None}
    if given:
        missing = sorted(set(explicit) - set(given))
        if missing:
            raise ValueError(f"multi-process launch needs coordinator_address, num_processes and process_id; "
                             f"missing {missing} (flags --{missing[0]} or COMM_JAX_* environment variables)")
        settings = {"coordinator_address": str(given["coordinator_address"]),
                    "num_processes": int(given["num_processes"]), "process_id": int(given["process_id"])}
        if not 0 <= settings["process_id"] < settings["num_processes"]:
            raise ValueError(f"process_id {settings['process_id']} is not in [0, {settings['num_processes']})")
        return settings if settings["num_processes"] > 1 else None
    if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
        return {}
    if int(env.get("SLURM_NTASKS", "1")) > 1:
        return {}
    return None


def initialize(flags=None) -> None:
    """Call before any other JAX use. A no-op for single-process runs."""
    settings = distributed_settings(flags)
    if settings is None:
        return
    try:
        jax.distributed.initialize(**settings)
    except Exception as err:  # the coordinator is the usual culprit: say which address was tried
        where = settings.get("coordinator_address", "auto-detected by JAX")
        raise RuntimeError(f"jax.distributed.initialize failed (coordinator {where}): {err}. Check that "
                           f"process 0 is running and the address/port is reachable from every host.") from err


def define_flags() -> None:
    """The absl flags the programs accept for an explicit multi-process launch."""
    from absl import flags
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs).")
    flags.DEFINE_integer("num_processes", None, "Number of processes in the job.")
    flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).")


def is_primary() -> bool:
    """Process 0: the one that prints and writes metrics."""
    return jax.process_index() == 0


def broadcast_from_primary(value: Any) -> Any:
    """Process 0's `value` (anything JSON can encode) on every process, as JSON decodes it (tuples
    become lists). Every process must call it; the other processes' `value` is ignored."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    payload = np.frombuffer(json.dumps(value).encode(), np.uint8) if is_primary() else np.zeros(0, np.uint8)
    size = int(multihost_utils.broadcast_one_to_all(np.int32(payload.size)))
    if not is_primary():
        payload = np.zeros(size, np.uint8)
    received = multihost_utils.broadcast_one_to_all(payload)
    return json.loads(np.asarray(received, np.uint8).tobytes().decode())


def all_processes(flag: bool) -> bool:
    """True when `flag` is True on every process. Every process must call it."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.asarray(bool(flag)))))
