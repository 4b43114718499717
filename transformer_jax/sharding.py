"""The device mesh and every partitioning rule, in one place.

The mesh has two axes: `slice` (TPU slices joined over the data-center network, DCN; one
everywhere else) and `data` (the devices of one slice, joined by the fast interconnect, ICI).
Batches are split over both (`BATCH_AXES`): data parallelism spans every device. Parameters
and optimizer state are replicated, or with `fsdp=True` sharded over `data` only, so that the
parameter all-gathers and gradient reduce-scatters of FSDP stay inside a slice and only the
gradient all-reduce crosses slices.
"""

from __future__ import annotations

import collections

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

SLICE_AXIS = "slice"
DATA_AXIS = "data"
BATCH_AXES = (SLICE_AXIS, DATA_AXIS)


def create_mesh(devices=None) -> Mesh:
  """A `[slices, devices per slice]` mesh over `devices` (default: all of all processes).

  Devices are grouped by their `slice_index` (TPU multi-slice); within a slice they are ordered
  for the interconnect by `mesh_utils.create_device_mesh`.
  """
  devices = jax.devices() if devices is None else list(devices)
  by_slice = collections.defaultdict(list)
  for device in devices:
    by_slice[getattr(device, "slice_index", 0) or 0].append(device)
  sizes = {len(group) for group in by_slice.values()}
  if len(sizes) != 1:
    raise ValueError(f"Every slice needs the same number of devices; got "
                     f"{ {s: len(g) for s, g in sorted(by_slice.items())} }.")
  rows = []
  for _, group in sorted(by_slice.items()):
    try:
      rows.append(mesh_utils.create_device_mesh((len(group),), devices=group))
    except (ValueError, NotImplementedError, AssertionError):
      rows.append(np.asarray(group))  # A device set it has no layout for: the given order.
  return Mesh(np.stack(rows), BATCH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over every device (`slice` and `data`)."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  """A full copy on every device."""
  return NamedSharding(mesh, P())


def fsdp_spec(shape: tuple[int, ...], mesh: Mesh, min_size: int = 2**14) -> P:
  """Shards the largest axis divisible by the slice's size over `data`; small arrays stay
  replicated (and every array is replicated across slices)."""
  n = mesh.shape[DATA_AXIS]
  if n == 1 or int(np.prod(shape)) < min_size:
    return P()
  for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
    if shape[axis] % n == 0:
      spec = [None] * len(shape)
      spec[axis] = DATA_AXIS
      return P(*spec)
  return P()


def state_shardings(abstract_state, mesh: Mesh, fsdp: bool = False):
  """Shardings for every leaf of the (abstract) train state."""
  if not fsdp:
    return jax.tree.map(lambda _: replicated(mesh), abstract_state)
  return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(tuple(x.shape), mesh)),
                      abstract_state)


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles this process's rows into global arrays sharded over the batch axes."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}
