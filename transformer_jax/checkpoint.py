"""Orbax CheckpointManager use: save and restore the train state with the data iterator state.

Layout: `WORKDIR/checkpoints/<step>/{state, data, config, integrity.json}`: the train state
(Orbax standard format, restored straight into the sharded abstract state), the data iterator's
position, the full experiment config (JSON) and the checksums of all of it (`integrity.py`).

Guarantees: restore verifies a checkpoint before reading it and moves one that fails aside
(`checkpoints/corrupt-<step>-<time>`), falling back to the previous one, in training and in
every reader alike; retention keeps the last `max_to_keep` (plus every `keep_period`-th), and
never a step the run resumed from until newer ones exist, nor one a reader has pinned; a save that
fails raises a `CheckpointSaveError` (path, cause, free space) instead of surfacing later.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from transformer_jax import integrity

log = logging.getLogger(__name__)


class CheckpointSaveError(OSError):
  """Writing a checkpoint failed (disk full, permissions, ...); earlier ones are intact."""


class _NoParams(ValueError):
  """A checkpoint that reads but is not a model's (nothing to fall back to: say so)."""


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def _item_handlers():
  return {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler(),
          "config": ocp.JsonCheckpointHandler()}


class _KeepProtected:
  """Orbax preservation policy: the step the run resumed from and every step a reader pinned."""

  def __init__(self, directory: str):
    self.directory = directory
    self.steps: set[int] = set()

  def should_preserve(self, checkpoints, *, context) -> list[bool]:
    del context
    keep = self.steps | integrity.pinned_steps(self.directory)
    return [info.step in keep for info in checkpoints]


class Checkpointer:
  """Saves asynchronously, with checksums; restores the newest checkpoint that verifies."""

  def __init__(self, workdir: str, *, max_to_keep: int, keep_period: int | None = None,
               async_save: bool = True):
    if max_to_keep < 1:
      raise ValueError(f"keep_checkpoints={max_to_keep}: keep at least 1 checkpoint.")
    self.directory = checkpoint_dir(workdir)
    self._protected = _KeepProtected(self.directory)
    policies = [checkpoint_managers.LatestN(max_to_keep), self._protected]
    if keep_period:
      policies.append(checkpoint_managers.EveryNSteps(keep_period))
    self._pending: int | None = None  # Saved by this run, not yet checksummed.
    options = ocp.CheckpointManagerOptions(
        preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save, create=True,
        cleanup_tmp_directories=True)  # What a failed or killed save left behind.
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_handlers=_item_handlers())

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state, data_state: dict | None, config: dict) -> bool:
    """Starts an (async) save of `state` at `step`; returns whether one was started.

    Raises:
      CheckpointSaveError: this save, or the previous asynchronous one, failed.
    """
    if step in self.manager.all_steps():
      return False
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              data=ocp.args.JsonSave(data_state or {}),
                              config=ocp.args.JsonSave(config))
    self._check_space(step, state)
    try:
      self._finish_pending()  # Orbax would wait for the previous save here anyway.
      self._pending = step
      started = self.manager.save(step, args=args, force=True)
    except Exception as e:  # Orbax and tensorstore raise many types for a failed write.
      raise self._save_error(step, e) from None
    return started

  def _check_space(self, step: int, state) -> None:
    """Refuses a save that cannot fit, before writing anything: a disk that fills in the middle
    of a save makes Orbax's writer threads print a traceback per pending write."""
    needed = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state) if hasattr(x, "dtype"))
    try:
      free = shutil.disk_usage(self.directory).free
    except OSError:
      return
    if free < needed * 1.05 + 2**20:  # Headroom for Orbax's metadata.
      raise self._save_error(step, OSError(
          errno.ENOSPC, f"No space left on device: the checkpoint needs about "
          f"{needed / 2**20:.1f} MiB"))

  def _finish_pending(self) -> None:
    """Waits for the save in flight, then checksums it: once committed, its files are final.

    (A crash between the commit and this leaves the newest checkpoint without checksums; it is
    then restored unverified, as checkpoints written before checksums existed are.)
    """
    self.manager.wait_until_finished()
    step, self._pending = self._pending, None
    step_dir = os.path.join(self.directory, str(step))
    if step is not None and jax.process_index() == 0 and os.path.isdir(step_dir):
      integrity.write_checksums(step_dir)

  def check_for_errors(self) -> None:
    """Raises CheckpointSaveError if an asynchronous save has failed; never blocks."""
    step = self._pending
    try:
      self.manager.check_for_errors()
      if step is not None and not self.manager.is_saving_in_progress():
        self._finish_pending()  # Done: this waits for nothing, checksums it or raises its error.
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(step, e) from None

  def _save_error(self, step: int | None, error: Exception) -> CheckpointSaveError:
    try:
      free = shutil.disk_usage(self.directory).free
      free = f"{free / 2**30:.2f} GiB free" if free >= 2**30 else f"{free / 2**20:.1f} MiB free"
    except OSError:
      free = "free space unknown"
    kept = [s for s in self.all_steps() if s != step]
    cause = (str(error).splitlines() or [""])[0]
    cause = cause if len(cause) <= 240 else "..." + cause[-240:]  # The OS error comes last.
    return CheckpointSaveError(
        f"Saving checkpoint {os.path.join(self.directory, str(step))} failed: "
        f"{type(error).__name__}: {cause} ({free} on {self.directory}). Earlier checkpoints are "
        f"intact ({kept or 'none'}); free space or fix the cause, then rerun the same command "
        "to resume.")

  def restore(self, abstract_state) -> tuple[Any, dict, int] | None:
    """The newest checkpoint that verifies, as `(state, data_state, step)`; None if there is none.

    A checkpoint that fails its checksums or fails to read (half-written, corrupted) is moved
    aside to `checkpoints/corrupt-<step>-<time>` with a warning and the previous one is tried.
    One whose shapes do not fit `abstract_state` raises a ValueError naming the parameter.
    Retention keeps the restored step for the rest of this run.
    """
    for step in reversed(self.all_steps()):
      problem = integrity.verify(os.path.join(self.directory, str(step)))
      if problem:
        self._set_aside(step, problem)
        continue
      try:
        metadata = self.manager.item_metadata(step)
      except Exception as e:  # Orbax raises many types for unreadable files.
        self._set_aside(step, f"{type(e).__name__}: {e}")
        continue
      check_compatible(metadata, abstract_state, self.directory, step)
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
      except Exception as e:  # Orbax raises many types for unreadable files.
        self._set_aside(step, f"{type(e).__name__}: {e}")
        continue
      self._protected.steps.add(step)
      return restored["state"], dict(restored["data"] or {}), step
    return None

  def _set_aside(self, step: int, problem: str) -> None:
    set_aside(self.directory, step, problem)
    self.manager.reload()

  def close(self) -> None:
    """Waits for the saves in flight (raising CheckpointSaveError if one failed) and closes."""
    try:
      self._finish_pending()
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(self._pending, e) from None
    finally:
      self.manager.close()


