"""Orbax CheckpointManager use: save and restore the train state with the data iterator state.

Layout: `WORKDIR/checkpoints/<step>/{state, data, config}`: the train state (Orbax standard
format, restored straight into the sharded abstract state), the data iterator's position and the
full experiment config (JSON).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def _item_handlers():
  return {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler(),
          "config": ocp.JsonCheckpointHandler()}


class Checkpointer:
  """Saves every `save` asynchronously; keeps the last `max_to_keep` plus every `keep_period`-th."""

  def __init__(self, workdir: str, *, max_to_keep: int = 3, keep_period: int | None = None,
               async_save: bool = True):
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, keep_period=keep_period or None,
        enable_async_checkpointing=async_save, create=True)
    self.directory = checkpoint_dir(workdir)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_handlers=_item_handlers())

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state, data_state: dict | None, config: dict) -> bool:
    """Starts an (async) save of `state` at `step`; returns whether one was started."""
    if step in self.manager.all_steps():
      return False
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              data=ocp.args.JsonSave(data_state or {}),
                              config=ocp.args.JsonSave(config))
    return self.manager.save(step, args=args, force=True)

  def restore(self, abstract_state) -> tuple[Any, dict, int] | None:
    """The newest readable checkpoint as `(state, data_state, step)`, or None if there is none.

    A checkpoint that fails to read (half-written, corrupted) is moved aside to
    `checkpoints/corrupt-<step>` with a warning and the previous one is tried. One whose
    shapes do not fit `abstract_state` raises a ValueError naming the parameter.
    """
    for step in reversed(self.all_steps()):
      try:
        metadata = self.manager.item_metadata(step)
      except Exception as e:  # Orbax raises many types for unreadable files.
        self._set_aside(step, e)
        continue
      check_compatible(metadata, abstract_state, self.directory, step)
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
      except Exception as e:  # Orbax raises many types for unreadable files.
        self._set_aside(step, e)
        continue
      return restored["state"], dict(restored["data"] or {}), step
    return None

  def _set_aside(self, step: int, error: Exception) -> None:
    src = os.path.join(self.directory, str(step))
    dst = os.path.join(self.directory, f"corrupt-{step}-{int(time.time())}")
    log.warning("Checkpoint %s is unreadable (%s: %s); moving it to %s and trying the previous "
                "one.", src, type(error).__name__, str(error)[:300], dst)
    if jax.process_index() == 0:
      shutil.move(src, dst)
    self.manager.reload()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def _leaf_shape(x):
  shape = getattr(x, "shape", None)
  return None if shape is None else tuple(shape)


def _flat_by_path(tree) -> dict[str, Any]:
  """{"params/encoder/.../kernel": leaf}, the same for a TrainState and for Orbax metadata."""
  def name(k):
    for attr in ("key", "idx", "name"):
      if hasattr(k, attr):
        return str(getattr(k, attr))
    return str(k)
  return {"/".join(name(k) for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def check_compatible(metadata, abstract_state, directory: str, step: int) -> None:
  """Raises a ValueError naming the first parameter whose saved shape differs from the config's."""
  try:
    saved = metadata["state"]
  except (KeyError, TypeError):
    return  # No metadata to compare (e.g. a corrupt checkpoint): restoring will tell.
  if saved is None:
    return
  saved_flat, expected_flat = _flat_by_path(saved), _flat_by_path(abstract_state)
  where = os.path.join(directory, str(step))
  advice = ("Train with the same model and optimizer settings as the checkpoint, or use a new "
            "--workdir.")
  for path, leaf in expected_flat.items():
    if path not in saved_flat:
      raise ValueError(f"The checkpoint {where} has no entry {path}, which the current config "
                       f"needs: it was written by a different configuration. {advice}")
    saved_shape, expected_shape = _leaf_shape(saved_flat[path]), _leaf_shape(leaf)
    if saved_shape is not None and expected_shape is not None and saved_shape != expected_shape:
      raise ValueError(f"The checkpoint {where} does not fit the config: parameter {path} has "
                       f"shape {saved_shape} there but {expected_shape} in the current config. "
                       f"{advice}")
  extra = sorted(set(saved_flat) - set(expected_flat))
  if extra:
    raise ValueError(f"The checkpoint {where} holds {extra[0]}, which the current config does "
                     f"not have: it was written by a different configuration. {advice}")


def _open_read_only(directory: str, workdir: str):
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"No checkpoints in {workdir}: {directory} does not exist. Train "
                            "first with `python train.py --workdir ...`.")
  manager = ocp.CheckpointManager(directory, item_handlers=_item_handlers(),
                                  options=ocp.CheckpointManagerOptions(read_only=True))
  steps = sorted(manager.all_steps())
  if not steps:
    raise FileNotFoundError(f"{directory} holds no finished checkpoint. Train first (or longer).")
  return manager, steps


def _restore_params(manager, step: int) -> tuple[dict, dict]:
  # Restore onto one local device whatever topology saved it (e.g. 8 training devices).
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                        manager.item_metadata(step)["state"])
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(target), config=ocp.args.JsonRestore()))
  return jax.tree.map(np.asarray, restored["state"]["params"]), dict(restored["config"] or {})


def read_params(workdir: str, step: int | None = None, *,
                subdir: str = "checkpoints") -> tuple[dict, int, dict]:
  """Only the model parameters of one checkpoint: `(params, step, config_dict)`, numpy arrays.

  `subdir="averaged"` reads the checkpoints written by `save_averaged`.
  """
  directory = os.path.join(os.path.abspath(workdir), subdir)
  manager, steps = _open_read_only(directory, workdir)
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise ValueError(f"Step {step} has no checkpoint in {directory}; available: {steps}.")
  params, config = _restore_params(manager, step)
  manager.close()
  return params, step, config


def average_params(workdir: str, num_last: int) -> tuple[dict, list[int], dict]:
  """The mean of the parameters of the last `num_last` checkpoints (the paper averages 5 / 20)."""
  manager, steps = _open_read_only(checkpoint_dir(workdir), workdir)
  if num_last < 1:
    raise ValueError(f"Average over at least one checkpoint, got {num_last}.")
  if num_last > len(steps):
    raise ValueError(f"Asked to average the last {num_last} checkpoints, but "
                     f"{checkpoint_dir(workdir)} holds {len(steps)}: {steps}. Keep more "
                     "(config.keep_checkpoints) or average fewer.")
  chosen = steps[-num_last:]
  total, config = None, {}
  for step in chosen:
    params, config = _restore_params(manager, step)
    params = jax.tree.map(lambda x: x.astype(np.float64), params)
    total = params if total is None else jax.tree.map(np.add, total, params)
  manager.close()
  mean = jax.tree.map(lambda x: (x / len(chosen)).astype(np.float32), total)
  return mean, chosen, config


def save_averaged(workdir: str, num_last: int) -> tuple[str, list[int]]:
  """Writes the average of the last `num_last` checkpoints to `WORKDIR/averaged/<last step>`."""
  params, chosen, config = average_params(workdir, num_last)
  directory = os.path.join(os.path.abspath(workdir), "averaged")
  manager = ocp.CheckpointManager(directory, item_handlers=_item_handlers(),
                                  options=ocp.CheckpointManagerOptions(create=True))
  step = chosen[-1]
  if step in manager.all_steps():
    manager.delete(step)  # A newer average of the same last step replaces the old one.
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave({"params": params}),
      data=ocp.args.JsonSave({"averaged_steps": chosen}), config=ocp.args.JsonSave(config)))
  manager.wait_until_finished()
  manager.close()
  return os.path.join(directory, str(step)), chosen
