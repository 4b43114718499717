"""Multi-process start-up: `jax.distributed`, from explicit settings or found on a cluster.

Every process of a multi-process run (several hosts, or several processes on one) calls
`initialize` before JAX touches a device. Given a coordinator address, a process count and this
process's index, it starts `jax.distributed` with them. Given none, it starts it only where the
environment shows a multi-worker Cloud TPU slice or a multi-task SLURM job, whose coordinator,
count and index JAX then reads from the cluster; a single process is left alone, since
`jax.distributed` would wait for a coordinator that never comes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax


def check_settings(coordinator_address: str | None, num_processes: int | None,
                   process_id: int | None) -> bool:
  """Whether explicit settings were given, once they are checked.

  The messages name the settings as train's flags do, which share these arguments' names.

  Args:
    coordinator_address: HOST:PORT of process 0, or None.
    num_processes: how many processes the run has, or None.
    process_id: this process's index in [0, num_processes), or None.

  Returns:
    True if all three are given, False if none is.

  Raises:
    ValueError: only some are given, or `process_id` is outside [0, num_processes).
  """
  given = [v is not None for v in (coordinator_address, num_processes, process_id)]
  if not any(given):
    return False
  if not all(given):
    raise ValueError("--coordinator_address, --num_processes and --process_id go together.")
  if not 0 <= process_id < num_processes:
    raise ValueError(f"--process_id={process_id} is outside [0, --num_processes={num_processes}).")
  return True


def cluster_detected(environ: Mapping[str, str] | None = None) -> bool:
  """Whether the environment is one process of a multi-process Cloud TPU slice or SLURM job.

  Args:
    environ: the environment variables, `os.environ` by default.

  Returns:
    True on a TPU slice with several workers (TPU_WORKER_HOSTNAMES lists them, comma-separated)
    or in a SLURM job of several tasks (SLURM_NTASKS > 1).

  Raises:
    ValueError: SLURM_NTASKS is not a whole number.
  """
  environ = os.environ if environ is None else environ
  if environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0:
    return True
  tasks = environ.get("SLURM_NTASKS", "1")
  try:
    return int(tasks) > 1
  except ValueError:
    raise ValueError(f"SLURM_NTASKS={tasks!r} is not a number of tasks.") from None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *,
               environ: Mapping[str, str] | None = None) -> bool:
  """Starts `jax.distributed` if this process is one of several.

  Args:
    coordinator_address: HOST:PORT of process 0; with the next two, or none of the three.
    num_processes: how many processes the run has.
    process_id: this process's index in [0, num_processes).
    environ: the environment variables to detect a cluster from, `os.environ` by default.

  Returns:
    Whether `jax.distributed` was started: with the given settings, or auto-detected on a
    cluster (`cluster_detected`).

  Raises:
    ValueError: inconsistent settings (`check_settings`), a malformed cluster environment, or
      one that `jax.distributed` cannot use.
  """
  if check_settings(coordinator_address, num_processes, process_id):
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
    return True
  if cluster_detected(environ):
    jax.distributed.initialize()  # JAX's cluster detection fills in all three.
    return True
  return False
