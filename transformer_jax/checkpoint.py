"""The training run's checkpoints: save and restore the train state with the data iterator state.

Layout: `WORKDIR/checkpoints/<step>/{state, data, config, integrity.json}`: the train state
(Orbax standard format, restored straight into the sharded abstract state), the data iterator's
position, the full experiment config (JSON) and the checksums of all of it (`integrity.py`).

Guarantees: restore verifies a checkpoint before reading it and moves one that fails aside
(`checkpoints/corrupt-<step>-<time>`), falling back to the previous one, in training and in
every reader alike; retention keeps the last `max_to_keep` (plus every `keep_period`-th), and
never a step the run resumed from until newer ones exist, nor one a reader has pinned; a save that
fails raises a `CheckpointSaveError` (path, cause, free space) instead of surfacing later.
Reading parameters alone (translate, tune, average) is `checkpoint_reader`'s job.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from transformer_jax import integrity
from transformer_jax import workdir_layout as layout

log = logging.getLogger(__name__)


class CheckpointSaveError(OSError):
  """Writing a checkpoint failed (disk full, permissions, ...); earlier ones are intact."""


def item_handlers() -> dict:
  """Orbax's handler of each item of a checkpoint step (state, data, config)."""
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
    self.directory = layout.checkpoint_dir(workdir)
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
                                         item_handlers=item_handlers())

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
  dst = os.path.join(directory, f"{layout.CORRUPT_PREFIX}{step}-{int(time.time())}")
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