def set_aside(directory: str, step: int, problem: str) -> None:
  """Moves a corrupt checkpoint to `corrupt-<step>-<time>` (never deletes it), with a warning."""
  src = os.path.join(directory, str(step))
  dst = os.path.join(directory, f"corrupt-{step}-{int(time.time())}")
  log.warning("Checkpoint %s is unreadable (%s); moving it to %s and using the previous one.",
              src, problem[:300], dst)
  if jax.process_index() == 0 and os.path.isdir(src):
    shutil.move(src, dst)


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
  if not os.path.isdir(directory) and os.path.basename(directory) == "averaged":
    raise FileNotFoundError(f"{workdir} has no averaged checkpoint: write one with `python "
                            f"average_checkpoints.py --workdir {workdir} --num_last N`, or use "
                            "--checkpoint average:N.")
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"No checkpoints in {workdir}: {directory} does not exist. Train "
                            "first with `python train.py --workdir ...`.")
  # The PyTree handler reads the same files as the Standard one that wrote them, and can read
  # the parameters alone: 0.07 s instead of 0.9 s for the whole train state (demo workdir).
  handlers = {"state": ocp.PyTreeCheckpointHandler(), "config": ocp.JsonCheckpointHandler()}
  manager = ocp.CheckpointManager(directory, item_handlers=handlers,
                                  options=ocp.CheckpointManagerOptions(read_only=True))
  steps = sorted(manager.all_steps())
  if not steps:
    raise FileNotFoundError(f"{directory} holds no finished checkpoint. Train first (or longer).")
  return manager, steps


