"""Multi-process start-up: `jax.distributed.initialize()` when the job runs as several processes.

Sources, first match wins:
1. explicit `--coordinator_address`, `--num_processes`, `--process_id` flags (any launcher);
2. the environment variables `COMM_JAX_COORDINATOR`, `COMM_JAX_NUM_PROCESSES`, `COMM_JAX_PROCESS_ID`;
3. cluster auto-detection by JAX on TPU pods (`TPU_WORKER_HOSTNAMES` lists several workers) and
   SLURM (`SLURM_NTASKS` > 1), where `jax.distributed.initialize()` needs no arguments.
Otherwise the run is single-process and nothing is initialised.
"""

from __future__ import annotations

import os
from typing import Mapping

import jax


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
