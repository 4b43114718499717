"""Reading a workdir's checkpoints without training: parameters alone, and their averages.

Readers (translate, tune_decoding, average_checkpoints) open `checkpoints/` or `averaged/`
read-only and never change them: they pin a step while reading it only when a training run holds
the workdir (`integrity.Pin`), verify its checksums, skip a corrupt one with a warning (falling
back to the previous one for "latest"; training moves it aside when it resumes), and restore only
the parameters, as host numpy arrays whatever topology saved them.
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from transformer_jax import integrity
from transformer_jax import workdir_layout as layout
from transformer_jax.checkpoint import item_handlers

log = logging.getLogger(__name__)


class _NoParams(ValueError):
  """A checkpoint that reads but is not a model's (nothing to fall back to: say so)."""


def _open_read_only(directory: str, workdir: str):
  if not os.path.isdir(directory) and os.path.basename(directory) == layout.AVERAGED_DIR:
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


def _restore_params(manager, directory: str, step: int) -> tuple[dict, dict] | str:
  """Params and config of `step`, pinned while read; else why it cannot be read."""
  step_dir = os.path.join(directory, str(step))
  with integrity.Pin(directory, step):
    if not os.path.isdir(step_dir):
      return "deleted meanwhile by the training run"  # Its retention, before the pin.
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
          return "deleted meanwhile by the training run"
        problem = f"{type(e).__name__}: {str(e)[:300]}"
    if problem is not None:
      return problem
  return restored["state"]["params"], dict(restored["config"] or {})


def _params_only(saved_params) -> ocp.args.PyTreeRestore:
  """Restore arguments for the parameters alone, as host numpy arrays whatever topology saved
  them (e.g. 8 training devices); the optimizer state is never read."""
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), saved_params)
  restore_args = jax.tree.map(lambda m: ocp.RestoreArgs(restore_type=np.ndarray), saved_params)
  return ocp.args.PyTreeRestore(item={"params": target}, restore_args={"params": restore_args},
                                partial_restore=True)


def _readable(workdir: str, subdir: str, step: int | None = None, problems: dict | None = None):
  """Yields `(step, params, config)` of each checkpoint that reads correctly, newest first (or
  of `step` alone); unreadable ones are skipped with a warning (and their problem put in
  `problems`), never moved or changed."""
  directory = layout.checkpoint_dir(workdir, subdir)
  manager, steps = _open_read_only(directory, workdir)
  if step is not None and step not in steps:
    manager.close()
    raise ValueError(f"Step {step} has no checkpoint in {directory}; available: {steps}.")
  problems = {} if problems is None else problems
  try:
    for candidate in [step] if step is not None else reversed(steps):
      restored = _restore_params(manager, directory, candidate)
      if isinstance(restored, str):
        problems[candidate] = restored
        log.warning("Checkpoint %s is unreadable (%s); skipping it.",
                    os.path.join(directory, str(candidate)), restored[:300])
        continue
      yield candidate, restored[0], restored[1]
  finally:
    manager.close()


def _unreadable(workdir: str, subdir: str, problems: dict, step: int | None) -> Exception:
  directory = layout.checkpoint_dir(workdir, subdir)
  steps = sorted(int(d) for d in os.listdir(directory) if d.isdigit())
  if step is not None:
    others = [s for s in steps if s != step]
    hint = (f"the other checkpoints are {others}: choose one with --checkpoint, or latest"
            if others else "it is the only checkpoint")
    return ValueError(f"Checkpoint {step} of {directory} is unreadable "
                      f"({problems.get(step, '?')[:200]}); {hint}.")
  first = next(iter(problems.values()), "?")
  return FileNotFoundError(f"No readable checkpoint in {directory}: every step {steps} fails "
                           f"verification (e.g. {first[:200]}). Train again.")


def read_params(workdir: str, step: int | None = None, *,
                subdir: str = layout.CHECKPOINTS_DIR) -> tuple[dict, int, dict]:
  """Only the model parameters of one checkpoint: `(params, step, config_dict)`, numpy arrays.

  Without `step`, the newest checkpoint that verifies (corrupt ones are moved aside).
  `subdir="averaged"` reads the checkpoints written by `save_averaged`.
  """
  problems = {}
  for found, params, config in _readable(workdir, subdir, step, problems):
    return params, found, config
  raise _unreadable(workdir, subdir, problems, step)


def average_params(workdir: str, num_last: int) -> tuple[dict, list[int], dict]:
  """The mean of the parameters of the last `num_last` good checkpoints (the paper: 5 / 20)."""
  if num_last < 1:
    raise ValueError(f"Average over at least one checkpoint, got {num_last}.")
  _, steps = _open_read_only(layout.checkpoint_dir(workdir), workdir)
  if num_last > len(steps):
    raise ValueError(f"Asked to average the last {num_last} checkpoints, but "
                     f"{layout.checkpoint_dir(workdir)} holds {len(steps)}: {steps}. Keep more "
                     "(config.keep_checkpoints) or average fewer.")
  total, chosen, config = None, [], {}
  for step, params, step_config in _readable(workdir, layout.CHECKPOINTS_DIR):
    params = jax.tree.map(lambda x: x.astype(np.float64), params)  # One at a time in memory.
    total = params if total is None else jax.tree.map(np.add, total, params)
    chosen.append(step)
    config = config or step_config
    if len(chosen) == num_last:
      break
  if len(chosen) < num_last:
    raise ValueError(f"Only {len(chosen)} checkpoints of {layout.checkpoint_dir(workdir)} read "
                     f"correctly ({sorted(chosen)}); average fewer than {num_last}.")
  mean = jax.tree.map(lambda x: (x / num_last).astype(np.float32), total)
  return mean, sorted(chosen), config


def save_averaged(workdir: str, num_last: int) -> tuple[str, list[int]]:
  """Writes the average of the last `num_last` checkpoints to `WORKDIR/averaged/<last step>`."""
  params, chosen, config = average_params(workdir, num_last)
  directory = layout.checkpoint_dir(workdir, layout.AVERAGED_DIR)
  manager = ocp.CheckpointManager(directory, item_handlers=item_handlers(),
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