def _restore_params(manager, directory: str, step: int) -> tuple[dict, dict] | None:
  """Params and config of `step`, pinned while read; None if it is gone or was set aside."""
  step_dir = os.path.join(directory, str(step))
  with integrity.Pin(directory, step):
    if not os.path.isdir(step_dir):
      return None  # Deleted by the training run's retention before the pin.
    problem = integrity.verify(step_dir)
    if problem is None:
      try:
        saved = manager.item_metadata(step)["state"]
        saved = getattr(saved, "tree", saved)
        if not isinstance(saved, dict) or "params" not in saved:
          raise _NoParams(f"Checkpoint {step_dir} holds no model parameters ('params').")
        restored = manager.restore(step, args=ocp.args.Composite(
            state=_params_only(saved["params"]), config=ocp.args.JsonRestore()))
      except _NoParams:
        raise
      except Exception as e:  # pylint: disable=broad-except  # Orbax raises many types.
        if not os.path.isdir(step_dir):
          return None
        problem = f"{type(e).__name__}: {str(e)[:300]}"
    if problem is not None:
      set_aside(directory, step, problem)
      return None
  return restored["state"]["params"], dict(restored["config"] or {})


def _params_only(saved_params) -> ocp.args.PyTreeRestore:
  """Restore arguments for the parameters alone, as host numpy arrays whatever topology saved
  them (e.g. 8 training devices); the optimizer state is never read."""
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), saved_params)
  restore_args = jax.tree.map(lambda m: ocp.RestoreArgs(restore_type=np.ndarray), saved_params)
  return ocp.args.PyTreeRestore(item={"params": target}, restore_args={"params": restore_args},
                                partial_restore=True)


def _readable(workdir: str, subdir: str, step: int | None = None):
  """Yields `(step, params, config)` of each checkpoint that reads correctly, newest first (or
  of `step` alone); corrupt ones are moved aside and skipped."""
  directory = os.path.join(os.path.abspath(workdir), subdir)
  manager, steps = _open_read_only(directory, workdir)
  if step is not None and step not in steps:
    manager.close()
    raise ValueError(f"Step {step} has no checkpoint in {directory}; available: {steps}.")
  try:
    for candidate in [step] if step is not None else reversed(steps):
      restored = _restore_params(manager, directory, candidate)
      if restored is not None:
        yield candidate, restored[0], restored[1]
  finally:
    manager.close()


def _no_readable(workdir: str, subdir: str) -> FileNotFoundError:
  return FileNotFoundError(f"No readable checkpoint left in {os.path.join(workdir, subdir)}: "
                           "corrupt ones were moved to corrupt-<step>-<time>. Train again.")


def read_params(workdir: str, step: int | None = None, *,
                subdir: str = "checkpoints") -> tuple[dict, int, dict]:
  """Only the model parameters of one checkpoint: `(params, step, config_dict)`, numpy arrays.

  Without `step`, the newest checkpoint that verifies (corrupt ones are moved aside).
  `subdir="averaged"` reads the checkpoints written by `save_averaged`.
  """
  for found, params, config in _readable(workdir, subdir, step):
    return params, found, config
  raise _no_readable(workdir, subdir)


def average_params(workdir: str, num_last: int) -> tuple[dict, list[int], dict]:
  """The mean of the parameters of the last `num_last` good checkpoints (the paper: 5 / 20)."""
  if num_last < 1:
    raise ValueError(f"Average over at least one checkpoint, got {num_last}.")
  _, steps = _open_read_only(checkpoint_dir(workdir), workdir)
  if num_last > len(steps):
    raise ValueError(f"Asked to average the last {num_last} checkpoints, but "
                     f"{checkpoint_dir(workdir)} holds {len(steps)}: {steps}. Keep more "
                     "(config.keep_checkpoints) or average fewer.")
  total, chosen, config = None, [], {}
  for step, params, step_config in _readable(workdir, "checkpoints"):
    params = jax.tree.map(lambda x: x.astype(np.float64), params)  # One at a time in memory.
    total = params if total is None else jax.tree.map(np.add, total, params)
    chosen.append(step)
    config = config or step_config
    if len(chosen) == num_last:
      break
  if len(chosen) < num_last:
    raise ValueError(f"Only {len(chosen)} checkpoints of {checkpoint_dir(workdir)} read "
                     f"correctly ({sorted(chosen)}); average fewer than {num_last}.")
  mean = jax.tree.map(lambda x: (x / num_last).astype(np.float32), total)
  return mean, sorted(chosen), config


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
  integrity.write_checksums(os.path.join(directory, str(step)))
  return os.path.join(directory, str(step)), chosen
